"""Webhook ingest: notifications/s and latency at full and half load, against PostgreSQL's own
ceiling for the same durable work.

One throw-away embedded PostgreSQL with fsync on (or BENCH_DATABASE_URL's server), two fresh
databases on it:

1. Ceiling: pgbench runs, per script, the three transactions the service runs for one agent's
   101, 111 and 102 (`ceiling_script()`: the same statements in the same order, taken from the
   server's statement log, the PCU rollup rewrite straight from `service.rollup`), with as many
   clients as the load generator has connections, in prepared mode. Notifications/s = 3 x tps.
2. Service: `convoai-ledger serve --workers 2` (info logs to a file, as in production), fed by
   `loadgen` from its own process over loopback: unique signed 101, 111, 102 per agent, agents in
   blocks of 100 (their joins, then their metrics, then their stops). A warm-up, then full load
   (closed loop, CONNECTIONS connections), then half load (open loop at half the full-load rate).
   Every notification must be answered 200 and be stored exactly once.

    .venv/bin/python benchmarks/bench_ingest.py      # BENCH_QUICK=1: a short smoke run

Prints the figures and records them in BENCHMARKS.md ("ingest").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common, loadgen  # noqa: E402
from service import events, jobs, localdb, repositories, rollup, signatures  # noqa: E402
from tests.processes import ServiceProcess, free_port  # noqa: E402

APP_ID, SECRET = "bench-app", "bench-ingest-secret"
QUICK = bool(os.environ.get("BENCH_QUICK"))
CONNECTIONS = 32
WORKERS = 2
BLOCK = 100  # agents per block: their 101s, then 111s, then 102s
LIFECYCLE = (101, 111, 102)
METRICS_ONLY = (111,)
# The mix, where 101 and 102 take the app's PCU locks until their commit, and 111 alone
# (each for a new agent), where nothing serialises the transactions.
SCENARIOS = (LIFECYCLE, METRICS_ONLY)
NOTES = [
    f"`serve --workers {2}`, info logs to a file; load from `benchmarks/loadgen.py` in its own"
    " process over loopback, unique signed notifications. The pgbench script"
    " (`ceiling_script()`) runs the statements the service runs for the same notifications,"
    " with as many clients as the service has connections.",
]
WARMUP_AGENTS = 500 if QUICK else 1_000
FULL_AGENTS = 1_000 if QUICK else 8_000
HALF_SECONDS = 5 if QUICK else 20
PGBENCH_SECONDS = 5 if QUICK else 20


def main() -> None:
    lines: list[str] = []
    with common.server_url(durable=True) as admin_url:
        for kinds in SCENARIOS:
            slug = "_".join(str(kind) for kind in kinds)
            ceiling = pgbench_ceiling(common.fresh_database(admin_url, f"ceiling_{slug}"), kinds)
            lines += service_run(common.fresh_database(admin_url, f"ingest_{slug}"), kinds, ceiling)
    common.record("ingest", lines, notes=NOTES)


def service_env(url: str, port: int) -> dict[str, str]:
    """What `serve` needs here: the database, the one app and its secret, a port."""
    return {
        "DATABASE_URL": url,
        "AGORA_APP_ID": APP_ID,
        "AGORA_WEBHOOK_SECRETS": SECRET,
        "READ_API_TOKENS": "bench-reader",
        "RECONCILE_INTERVAL_S": "0",
        "PORT": str(port),
    }


def _one_line(sql: str) -> str:
    return " ".join(line.strip() for line in sql.splitlines() if line.strip())


def _record_and_lock(event_type: int) -> str:
    """The service's own first statement (`repositories._RECORD_AND_LOCK`), for pgbench."""
    values = {
        "app_id": ":app",
        "notice_id": f"('pgb-' || :n || '-{event_type}')",
        "product_id": "17",
        "event_type": str(event_type),
        "agent_id": "('pgb-' || :n)",
        "agent": "('pgb-' || :n)",
        "outcome": "'accepted'",
        "problem": "NULL",
        "raw": "NULL",
        "event_at": "now()",
        "notify_ms": "0",
        "received_at": "now()",
        "body": f"CAST(:body{event_type} AS jsonb)",
    }
    sql = str(repositories._RECORD_AND_LOCK.text)
    sql = re.sub(r"(?<!:):(\w+)\b", lambda m: values[m.group(1)], sql)
    return _one_line(sql) + ";"


def _transition(from_state: str, to_state: str, cause: str) -> str:
    return (
        "INSERT INTO agent_transition (app_id, agent_id, from_state, to_state, cause, source, notice_id,"
        f" inferred, event_at, received_at) VALUES (:app, 'pgb-' || :n, '{from_state}', '{to_state}',"
        f" '{cause}', 'webhook', 'pgb-' || :n, false, now(), now());"
    )


