"""Misconfiguration stops a command at once, with one line on stderr saying what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.factories import with_database
from tests.processes import free_port

PASSWORD = "hush-db-password"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={"PATH": os.environ.get("PATH", ""), "LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", [["migrate"], ["worker"], ["serve"]])
def test_an_unreachable_database_is_one_line_without_a_traceback(command: list[str]) -> None:
    nobody_listens = f"postgresql://ledger:{PASSWORD}@127.0.0.1:{free_port()}/ledger"
    done = run(command, {"DATABASE_URL": nobody_listens})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("convoai-ledger: database unavailable: connection to server at")
    assert "Connection refused" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_a_database_that_does_not_exist_is_named(postgres_url: str) -> None:
    done = run(["migrate"], {"DATABASE_URL": with_database(postgres_url, "no_such_ledger")})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert 'database "no_such_ledger" does not exist' in lines[0]


def test_an_app_without_a_webhook_secret_stops_serve(database_url: str) -> None:
    done = run(["serve"], {"DATABASE_URL": database_url, "AGORA_APP_ID": "app-one"})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "convoai-ledger: configuration error: "
        "AGORA_WEBHOOK_SECRETS is required when AGORA_APP_ID is set"
    )
