"""Logging output, in a fresh interpreter each time (configuration is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SECRET = "local-SECRET-5e1f"

SCRIPT = f"""
import structlog
from service import logs

logs.configure(level="info", fmt=FORMAT)

def connect(password):
    raise ConnectionError("connection refused")

try:
    connect("{SECRET}")
except ConnectionError as error:
    structlog.get_logger("probe").error("connect_failed", exc_info=error)
"""


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_leave_out_local_variables(fmt: str) -> None:
    script = SCRIPT.replace("FORMAT", repr(fmt))
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "connect_failed" in output
    assert "ConnectionError" in output and "connect" in output  # the traceback is there
    assert SECRET not in output