def _pcu_upkeep() -> str:
    """`rollup.upkeep`'s statements for one minute and hour and the commit, in one pipeline as
    the service sends them."""
    keys = (
        "ARRAY[hashtextextended('pcu_minute/' || :app || date_trunc('minute', now()), 0),"
        " hashtextextended('pcu_hour/' || :app || date_trunc('hour', now()), 0)]"
    )
    active = "ARRAY[" + ", ".join(f"'{state}'" for state in rollup._ACTIVE) + "]"
    replacements = {
        "CAST(%(keys)s AS bigint[])": keys,
        "CAST(%(minutes)s AS timestamptz[])": "ARRAY[date_trunc('minute', now())]",
        "CAST(%(hours)s AS timestamptz[])": "ARRAY[date_trunc('hour', now())]",
        "%(active)s": active,
        "%(app)s": ":app",
        "%(cap)s": "20",  # PCU_CAP's default, as the service runs here
        "%(warn_at)s": "16",
    }
    statements = []
    for sql in (
        rollup._LOCK_SQL,
        rollup._REWRITE_SQL,
        rollup._ALARM_ROW_SQL,
        rollup._ALARM_LOCK_SQL,
        rollup._SETTLE_SQL,
        "COMMIT",
    ):
        for old, new in replacements.items():
            sql = sql.replace(old, new)
        statements.append(_one_line(sql) + ";")
    return "\n".join(["\\startpipeline", *statements, "\\endpipeline"])


def ceiling_script(kinds: tuple[int, ...]) -> str:
    """The service's transactions for one agent's notifications of `kinds`, as a pgbench script.

    Each transaction is what `ingest.handle` sends: the service's own first statement (the
    delivery stored, the agent created or locked), the writes its lifecycle decision makes, and
    the commit, which for 101 and 102 ends the PCU upkeep's pipeline.
    """
    transactions = {
        101: [
            "UPDATE agent SET name = 'name-' || :n, channel = 'chan-' || :n, state = 'RUNNING',"
            " state_at = now(), started_at = date_trunc('second', now()),"
            " active_from = date_trunc('second', now()), last_event_at = now(),"
            ' labels = labels || \'{"tenant": "bench"}\', updated_at = now()'
            " WHERE agent_id = 'pgb-' || :n;",
            _transition("IDLE", "RUNNING", "agent_joined"),
            _pcu_upkeep(),
        ],
        111: [
            'UPDATE agent SET last_event_at = now(), labels = labels || \'{"tenant": "bench"}\','
            " updated_at = now() WHERE agent_id = 'pgb-' || :n;",
            "INSERT INTO agent_metric (app_id, agent_id, notice_id, position, turn_id, asr_ttlw, llm_ttfb,"
            " llm_ttfs, tts_ttfb, figures, event_at) VALUES (:app, 'pgb-' || :n, 'pgb-' || :n, 0, '1',"
            " 300, 500, 700, 100, '{\"asr_ttlw\": 300}', now()) ON CONFLICT DO NOTHING;",
        ],
        102: [
            "UPDATE agent SET state = 'STOPPED', state_at = now(), stopped_at = now(),"
            " stop_status = 'STOPPED', stop_message = 'OK',"
            " active_until = date_trunc('second', now()),"
            ' last_event_at = now(), labels = labels || \'{"tenant": "bench"}\','
            " updated_at = now() WHERE agent_id = 'pgb-' || :n;",
            _transition("RUNNING", "STOPPED", "agent_left"),
            "WITH created AS (INSERT INTO history_job (agent_id, app_id)"
            " VALUES ('pgb-' || :n, :app) ON CONFLICT (app_id, agent_id) DO NOTHING RETURNING agent_id)"
            f" SELECT pg_notify('{jobs.CHANNEL}', agent_id) FROM created;",
            _pcu_upkeep(),
        ],
    }
    lines = ["\\set n random(1, 4611686018427387903)"]
    for kind in kinds:
        commit = [] if kind in (101, 102) else ["COMMIT;"]  # 101 and 102 commit in the upkeep
        lines += ["BEGIN;", _record_and_lock(kind), *transactions[kind], *commit]
    return "\n".join(lines)


