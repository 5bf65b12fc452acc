"""CPU time of the processes under test, read from /proc (Linux only).

A `Tree` is a process and all its descendants: the service (`serve` and its uvicorn worker
processes) or the postmaster and every server process it forked. Its CPU is the user + system
time of each live member plus what its reaped children used (`cutime`, `cstime`), so a backend or
autovacuum worker that exits between two readings still counts, and nothing counts twice.
`Backends` is the fallback for a PostgreSQL the benchmark does not own (`BENCH_DATABASE_URL`):
only the server processes connected to the benchmark's database, found in `pg_stat_activity`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, reaped children's CPU seconds), None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    own = (int(fields[11]) + int(fields[12])) / TICK
    children = (int(fields[13]) + int(fields[14])) / TICK
    return int(fields[1]), own, children


def _processes() -> dict[int, tuple[int, float, float]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


class Tree:
    """A process and its descendants."""

    def __init__(self, root: int) -> None:
        self.root = root

    def members(self) -> dict[int, tuple[int, float, float]]:
        every = _processes()
        members, frontier = {}, [self.root]
        while frontier:
            pid = frontier.pop()
            if pid in every:
                members[pid] = every[pid]
                frontier += [child for child, stat in every.items() if stat[0] == pid]
        return members

    def seconds(self) -> float:
        return sum(own + children for _, own, children in self.members().values())

    def pids(self) -> list[int]:
        return sorted(self.members())


class Backends:
    """The server processes connected to one database (a server shared with others)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._seen: dict[int, float] = {}

    def seconds(self) -> float:
        """CPU of every backend seen so far (a backend that exited keeps its last reading)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        for (pid,) in rows:
            if (stat := _stat(pid)) is not None:
                self._seen[pid] = stat[1]
        return sum(self._seen.values())


def postgres(url: str, *, owned: bool) -> Tree | Backends:
    """The server's whole process tree if the benchmark started it, else its database's backends."""
    if not owned:
        return Backends(url)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        # Read while connected: once the connection closes, the backend exits.
        stat = _stat(int(row[0]))
    assert stat is not None, "PostgreSQL must run on this machine to count its CPU"
    return Tree(stat[0])


def settle(reading: Callable[[], float], *, idle: float = 0.05, timeout: float = 15.0) -> float:
    """Wait until `reading` (CPU seconds) grows by less than `idle` of a core; answer the wait.

    Work a service defers past its answers (a rollup folded afterwards, autovacuum) is part of
    what the notifications cost, so CPU is read again only once the processes are quiet.
    """
    began = time.monotonic()
    last = reading()
    while time.monotonic() - began < timeout:
        time.sleep(0.25)
        now = reading()
        if now - last < idle * 0.25:
            break
        last = now
    return time.monotonic() - began


def machine_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, every process), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK
