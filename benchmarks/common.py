"""What every benchmark shares: its database, and recording its figures in BENCHMARKS.md.

Each script owns one section of the top-level BENCHMARKS.md (`## name`), rewritten on every run
with the date, the machine (cores, memory, load average) and the command that produced it.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

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
