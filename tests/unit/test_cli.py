from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import service
from service import cli


def test_version_prints_the_version_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"convoai-ledger {service.__version__}\n"


def test_the_console_script_answers_version_without_any_configuration() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--version"],
        capture_output=True,
        text=True,
        env={"PORT": "not a port"},  # nothing is read before the version is printed
        timeout=60,
        check=False,
    )
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    version = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert (result.returncode, result.stdout.strip()) == (0, f"convoai-ledger {version}")
