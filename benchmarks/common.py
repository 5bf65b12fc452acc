"""What every benchmark shares: its database, bulk loads, the service under test, timed reads,
and recording its figures in BENCHMARKS.md.

Each script owns one section of the top-level BENCHMARKS.md (`## name`), rewritten on every run
with the date, the machine (cores, memory, load average) and the command that produced it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx
    import psycopg

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Produced by `make bench` (each `benchmarks/bench_*.py` in turn, never part of `make test`);\n"
    "every section says when, on what machine and with which command its figures were taken.\n"
    "`BENCH_DATABASE_URL` points a run at an existing server instead of a throw-away embedded one.\n"
)


@contextmanager
def server_url(*, durable: bool = False) -> Iterator[str]:
    """`BENCH_DATABASE_URL` if set, else a throw-away embedded PostgreSQL (fsync on if `durable`)."""
    given = os.environ.get("BENCH_DATABASE_URL")
    if given:
        yield given.replace("postgresql+psycopg://", "postgresql://", 1)
        return
    from service import localdb

    with localdb.temporary(durable=durable) as server:
        yield server.url


def fresh_database(admin_url: str, name: str) -> str:
    """Database `name` on the server of `admin_url`, dropped if it was there, migrated to head."""
    import psycopg

    from service import schema
    from tests.factories import with_database

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    schema.upgrade(with_database(admin_url, name, driver=True))
    return with_database(admin_url, name)


def sqlalchemy_url(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """The service's form of the URL `conn` was opened with."""
    info = conn.info
    return f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{info.dbname}"


class CopyStream:
    """Rows written into one `COPY … FROM STDIN` (text format), sent in 1 MiB pieces."""

    def __init__(self, copy: psycopg.Copy) -> None:
        self._copy, self._buffer = copy, io.StringIO()

    def write(self, row: Iterable[str]) -> None:
        """One row of fields already in COPY's text form (`NULL` for a null)."""
        self._buffer.write("\t".join(row) + "\n")
        if self._buffer.tell() > 1 << 20:
            self.flush()

    def flush(self) -> None:
        self._copy.write(self._buffer.getvalue())
        self._buffer = io.StringIO()


NULL = "\\N"  # a null field in COPY's text format


@contextmanager
def copy_into(
    conn: psycopg.Connection[tuple[object, ...]], table: str, columns: str, *, fresh: bool = False
) -> Iterator[CopyStream]:
    """A `CopyStream` into `table` (`columns` comma-separated), finished when the block ends;
    the caller commits.

    `fresh` empties the table first (`TRUNCATE … CASCADE`: the tables referring to it too) and
    builds its indexes other than its keys after the rows, from their own definitions, as
    `pg_restore` does: several times faster than keeping them up to date row by row. The rows
    go in frozen, visible to all, as a month-old table's would be after autovacuum.
    """
    indexes = _secondary_indexes(conn, table) if fresh else []
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    if fresh:
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        conn.execute(f"TRUNCATE {table} CASCADE")
    freeze = " WITH (FREEZE)" if fresh else ""
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN{freeze}") as copy:
        stream = CopyStream(copy)
        yield stream
        stream.flush()
    for _, definition in indexes:
        conn.execute(definition)


def _secondary_indexes(
    conn: psycopg.Connection[tuple[object, ...]], table: str
) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of `table`'s indexes that back no constraint."""
    rows = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = %s::regclass"
        " AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        [table],
    ).fetchall()
    return [(str(name), str(definition)) for name, definition in rows]


@contextmanager
def serve(env: Mapping[str, str], *, args: Sequence[str] = ("serve",)) -> Iterator[str]:
    """`python -m service serve` on a free port with `env` (plus PATH and PORT), quiet; yields
    its base URL once `/readyz` answers 200, and stops it after the block."""
    import httpx

    from tests.processes import free_port

    port = free_port()
    full_env = {"PATH": os.environ.get("PATH", ""), "LOG_LEVEL": "error", **env, "PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        env=full_env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the service did not become ready")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def timed(client: httpx.Client, path: str, requests: int, *, warmup: int = 20) -> list[float]:
    """Milliseconds of `requests` GETs of `path` one after the other, after `warmup` untimed
    ones (connections, plans, caches); any answer but 200 ends the benchmark."""
    for _ in range(warmup):
        client.get(path)
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.text}")
    return out


def rfc(value: datetime) -> str:
    """RFC 3339 in UTC, whole seconds, as the read API takes it."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine() -> str:
    """Cores, memory and the load average now (1/5/15 min)."""
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kib = int(meminfo.read_text().split()[1])
        memory = f", {total_kib / 1024 / 1024:.0f} GiB"
    return f"{os.cpu_count()} cores{memory}, load average {load_average()}"


def load_average() -> str:
    """The machine's load average now, over 1 / 5 / 15 minutes."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def flush_ms(directory: Path, *, times: int = 100) -> tuple[float, float]:
    """p50 and p99 of one 8 KiB write + fdatasync in `directory` (PostgreSQL's WAL flush on
    Linux): on a shared machine, what a durable commit waits for at least, right now."""
    import tempfile
    import time

    took = []
    with tempfile.TemporaryFile(dir=directory) as scratch:
        block = os.urandom(8192)
        for _ in range(times):
            began = time.perf_counter()
            os.pwrite(scratch.fileno(), block, 0)
            os.fdatasync(scratch.fileno())
            took.append((time.perf_counter() - began) * 1000)
    return percentile(took, 0.5), percentile(took, 0.99)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def percentiles(samples: list[float]) -> str:
    """p50, p95 and max of latencies in ms, aligned in columns."""
    p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
    return f"p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  max {max(samples):6.1f} ms"


def latencies(values: list[float]) -> str:
    """p50, p99 and max of latencies in ms, as the benchmarks print them."""
    return (
        f"p50 {percentile(values, 0.5):.1f} ms, p99 {percentile(values, 0.99):.1f} ms,"
        f" max {max(values):.1f} ms"
    )


def record(
    section: str, lines: Sequence[str], *, notes: Sequence[str] = (), table: Sequence[str] = ()
) -> None:
    """Print `lines` and write them as the `## section` of BENCHMARKS.md: the notes, then the
    Markdown `table` rows as they are, then `lines` as a list."""
    command = "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    head = f"{when}, {machine()}, `{command}`"
    print(f"== {section}: {head}")
    for line in [*table, *lines]:
        print(f"  {line}")
    body = [f"## {section}", "", head, ""]
    for paragraph in notes:
        body += [paragraph, ""]
    body += [*table, *([""] if table else [])]
    body += [f"- {line}" for line in lines]
    block = "\n".join(body) + "\n"
    text = RECORD.read_text(encoding="utf-8") if RECORD.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RECORD.write_text(text, encoding="utf-8")
