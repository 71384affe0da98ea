"""Configuration errors are loud and name what is wrong."""

import os
import subprocess

import pytest

from conftest import CLI_TIMEOUT_S, KEYPOST_BIN


@pytest.fixture
def run(tmp_path):
    if not (os.path.isfile(KEYPOST_BIN) and os.access(KEYPOST_BIN, os.X_OK)):
        pytest.fail(f"KEYPOST_BIN={KEYPOST_BIN!r} is not an executable (run scripts/test)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPOST_")}
    env["KEYPOST_DATA_DIR"] = str(tmp_path / "data")

    def run(*args):
        return subprocess.run(
            [KEYPOST_BIN, *args],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )

    return run


def test_missing_config_file_fails_naming_the_file(run):
    p = run("--config", "/nonexistent.toml", "tenant", "list")
    assert p.returncode != 0, p.stdout
    assert "/nonexistent.toml" in p.stderr + p.stdout, p.stderr


def test_unknown_config_key_fails_naming_the_key(run, tmp_path):
    config = tmp_path / "keypost.toml"
    config.write_text('[listen]\nhtp = "x"\n')
    p = run("--config", str(config), "tenant", "list")
    assert p.returncode != 0, p.stdout
    assert "htp" in p.stderr + p.stdout, p.stderr
