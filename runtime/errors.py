"""Why a character cannot start: errors the user must fix, each message saying what. Light to
import: the CLI tells them apart without loading the character's heavy parts."""

from __future__ import annotations


class StartupError(Exception):
    """Something the user must fix before the character can start; the message says what."""


class MicrophoneUnavailable(StartupError):
    """No microphone to listen with, or no speech model to hear it."""
