import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from memory.recall import RecallSettings
from persona_model.generation import Sampling
from persona_model.server import ServerSettings
from plugins.listening import ListenerSettings
from runtime.config import Config, ConfigError, load, settings
from runtime.director import DirectorSettings
from runtime.game import GameSettings
from runtime.inbox import Scoring
from runtime.reflection import ReflectionSettings
from runtime.turn import TurnSettings

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_config_is_valid_and_every_key_is_commented():
    config = load(ROOT / "config.toml", env={})
    assert config.character.card.endswith("komorebi.json")
    assert config.path(config.character.card).is_file()
    lines = (ROOT / "config.toml").read_text().splitlines()
    for before, line in zip(["#"] + lines, lines, strict=False):
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line or before.startswith("#"), f"config.toml key without a comment: {line}"


# where the shipped file deliberately differs from a bare Config(): it starts the example character
SHIPPED_CHOICES = {("character", "card")}


def leaves(table: dict, path: tuple[str, ...] = ()):
    for key, value in table.items():
        if isinstance(value, dict) and key not in ("weights", "max_age_s", "hotkeys", "extra", "thanks"):
            yield from leaves(value, (*path, key))
        else:
            yield (*path, key), value


def test_every_value_in_the_shipped_config_is_the_default_it_documents():
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    defaults = Config()
    checked = 0
    for path, value in leaves(shipped):
        if path in SHIPPED_CHOICES:
            continue
        default = defaults
        for key in path:
            default = getattr(default, key)
        assert value == default, f"config.toml says {'.'.join(path)} = {value!r}; the code's default is {default!r}"
        checked += 1
    assert checked > 150  # every section was walked


@pytest.mark.parametrize("cls, section", [
    (TurnSettings, "turn"), (DirectorSettings, "turn"), (GameSettings, "game"), (Scoring, "inbox"),
    (ReflectionSettings, "memory.reflection"), (RecallSettings, "memory"), (Sampling, "model"),
    (ListenerSettings, "stt"),
])
def test_a_settings_object_built_from_the_default_config_is_the_codes_default(cls, section):
    part = Config()
    for key in section.split("."):
        part = getattr(part, key)
    built = settings(cls, part)
    additions = {"weights", "max_age_s"}  # [inbox] tables add to the inbox's own (runtime/inbox.py)
    for name in (type(part).model_fields.keys() & set(cls.__dataclass_fields__)) - additions:
        want = getattr(cls(), name)
        got = getattr(built, name)
        assert got == want or (isinstance(want, tuple) and tuple(got) == want), (cls.__name__, name)


def test_server_settings_take_the_servers_section_by_name():
    built = settings(ServerSettings, Config().server, extra={})
    assert built == ServerSettings(Config().server.url)


def test_environment_overrides_any_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\ntemperature = 0.5\n")
    env = {"OMOIDE_MODEL__TEMPERATURE": "0.2", "OMOIDE_CHAT__CONSOLE__ENABLED": "false",
           "OMOIDE_MODERATION__BLOCKLIST": '["a", "b"]', "OMOIDE_MODEL__ID": "some/model"}
    config = load(path, env=env)
    assert config.model.temperature == 0.2
    assert config.chat.console.enabled is False
    assert config.moderation.blocklist == ["a", "b"]
    assert config.model.id == "some/model"


@pytest.mark.parametrize("toml, expected", [
    ("[model]\ntemperature = 'hot'", "model.temperature = 'hot'"),
    ("[model]\ntemperature = 9.0", "less than or equal to 5"),
    ("[tts]\nengine = 'nope'", "tts.engine = 'nope'"),
    ("[model]\ntempreture = 1.0", "model.tempreture is not a known key (allowed here: backend, id,"),
    ("[avatar]\nport = 70000", "avatar.port = 70000"),
    ("[server]\nurl = 'localhost:8080'", "server.url = 'localhost:8080'"),
    ("[server]\napi_key_env = 'sk-123 secret'", "server.api_key_env must name an environment variable"),
    ("[model\n", "not valid TOML"),
])
def test_a_bad_value_is_named_with_what_is_allowed(tmp_path, toml, expected):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert expected in str(err.value)
    assert "\n" not in str(err.value) and "sk-123" not in str(err.value)


def test_the_cli_exits_with_one_line_on_a_bad_value(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[avatar]\nport = 'eighty'\n")
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "--config", str(path), "config", "check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["config error: avatar.port = 'eighty': Input should be a valid integer, unable to parse string as an integer"]


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", env={})
