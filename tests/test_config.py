import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import ConfigError, load

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_config_is_valid_and_every_key_is_commented():
    config = load(ROOT / "config.toml", env={})
    assert config.character.card.endswith("komorebi.json")
    assert config.path(config.character.card).is_file()
    lines = (ROOT / "config.toml").read_text().splitlines()
    for before, line in zip(["#"] + lines, lines, strict=False):
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line or before.startswith("#"), f"config.toml key without a comment: {line}"


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