def pgbench_ceiling(url: str, kinds: tuple[int, ...]) -> dict[str, float]:
    sample = notifications(1, prefix="sample", kinds=kinds)
    bodies = {f"body{event}": body.decode() for event, body, _ in sample}
    script = Path(tempfile.mkdtemp(prefix="bench-ingest-")) / "ceiling.sql"
    script.write_text(ceiling_script(kinds))
    pgbench = str(localdb.bin_path() / "pgbench")
    command = [pgbench, "-n", "-M", "prepared", "-c", str(CONNECTIONS), "-j", "2"]
    command += ["-T", str(PGBENCH_SECONDS), "-f", str(script), "-D", f"app={APP_ID}"]
    command += [f"-D{name}={value}" for name, value in bodies.items()]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO pcu_alarm (app_id) VALUES (%s) ON CONFLICT DO NOTHING", [APP_ID])
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{done.stderr}\n{done.stdout}")
    tps = float(re.search(r"tps = ([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM notification").fetchone()
    return {
        "rate": tps * len(kinds),
        "script_ms": latency,
        "stored": float(stored[0] if stored else 0),
    }


def notifications(
    count: int, *, prefix: str, kinds: tuple[int, ...] = LIFECYCLE, per_second: float = 100.0
) -> list[tuple[int, bytes, dict[str, str]]]:
    """Signed notifications of `kinds` for `count` agents, in blocks of BLOCK agents.

    As Agora's, `start_ts` and `stop_ts` are whole seconds: `per_second` agents start in each
    second from now on (about when they will be sent) and stop 30 s later, so every minute holds
    the edges of the agents sent in it.
    """
    now = int(time.time())
    out: list[tuple[int, bytes, dict[str, str]]] = []
    for first in range(0, count, BLOCK):
        agents = [(i, f"{prefix}-{i:06d}") for i in range(first, min(count, first + BLOCK))]
        for event_type in kinds:
            for i, agent_id in agents:
                start_ts = now + int(i / per_second)
                payload: dict[str, object] = {
                    "agent_id": agent_id,
                    "name": f"name-{agent_id}",
                    "channel": f"chan-{agent_id}",
                    "start_ts": start_ts,
                    "labels": {"tenant": "bench"},
                }
                if event_type == 111:
                    payload["metrics"] = [
                        {"turn_id": 1, "asr_ttlw": 310, "llm_ttfb": 620, "llm_ttfs": 840,
                         "tts_ttfb": 120}
                    ]  # fmt: skip
                if event_type == 102:
                    payload.update(stop_ts=start_ts + 30, status="STOPPED", message="OK")
                body = events.build(
                    event_type,
                    payload,
                    notice_id=f"{prefix}:{agent_id}:{event_type}",
                    notify_ms=now * 1000,
                )
                headers = {"Content-Type": "application/json", **signatures.sign(body, SECRET)}
                out.append((event_type, body, headers))
    return out


def requests(
    count: int, *, prefix: str, kinds: tuple[int, ...] = LIFECYCLE, per_second: float = 100.0
) -> list[bytes]:
    path = f"/v1/webhooks/agora/{APP_ID}"
    built = notifications(count, prefix=prefix, kinds=kinds, per_second=per_second)
    return [loadgen.request(path, body, headers) for _, body, headers in built]


def service_run(url: str, kinds: tuple[int, ...], ceiling: dict[str, float]) -> list[str]:
    """Warm-up, full load, half load against `serve --workers 2`; every answer 200, every
    notification stored once. Answers the figures, labelled with the mix of `kinds`."""
    port = free_port()
    env = service_env(url, port)
    mix = "/".join(str(kind) for kind in kinds)
    per_agent = len(kinds)
    logs = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    warmup = requests(WARMUP_AGENTS * 3 // per_agent, prefix="warm", kinds=kinds)
    full = requests(FULL_AGENTS * 3 // per_agent, prefix="full", kinds=kinds)
    service = ServiceProcess(["serve", "--workers", str(WORKERS)], env, logs / "serve.log")
    try:
        service.wait_ready()
        check(loadgen.in_process(loadgen.closed, port, warmup, concurrency=CONNECTIONS), "warm-up")
        loaded = loadgen.in_process(loadgen.closed, port, full, concurrency=CONNECTIONS)
        check(loaded, "full load")
        half_rate = loaded.rate / 2
        count = int(half_rate * HALF_SECONDS / per_agent) + BLOCK
        half = requests(count, prefix="half", kinds=kinds, per_second=half_rate / per_agent)
        halved = loadgen.in_process(
            loadgen.open_loop, port, half, rate=half_rate, connections=CONNECTIONS * 2
        )
        check(halved, "half load")
    finally:
        service.terminate()
    sent = len(warmup) + len(full) + len(half)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (app_id, notice_id)) FROM notification"
        ).fetchone()
        agents = conn.execute("SELECT count(*) FROM agent").fetchone()
    assert row is not None and agents is not None
    if row[0] != sent or row[1] != sent or agents[0] != sent // per_agent:
        raise SystemExit(f"stored {row[0]} ({row[1]} distinct) for {agents[0]} agents; sent {sent}")
    ratio = loaded.rate / ceiling["rate"]
    return [
        f"**{mix}** pgbench ceiling ({CONNECTIONS} clients, prepared, fsync on):"
        f" {ceiling['rate']:,.0f} notifications/s ({per_agent} per script,"
        f" {ceiling['script_ms']:.1f} ms per script)",
        f"**{mix}** full load ({len(full):,} notifications, {CONNECTIONS} connections):"
        f" {loaded.rate:,.0f} notifications/s = **{ratio:.2f} x ceiling** (target >= 0.5);"
        f" {latency(loaded)}",
        f"**{mix}** half load (open loop at {half_rate:,.0f}/s, {len(half):,} notifications):"
        f" {latency(halved)} (target p99 < 50 ms)",
        f"**{mix}** all {sent:,} notifications answered 200 and stored once, {agents[0]:,} agents",
    ]


def check(result: loadgen.Result, what: str) -> None:
    if result.failures:
        raise SystemExit(f"{what}: answers {result.statuses}")


def latency(result: loadgen.Result) -> str:
    values = result.latencies_ms
    return (
        f"p50 {common.percentile(values, 0.5):.1f} ms, p99 {common.percentile(values, 0.99):.1f} ms,"
        f" max {max(values):.1f} ms"
    )


if __name__ == "__main__":
    main()
