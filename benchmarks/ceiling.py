"""The bar the service is judged against: PostgreSQL's rate for a fixed minimal durable
transaction per notification, measured with pgbench.

`SCRIPT` is fixed here, not taken from the service's statements (heavier statements must not
lower the bar): store the raw notification under its unique key (app_id, notice_id), upsert its
agent's row (a new agent each time, so the upsert inserts), record one transition, COMMIT.
pgbench runs it in prepared mode with as many clients as the load has connections, against a
fresh database at the current schema, with fsync on; `body` is one realistic notification.
"""

from __future__ import annotations

import re
import resource
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import cpu
from service import localdb

SCRIPT = r"""
\set n random(1, 4611686018427387903)
BEGIN;
INSERT INTO notification (app_id, notice_id, product_id, event_type, agent_id, outcome, event_at, notify_ms, body)
  VALUES (:app, 'pgb-' || :n, 17, 111, 'pgb-' || :n, 'accepted', now(), 0, CAST(:body AS jsonb))
  ON CONFLICT (app_id, notice_id) DO NOTHING;
INSERT INTO agent (app_id, agent_id, name, channel, state, state_at, started_at, last_event_at)
  VALUES (:app, 'pgb-' || :n, 'support-' || :n, 'sess-' || :n, 'RUNNING', now(), now(), now())
  ON CONFLICT (app_id, agent_id) DO UPDATE
  SET state = EXCLUDED.state, state_at = EXCLUDED.state_at, last_event_at = EXCLUDED.last_event_at,
      updated_at = now();
INSERT INTO agent_transition (app_id, agent_id, from_state, to_state, cause, source, notice_id, event_at)
  VALUES (:app, 'pgb-' || :n, 'IDLE', 'RUNNING', 'agent_joined', 'webhook', 'pgb-' || :n, now());
COMMIT;
"""


@dataclass(frozen=True, slots=True)
class Ceiling:
    rate: float  # notifications (transactions) per second
    latency_ms: float  # pgbench's average per transaction
    postgres_cpu_ms: float  # PostgreSQL's CPU per notification
    pgbench_cpu_ms: float  # the client's own CPU per notification


def command(url: str, *, app_id: str, body: bytes, clients: int, script: Path) -> list[str]:
    """pgbench in prepared mode over `script`, without a vacuum first; add -T or -t."""
    pgbench = str(localdb.bin_path() / "pgbench")
    return [
        *(pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2))),
        *("-f", str(script), f"-Dapp={app_id}", f"-Dbody={body.decode()}", url),
    ]


def write_script(directory: Path) -> Path:
    path = directory / "ceiling.sql"
    path.write_text(SCRIPT.strip() + "\n")
    return path


def measure(
    url: str,
    *,
    app_id: str,
    body: bytes,
    clients: int,
    seconds: int,
    postgres: cpu.Tree | cpu.Backends,
) -> Ceiling:
    """Run the script for `seconds` on the fresh database `url`."""
    script = write_script(Path(tempfile.mkdtemp(prefix="bench-ceiling-")))
    run = command(url, app_id=app_id, body=body, clients=clients, script=script)
    run[1:1] = ["-T", str(seconds)]
    server_before, client_before = postgres.seconds(), _children_cpu()
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    client_cpu = _children_cpu() - client_before
    cpu.settle(postgres.seconds)
    server_cpu = postgres.seconds() - server_before
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{done.stderr}\n{done.stdout}")
    tps = float(_figure(r"tps = ([\d.]+)", done.stdout))
    transactions = float(_figure(r"number of transactions actually processed: (\d+)", done.stdout))
    return Ceiling(
        rate=tps,
        latency_ms=float(_figure(r"latency average = ([\d.]+)", done.stdout)),
        postgres_cpu_ms=server_cpu * 1000 / transactions,
        pgbench_cpu_ms=client_cpu * 1000 / transactions,
    )


def _figure(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise SystemExit(f"pgbench printed no {pattern!r}:\n{text}")
    return found.group(1)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
