"""The `omoide` command: its arguments, and the handler each subcommand runs. Light: a handler's
module is imported only when its command runs, so `omoide config check` does not pay for torch.
Every subcommand takes `--config` before or after its name, and its `--help` says what it does."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from persona_model.shapes import SHAPES
from plugins.tiny.whisper_shapes import SHAPES as WHISPER_SHAPES
from runtime import bundled
from runtime.cli_common import ERRORS, EXIT_CONFIG, EXIT_MODEL, Errors, as_typed, config_from

__all__ = ["EXIT_CONFIG", "EXIT_MODEL", "main", "parser"]

CHARACTER = "runtime.cli_character"
MODELS = "runtime.cli_models"
RECORDS = "runtime.cli_records"
LEARNING = "runtime.learning"


class Commands:
    """Adds subcommands that run a handler ("module:function", imported when it runs), each taking
    the options of `shared` (such as --config) after its name too, its help as its description."""

    def __init__(self, sub: argparse._SubParsersAction, shared: list[argparse.ArgumentParser]) -> None:  # type: ignore[type-arg]
        self.sub, self.shared = sub, shared

    def add(self, name: str, help: str, handler: str | None = None, **defaults: object) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = self.sub.add_parser(name, help=help, description=help, parents=self.shared)
        if handler:
            p.set_defaults(handler=handler, **defaults)
        return p

    def group(self, name: str, help: str, extra: list[argparse.ArgumentParser] | None = None,
              aliases: tuple[str, ...] = ()) -> Commands:
        shared = self.shared + (extra or [])
        p = self.sub.add_parser(name, help=help, description=help, parents=shared, aliases=list(aliases))
        return Commands(p.add_subparsers(dest=f"{name}_command", required=True), shared)


def _options(*adders: tuple[str, dict[str, object]]) -> argparse.ArgumentParser:
    """Options any level of a command line takes; left unset unless given (SUPPRESS), so a later
    level does not overwrite an earlier one."""
    p = argparse.ArgumentParser(add_help=False)
    for flag, kw in adders:
        p.add_argument(flag, default=argparse.SUPPRESS, **kw)  # type: ignore[arg-type]
    return p


def parser() -> argparse.ArgumentParser:
    config = _options(("--config", dict(metavar="PATH", help="config file (default: ./config.toml, or $OMOIDE_CONFIG)")),
                      ("--character", dict(metavar="NAME", help="with [[characters]]: whose memories, windows and"
                                                                " adapters (default: the first)")))
    p = argparse.ArgumentParser(prog="omoide", description="A real-time AI VTuber character runtime.",
                                parents=[config])
    top = Commands(p.add_subparsers(dest="command", required=True), [config])

    top.add("run", "start the character with every source in the config", f"{CHARACTER}:cmd_run")
    top.add("chat", "talk to the character in the terminal", f"{CHARACTER}:cmd_run", chat=True)
    top.add("companion", "desktop companion: talk by voice (where there is a microphone) and by typing,"
            " in the terminal or the overlay page it opens", f"{CHARACTER}:cmd_run", companion=True)
    pg = top.add("play", "the character plays the example game over its game API, start to finish",
                 f"{CHARACTER}:cmd_play")
    pg.add_argument("game", choices=["tictactoe"])
    pg.add_argument("--seed", type=int, help="the opponent's seed (default: random)")
    pg.add_argument("--opponent", choices=["blocker", "random"], default="blocker",
                    help="blocker wins when it can and blocks when it must (default); random plays any free cell")

    _models(top.group("model", "build or download models", aliases=("models",)))
    _logs(top.group("logs", "the interaction log: export it for training, review replies"))
    database = _options(("--database", dict(help="database file (default: memory.database)")))
    _memory(top.group("memory", "what the character remembers: list, search, add, edit, pin, delete", [database]))
    _learning(top)
    persona = top.group("persona", "the character's trait sliders: her mood, set live (docs/traits.md#sliders)")
    persona.add("sliders", "each trait slider, what its ends mean and its setting", "runtime.cli_persona:cmd_sliders")
    ps = persona.add("set", "move trait sliders; a running character takes them before its next reply",
                     "runtime.cli_persona:cmd_set")
    ps.add_argument("settings", nargs="*", metavar="NAME=VALUE", help="e.g. energy=3 sass=-2")
    ps.add_argument("--reset", action="store_true", help="every slider not named goes back to 0")
    persona.add("measure", "her trait scores as she runs (model, live adapter, card): the drift gate's numbers",
                "runtime.sliders:cmd_measure")
    persona.add("vectors", "compute the sliders' steering vectors for the configured model and card now"
                " (llama.cpp control-vector files)", "runtime.sliders:cmd_vectors")

    vts = top.group("vts", "VTube Studio")
    vts.add("hotkeys", "list the loaded model's hotkeys (to map expression tags to)", f"{CHARACTER}:cmd_vts_hotkeys")
    twitch = top.group("twitch", "Twitch set-up")
    tl = twitch.add("login", "log in the bot and broadcaster accounts (device code flow)",
                    "runtime.cli_twitch:cmd_twitch_login")
    tl.add_argument("--as", dest="role", choices=["bot", "broadcaster", "both"], default="both",
                    help="which account to log in (default: both, one after the other)")
    tl.add_argument("--client-id", help="your Twitch application's client id (default: twitch.client_id)")
    top.group("config", "the configuration").add(
        "check", "validate and print the effective configuration", "runtime.cli:cmd_config_check")
    return p


def _models(models: Commands) -> None:
    t = models.add("tiny", "build a small offline model (no network)", "runtime.cli_builders:cmd_tiny")
    t.add_argument("dir", help="folder to write the model to")
    t.add_argument("--like", default="tiny", choices=sorted(SHAPES),
                   help="random weights of a real model's shape, for benchmarks (default: tiny)")
    t.add_argument("--train-steps", type=int, default=120,
                   help="steps of training for the tiny shape so it speaks in sentences (default 120)")
    tw = models.add("tiny-whisper", "build a random-weight Whisper for faster-whisper (no network)",
                    "runtime.cli_builders:cmd_tiny_whisper")
    tw.add_argument("dir", help="folder to write the CTranslate2 model to")
    tw.add_argument("--like", default="tiny", choices=sorted(WHISPER_SHAPES),
                    help="tiny, or base for Whisper base's size (benchmarks)")
    tv = models.add("tiny-voice", "build a tiny Piper voice (no network)", "runtime.cli_builders:cmd_tiny_voice")
    tv.add_argument("dir", help="folder to write tiny.onnx and tiny.onnx.json to")
    pl = models.add("pull", "download the configured LLM, Whisper model, Piper voice and embedding model",
                    f"{MODELS}:cmd_pull")
    pl.add_argument("id", nargs="?", help="a hub id: download just this language model")
    pl.add_argument("--only", action="append", choices=["llm", "whisper", "piper", "embedding"],
                    help="download only these (repeatable)")
    pl.add_argument("--dir", help="models folder (default: model.models_dir)")
    ls = models.add("list", "show the models on disk and whether the configured ones are there", f"{MODELS}:cmd_list")
    ls.add_argument("--dir", help="models folder (default: model.models_dir)")
    mp = models.add("path", "print where a bundled model's file is (the GGUF for llama.cpp: path llm)",
                    "runtime.cli:cmd_path")
    mp.add_argument("kind", choices=sorted(bundled.MODELS))


def _logs(logs: Commands) -> None:
    ex = logs.add("export", "write turns as chat-format JSONL for training", f"{RECORDS}:cmd_logs_export")
    ex.add_argument("out", help="output file (- for stdout)")
    ex.add_argument("--since", help="only turns from this ISO date/time on")
    ex.add_argument("--complete-only", action="store_true", help="leave out interrupted turns")
    ex.add_argument("--scrub", action="store_true",
                    help="replace viewers' names and ids with pseudonyms (viewer1, ...); also learning.scrub_viewers")
    ex.add_argument("--database", help="database file (default: memory.database)")
    rv = logs.add("review", "list replies, or mark one good, bad or corrected (for training)",
                  f"{RECORDS}:cmd_logs_review")
    rv.add_argument("turn", nargs="?", help="turn id (or its first 6+ characters); none: list recent replies")
    rv.add_argument("verdict", nargs="?", choices=["good", "bad", "correct"])
    rv.add_argument("text", nargs="?", help="with correct: the reply as it should have been")
    rv.add_argument("--limit", type=int, default=20)
    rv.add_argument("--unreviewed", action="store_true", help="only replies not reviewed yet")
    rv.add_argument("--database", help="database file (default: memory.database)")


def _memory(memory: Commands) -> None:
    handler = f"{RECORDS}:cmd_memory"
    ml = memory.add("list", "the newest memories (pinned first)", handler)
    ml.add_argument("--viewer", help='only about this viewer ("twitch:12345", "console:you")')
    ml.add_argument("--kind", choices=["fact", "episode", "reflection"])
    ml.add_argument("--all", action="store_true", help="include superseded facts")
    ml.add_argument("--limit", type=int, default=50)
    ms = memory.add("search", "the memories nearest in meaning (as recall ranks them)", handler)
    ms.add_argument("text")
    ms.add_argument("--words", action="store_true", help="full-text search instead (no model to load)")
    ms.add_argument("--limit", type=int, default=10)
    ma = memory.add("add", "add a memory", handler)
    ma.add_argument("text")
    ma.add_argument("--kind", choices=["fact", "episode", "reflection"], default="fact")
    ma.add_argument("--viewer", help='about this viewer ("twitch:12345")')
    ma.add_argument("--importance", type=float, default=0.5)
    ma.add_argument("--pin", action="store_true", help="always recall it")
    me = memory.add("edit", "change a memory's text", handler)
    me.add_argument("id", type=int)
    me.add_argument("text")
    for name, text in (("pin", "always recall it"), ("unpin", "recall it only when it matches"),
                       ("delete", "forget it")):
        memory.add(name, text, handler).add_argument("id", type=int)
    fg = memory.add("forget", "forget a viewer: their profile and memories go, their lines are blanked, no later"
                    " training learns from them", f"{LEARNING}:cmd_forget")
    fg.add_argument("viewer", help='"twitch:12345", or the name they chat under')
    mp = memory.add("pending", "facts from chat (viewers', reflections') waiting for your word before they may be trained", handler)
    mp.add_argument("--viewer", help='only this viewer\'s ("twitch:12345")')
    mp.add_argument("--limit", type=int, default=100)
    for name, text in (("approve", "let these facts be trained into the character's weights"),
                       ("reject", "never train these facts (they stay memories she may recall)")):
        c = memory.add(name, text, handler)
        c.add_argument("id", type=int, nargs="*", help="memory ids (from memory pending)")
        c.add_argument("--all", action="store_true", help="every pending fact (with --viewer: that viewer's)")
        c.add_argument("--viewer", help='with --all: only this viewer\'s ("twitch:12345")')


def _learning(top: Commands) -> None:
    top.group("dataset", "training data for the character's own weights").add(
        "build", "curate the next update window (everything logged since the last)", f"{LEARNING}:cmd_dataset_build")
    tr = top.add("train", "curate, train a LoRA, gate it against the live one and activate it if it passes"
                 " (low priority; exit 4 when the gate fails)", f"{LEARNING}:cmd_train")
    tr.add_argument("--window", help="train this curated window again (e.g. w0003) instead of the next")
    tr.add_argument("--steps", type=int, help="optimizer steps (default: learning.epochs over the window)")
    tr.add_argument("--retrain", action="store_true",
                    help="a new adapter from the base model on the live one's windows as they are now"
                         " (after `memory forget`), gated against it")
    adapters = top.group("adapters", "the trained adapter versions: list, activate, rollback, diff")
    handler = f"{LEARNING}:cmd_adapters"
    adapters.add("list", "every version with its window, parent, gate verdict and metrics (* active)", handler)
    ac = adapters.add("activate", "make a version live (a running character swaps it in between turns)", handler)
    ac.add_argument("version", help="e.g. v0003")
    ac.add_argument("--force", action="store_true", help="even if it failed its gate")
    adapters.add("rollback", "make the version that was live before the current one live again", handler)
    df = adapters.add("diff", "two versions' windows, parents and gate metrics side by side", handler)
    df.add_argument("a")
    df.add_argument("b")


def cmd_config_check(args: argparse.Namespace) -> int:
    config = config_from(args)
    print(config.model_dump_json(indent=2, exclude={"base_dir", "file"}))
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    """Where a bundled model's file is: `llama-server -m "$(omoide models path llm)"`."""
    print(bundled.locate(args.kind))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # the database, exports, windows and adapters hold viewers' words: the owner's alone
    args = parser().parse_args(argv)
    module_name, _, name = args.handler.partition(":")
    module = importlib.import_module(module_name)
    try:
        return int(getattr(module, name)(args))
    except BrokenPipeError:  # `omoide ... | head` stopped reading: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit's flush does not raise again
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        errors: Errors = (*getattr(module, "ERRORS", ()), *ERRORS)
        for kind, code, prefix in errors:
            if isinstance(exc, kind):
                text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                print(as_typed(f"{prefix}{text}"), file=sys.stderr)
                return code
        raise


if __name__ == "__main__":
    sys.exit(main())
