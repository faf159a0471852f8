"""espeak-ng: the voice that is always there. Runs as a subprocess per sentence and streams its
WAV output in chunks as it is produced."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
from collections.abc import AsyncIterator

from plugins.audio import SynthesizerError, chunk_bytes, make_chunk
from runtime.events import AudioChunk, Sentence

INSTALL_HINT = "install it with: sudo apt-get install -y espeak-ng"


class EspeakSynthesizer:
    """Implements the Synthesizer port with the espeak-ng command."""

    def __init__(self, voice: str = "en-us", speed: int = 175, pitch: int = 50,
                 chunk_ms: int = 100, binary: str = "espeak-ng") -> None:
        path = shutil.which(binary)
        if path is None:
            raise SynthesizerError(f"{binary} is not installed; {INSTALL_HINT}")
        self.binary = path
        self.voice = voice
        self.speed = speed
        self.pitch = pitch
        self.chunk_ms = chunk_ms

    async def synthesize(self, sentence: Sentence) -> AsyncIterator[AudioChunk]:
        proc = await asyncio.create_subprocess_exec(
            self.binary, "--stdout", "-v", self.voice, "-s", str(self.speed), "-p", str(self.pitch),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin and proc.stdout and proc.stderr
        try:
            # the text goes in on stdin: nothing in it can be taken for an option
            proc.stdin.write(sentence.text.encode("utf-8") + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
            rate = await _read_wav_header(proc.stdout)
            if rate is None:
                err = (await proc.stderr.read()).decode(errors="replace").strip()
                await proc.wait()
                raise SynthesizerError(f"espeak-ng gave no audio (voice {self.voice!r}): {err[:200]}")
            size = chunk_bytes(rate, self.chunk_ms)
            index = 0
            while True:
                pcm = await _read_up_to(proc.stdout, size)
                if not pcm:
                    break
                if len(pcm) % 2:
                    pcm = pcm[:-1]
                yield make_chunk(sentence.turn_id, sentence.seq, index, pcm, rate)
                index += 1
            await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def _read_up_to(stream: asyncio.StreamReader, n: int) -> bytes:
    """Exactly n bytes, or fewer at the end of the stream."""
    try:
        return await stream.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        return exc.partial


async def _read_wav_header(stream: asyncio.StreamReader) -> int | None:
    """Read a RIFF/WAVE header up to the start of the data; returns the sample rate.

    espeak-ng writes to a pipe, so the size fields are placeholders and are ignored.
    """
    head = await _read_up_to(stream, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    rate: int | None = None
    while True:
        hdr = await _read_up_to(stream, 8)
        if len(hdr) < 8:
            return None
        kind, length = hdr[:4], struct.unpack("<I", hdr[4:])[0]
        if kind == b"data":
            return rate
        body = await _read_up_to(stream, length)
        if kind == b"fmt ":
            channels, rate, bits = struct.unpack("<xxHI6xH", body[:16])
            if channels != 1 or bits != 16:
                raise SynthesizerError(f"espeak-ng wrote {channels} channels of {bits}-bit audio")
