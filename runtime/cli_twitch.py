"""`omoide twitch login`: the bot and broadcaster accounts, by the device code flow."""

from __future__ import annotations

import argparse

from plugins import twitch_auth
from plugins.chat_twitch import TwitchError
from runtime.cli_common import EXIT_CONFIG, Errors, config_from

ERRORS: Errors = ((TwitchError, EXIT_CONFIG, "twitch: "),)


def cmd_twitch_login(args: argparse.Namespace) -> int:
    config = config_from(args)
    t = config.twitch
    roles = ["bot", "broadcaster"] if args.role == "both" else [args.role]
    for role in roles:
        print(f"-- log in the {role} account --")
        twitch_auth.login(config.path(t.token_file), t.auth_url, args.client_id or t.client_id, role, t.events, print)
    return 0
