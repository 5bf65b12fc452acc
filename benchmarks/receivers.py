"""The webhook receivers the ingest benchmark drives, each in its own process on loopback.

- `Ledger`: `convoai-ledger serve --workers N` with the benchmark's apps (`LEDGER_APPS_FILE`),
  info logs to a file as in production. `BENCH_SERVICE_ENV` ("NAME=value ...") adds settings,
  for trying a changed service's knobs without editing the benchmark.
- `AgoraSample`: Agora's own sample receiver (github AgoraIO-Conversational-AI/
  recipe-agent-webhooks, `server/`: FastAPI + SQLite, one INSERT per notification), as a fixed
  outside reference. Never vendored: `BENCH_AGORA_SAMPLE` names a checkout's `server/` directory
  with its requirements installed in `server/venv` (or the Python in `BENCH_AGORA_SAMPLE_PYTHON`).

Each answers where a notification goes and with which secret, the process tree whose CPU is its
own, and checks at the end that everything sent was stored exactly once.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
from collections.abc import Sequence
from pathlib import Path

import httpx
import psycopg

from benchmarks import cpu, loadgen, traffic
from tests.factories import poll
from tests.processes import ServiceProcess, free_port


class Ledger:
    def __init__(self, *, url: str, workers: int, apps: Sequence[traffic.App], logs: Path) -> None:
        self.label = f"`serve --workers {workers}`"
        self.url, self.apps = url, {app.app_id: app for app in apps}
        self.port = free_port()
        apps_file = logs / "apps.toml"
        apps_file.write_text("".join(_app_table(app) for app in apps))
        env = {
            "DATABASE_URL": url,
            "LEDGER_APPS_FILE": str(apps_file),
            "READ_API_TOKENS": "bench-reader",
            "RECONCILE_INTERVAL_S": "0",
            "LOG_LEVEL": "info",
            "PORT": str(self.port),
            **_extra_env(),
        }
        self.process = ServiceProcess(["serve", "--workers", str(workers)], env, logs / "serve.log")
        self.process.wait_ready()
        self.tree = cpu.Tree(self.process.process.pid)

    def path(self, app_id: str) -> str:
        return f"/v1/webhooks/agora/{app_id}"

    def secret(self, app_id: str) -> str:
        return self.apps[app_id].secret

    def stop(self) -> None:
        self.process.terminate()

    def check(self, sent: Sequence[traffic.Notification]) -> str:
        """Every notification sent stored once and applied; every agent there, every 102 applied."""
        agents = {(n.app_id, n.agent_id) for n in sent}
        stopped = {(n.app_id, n.agent_id) for n in sent if n.event_type == 102}
        with psycopg.connect(self.url) as conn:
            stored = conn.execute(
                "SELECT count(*), count(DISTINCT (app_id, notice_id)),"
                " count(*) FILTER (WHERE outcome = 'accepted') FROM notification"
            ).fetchone()
            rows = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE state = 'STOPPED') FROM agent"
            ).fetchone()
        expected = (len(sent), len(sent), len(sent), len(agents), len(stopped))
        found = (*(stored or ()), *(rows or ()))
        if found != expected:
            raise SystemExit(
                f"{self.label}: stored (notifications, distinct, accepted, agents, stopped)"
                f" = {found}, expected {expected}"
            )
        return (
            f"{self.label}: all {len(sent):,} notifications answered 200, stored once and"
            f" accepted; {len(agents):,} agents, {len(stopped):,} stopped"
        )


def _app_table(app: traffic.App) -> str:
    # A cap far above the agents in flight: no threshold is crossed during the run.
    return (
        f'[[apps]]\napp_id = "{app.app_id}"\nwebhook_secrets = ["{app.secret}"]\n'
        "pcu_cap = 100000\n\n"
    )


def _extra_env() -> dict[str, str]:
    pairs = shlex.split(os.environ.get("BENCH_SERVICE_ENV", ""))
    return dict(pair.split("=", 1) for pair in pairs)


class AgoraSample:
    SECRET = "bench-sample-secret"

    def __init__(self, *, server_dir: Path, logs: Path) -> None:
        self.label = "Agora sample"
        self.port = free_port()
        self.database = logs / "webhooks.db"
        python = os.environ.get("BENCH_AGORA_SAMPLE_PYTHON") or str(server_dir / "venv/bin/python")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "AGORA_NOTIFICATION_SECRET": self.SECRET,
            "WEBHOOKS_DB_PATH": str(self.database),
            "AGORA_APP_ID": "bench-sample",  # only its agent starter reads these
            "AGORA_APP_CERTIFICATE": "bench-sample-certificate",
        }
        command = [python, "-m", "uvicorn", "server:app", "--app-dir", str(server_dir / "src")]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self._log = (logs / "agora-sample.log").open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=server_dir
        )
        poll(self._ready, timeout=60, interval=0.1)
        self.tree = cpu.Tree(self.process.pid)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise SystemExit(f"the Agora sample exited with {self.process.returncode}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/openapi.json", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def path(self, app_id: str) -> str:
        return "/ncsNotify"

    def secret(self, app_id: str) -> str:
        return self.SECRET

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._log.close()

    def check(self, sent: Sequence[traffic.Notification]) -> str:
        with sqlite3.connect(self.database) as conn:
            (stored,) = conn.execute("SELECT count(*) FROM events").fetchone()
        if stored != len(sent):
            raise SystemExit(f"{self.label}: stored {stored} events, sent {len(sent)}")
        return f"{self.label}: all {len(sent):,} notifications answered 200 and stored"


def requests(receiver: Ledger | AgoraSample, batch: Sequence[traffic.Notification]) -> list[bytes]:
    """`batch` as HTTP requests to `receiver`, signed with its secret for each app."""
    built = []
    for n in batch:
        headers = traffic.headers(n.body, receiver.secret(n.app_id))
        built.append(loadgen.request(receiver.path(n.app_id), n.body, headers))
    return built
