"""The insight benchmark's answers checked against figures computed here from the stored rows.

Each check takes the first answer of one timed request (`answers`, by its label in
`bench_insight`) and recomputes a part of it without the service: usage as SQL sums of every
agent's interval overlap (whole seconds, so exact), latency as nearest-rank percentiles of the
turns sorted in Python, the error summary and lists as plain SQL. An endpoint not available is
skipped; any difference ends the benchmark with every difference found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg

from benchmarks.insight_data import APP, DAYS, NAMES, TENANTS

Conn = psycopg.Connection[tuple[Any, ...]]
Check = Callable[[Conn, dict[str, Any], datetime], str]
LIST_LIMIT: Final = 50  # the API's default page


def run(url: str, *, answers: dict[str, Any], now: datetime) -> list[str]:
    """One line per check; raises SystemExit listing the differences if any check found one."""
    lines, wrong = [], []
    with psycopg.connect(url, autocommit=True) as conn:
        for label, check in CHECKS:
            if label not in answers:
                continue
            try:
                lines.append(f"check {label}: {check(conn, answers[label], now)}")
            except Mismatch as error:
                wrong.append(f"{label}: {error}")
    if wrong:
        raise SystemExit("insight answers differ from the rows:\n  " + "\n  ".join(wrong))
    skipped = len([label for label, _ in CHECKS if label not in answers])
    if skipped:
        lines.append(f"checks skipped, their endpoint not available: {skipped} of {len(CHECKS)}")
    return lines


class Mismatch(Exception):
    """An answer differs from the figure computed from the rows."""


def expect(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise Mismatch(f"{what}: {difference(got, expected)}")


def difference(got: object, expected: object) -> str:
    """Where `got` first differs from `expected`: by key for mappings, by index for lists."""
    if isinstance(got, dict) and isinstance(expected, dict):
        keys = sorted(
            {*got, *expected} - {k for k in got if got.get(k) == expected.get(k)}, key=repr
        )
        return "; ".join(f"[{k!r}] {difference(got.get(k), expected.get(k))}" for k in keys[:5])
    if isinstance(got, list) and isinstance(expected, list):
        index = next(
            (i for i, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e),
            min(len(got), len(expected)),
        )
        return (
            f"{len(got)} answered, {len(expected)} computed, first difference at [{index}]:"
            f" answered {got[index : index + 1]!r}, computed {expected[index : index + 1]!r}"
        )
    return f"answered {got!r}, computed {expected!r}"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def point(answer: dict[str, Any], start: datetime) -> dict[str, Any]:
    for candidate in answer["points"]:
        if at(candidate["at"]) == start:
            return dict(candidate)
    raise Mismatch(f"no point at {start.isoformat()}")


# Usage: the overlap of every agent's active interval with [a, b), the agents starting in it and
# those FAILED with their stop in it, per tenant or for all (key null).
_USAGE_SQL: Final = """
    SELECT {key},
           coalesce(sum(extract(epoch FROM least(coalesce(active_until, 'infinity'), %(b)s)
                                         - greatest(active_from, %(a)s)))
                    FILTER (WHERE active_from < %(b)s
                              AND coalesce(active_until, 'infinity') > %(a)s), 0),
           count(*) FILTER (WHERE active_from >= %(a)s AND active_from < %(b)s),
           count(*) FILTER (WHERE state = 'FAILED' AND stopped_at >= %(a)s AND stopped_at < %(b)s)
    FROM agent
    WHERE app_id = %(app)s AND active_from < %(b)s
      AND (coalesce(active_until, 'infinity') > %(a)s OR stopped_at >= %(a)s)
    GROUP BY 1
"""


def usage_of(
    conn: Conn, a: datetime, b: datetime, *, by_tenant: bool
) -> dict[str | None, tuple[Decimal, int, int]]:
    key = "labels->>'tenant'" if by_tenant else "NULL::text"
    rows = conn.execute(_USAGE_SQL.format(key=key), {"a": a, "b": b, "app": APP}).fetchall()
    return {
        row[0]: (Decimal(row[1]), int(row[2]), int(row[3]))
        for row in rows
        if row[1] or row[2] or row[3]
    }


def check_usage(
    start: Callable[[datetime], datetime], width: timedelta, *, by_tenant: bool
) -> Check:
    def check(conn: Conn, answer: dict[str, Any], now: datetime) -> str:
        a = start(now)
        got = {
            group["key"]: (
                Decimal(str(group["agent_seconds"])),
                group["sessions"],
                group["failed"],
            )
            for group in point(answer, a)["groups"]
            if group["agent_seconds"] or group["sessions"] or group["failed"]
        }
        expected = usage_of(conn, a, a + width, by_tenant=by_tenant)
        expect(f"bucket {a.isoformat()} (agent_seconds, sessions, failed) by key", got, expected)
        total = sum(figures[0] for figures in expected.values())
        return (
            f"bucket {a:%Y-%m-%d %H:%M:%S}: {len(expected)} groups, {total:,} agent-seconds, equal"
        )

    return check


def nearest_rank(ordered: Sequence[int], percent: int) -> int | None:
    """The value at rank ceil(percent/100 * n) of `ordered` (ascending); None when empty."""
    if not ordered:
        return None
    return ordered[(percent * len(ordered) + 99) // 100 - 1]


def latency_of(conn: Conn, a: datetime, b: datetime, *, tenant: str | None) -> dict[str, Any]:
    join = " JOIN agent g USING (app_id, agent_id)" if tenant is not None else ""
    where = " AND g.labels->>'tenant' = %(tenant)s" if tenant is not None else ""
    rows = conn.execute(
        "SELECT t.e2e_latency_ms, t.asr_ttlw, t.llm_ttft, t.tts_ttfb FROM agent_turn t"
        + join
        + " WHERE t.app_id = %(app)s AND t.end_at >= %(a)s AND t.end_at < %(b)s"
        + where,
        {"app": APP, "a": a, "b": b, "tenant": tenant},
    ).fetchall()
    columns = [sorted(row[i] for row in rows if row[i] is not None) for i in range(4)]
    e2e = columns[0]
    return {
        "turns": len(rows),
        "e2e_ms": {
            "p50": nearest_rank(e2e, 50),
            "p90": nearest_rank(e2e, 90),
            "p99": nearest_rank(e2e, 99),
            "max": e2e[-1] if e2e else None,
        },
        "segments": {
            name: {"p50": nearest_rank(values, 50), "p90": nearest_rank(values, 90)}
            for name, values in zip(("asr_ttlw", "llm_ttft", "tts_ttfb"), columns[1:], strict=True)
        },
    }


def only(answered: Any, expected: Any) -> Any:
    """`answered` with no more keys than `expected` has, at every depth (an answer may carry
    figures this benchmark does not check)."""
    if isinstance(answered, dict) and isinstance(expected, dict):
        return {key: only(answered.get(key), value) for key, value in expected.items()}
    return answered


def check_latency(
    start: Callable[[datetime], datetime], width: timedelta, *, tenant: str | None = None
) -> Check:
    def check(conn: Conn, answer: dict[str, Any], now: datetime) -> str:
        a = start(now)
        got = point(answer, a)
        expected = latency_of(conn, a, a + width, tenant=tenant)
        answered = {name: only(got.get(name), expected[name]) for name in expected}
        expect(f"bucket {a.isoformat()}", answered, expected)
        return (
            f"bucket {a:%Y-%m-%d %H:%M:%S}: {expected['turns']:,} turns,"
            f" e2e p50 {expected['e2e_ms']['p50']} ms, equal"
        )

    return check


def check_summary(start: Callable[[datetime], datetime]) -> Check:
    def check(conn: Conn, answer: dict[str, Any], now: datetime) -> str:
        a = start(now)
        rows = conn.execute(
            "SELECT module, code, count(*), count(DISTINCT agent_id), max(event_at)"
            " FROM agent_error WHERE app_id = %s AND event_at >= %s AND event_at < %s"
            " GROUP BY module, code",
            [APP, a, a + timedelta(days=DAYS)],
        ).fetchall()
        expected = {(m, c): (n, agents, last) for m, c, n, agents, last in rows}
        items = answer["items"]
        got = {(i["module"], i["code"]): (i["count"], i["agents"], at(i["last_at"])) for i in items}
        expect("(module, code): (count, agents, last_at)", got, expected)
        counts = [i["count"] for i in items]
        expect("order (most frequent first)", counts, sorted(counts, reverse=True))
        return f"{len(expected)} module/code pairs, {sum(n for n, _, _ in expected.values()):,} errors, equal"

    return check


def check_errors_newest(conn: Conn, answer: dict[str, Any], now: datetime) -> str:
    """The first page: the newest errors (a tie on the page's last second may go either way)."""
    items = answer["items"]
    expect("page size", len(items), min(LIST_LIMIT, count(conn, "agent_error")))
    got = [(at(i["at"]), i["agent_id"], i["module"], i["code"], i["message"]) for i in items]
    expect("order (newest first)", got, sorted(got, key=lambda e: e[0], reverse=True))
    rows = conn.execute(
        "SELECT event_at, agent_id, module, code, message FROM agent_error"
        " WHERE app_id = %s AND event_at >= %s",
        [APP, got[-1][0]],
    ).fetchall()
    newer = Counter(row for row in rows if row[0] > got[-1][0])
    expect("errors newer than the page's last", Counter(e for e in got if e[0] > got[-1][0]), newer)
    if not Counter(got) <= Counter(rows):
        raise Mismatch("the page holds errors that are not stored")
    return f"{len(items)} newest errors, equal"


def check_errors_filtered(conn: Conn, answer: dict[str, Any], now: datetime) -> str:
    until = now.replace(minute=0, second=0)
    since = until - timedelta(days=DAYS)
    row = conn.execute(
        "SELECT count(*) FROM agent_error WHERE app_id = %s AND module = 'llm' AND code = 504"
        " AND event_at >= %s AND event_at < %s",
        [APP, since, until],
    ).fetchone()
    items = answer["items"]
    expect("page size", len(items), min(LIST_LIMIT, int(row[0]) if row else 0))
    outside = [
        i
        for i in items
        if (i["module"], i["code"]) != ("llm", 504) or not since <= at(i["at"]) < until
    ]
    expect("errors outside the filter", outside, [])
    return f"{len(items)} errors, all llm 504 within the 30 days"


def check_apps(conn: Conn, answer: dict[str, Any], now: datetime) -> str:
    row = conn.execute(
        "SELECT count(*) FROM agent WHERE app_id = %s AND active_from IS NOT NULL"
        " AND active_until IS NULL",
        [APP],
    ).fetchone()
    ours = [item for item in answer["items"] if item["app_id"] == APP]
    expect("apps listing the benchmark's app", len(ours), 1)
    expect("current", ours[0]["current"], int(row[0]) if row else 0)
    return f"current {ours[0]['current']}, equal"


def check_timeline(conn: Conn, answer: dict[str, Any], now: datetime) -> str:
    agent_id = answer["agent_id"]
    expected = {}
    for kind, table in (
        ("transition", "agent_transition"),
        ("error", "agent_error"),
        ("turn", "agent_turn"),
    ):
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE app_id = %s AND agent_id = %s", [APP, agent_id]
        ).fetchone()
        expected[kind] = int(row[0]) if row else 0
    items = answer["items"]
    kinds = Counter(item["kind"] for item in items)
    expect("items per kind", {kind: kinds[kind] for kind in expected}, expected)
    times = [at(item["at"]) for item in items]
    expect("order (event time)", times, sorted(times))
    return f"{agent_id}: {len(items)} items, equal"


def check_agents(condition: str, params: Callable[[datetime], dict[str, Any]]) -> Check:
    """The first page of a filtered list equals SQL's, in the API's order (a total one)."""

    def check(conn: Conn, answer: dict[str, Any], now: datetime) -> str:
        rows = conn.execute(
            "SELECT agent_id FROM agent AS a WHERE app_id = %(app)s AND "
            + condition
            + " ORDER BY coalesce(started_at, first_seen_at) DESC, app_id DESC, agent_id DESC"
            " LIMIT %(limit)s",
            {"app": APP, "limit": LIST_LIMIT, **params(now)},
        ).fetchall()
        expect("agent ids", [i["agent_id"] for i in answer["items"]], [r[0] for r in rows])
        return f"{len(rows)} agents, equal"

    return check


def count(conn: Conn, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE app_id = %s", [APP]).fetchone()
    return int(row[0]) if row else 0


def busiest_agent(url: str) -> str:
    """A FAILED agent with the most errors (else any agent with errors, else any agent)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT e.agent_id FROM agent_error e JOIN agent a USING (app_id, agent_id)"
            " WHERE e.app_id = %s GROUP BY e.agent_id, a.state"
            " ORDER BY a.state = 'FAILED' DESC, count(*) DESC, e.agent_id LIMIT 1",
            [APP],
        ).fetchone()
        row = row or conn.execute("SELECT min(agent_id) FROM agent").fetchone()
    assert row is not None
    return str(row[0])


def _hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0)


def _odd(now: datetime) -> datetime:
    return _hour(now) - timedelta(seconds=2363)  # as `bench_insight.requests_of`


HOUR, DAY = timedelta(hours=1), timedelta(days=1)
_MONTH = timedelta(days=DAYS)
CHECKS: Final[list[tuple[str, Check]]] = [
    ("apps", check_apps),
    ("errors, newest first", check_errors_newest),
    ("errors, llm 504 over 30 d", check_errors_filtered),
    ("errors/summary 30 d, from an hour", check_summary(lambda n: _hour(n) - _MONTH)),
    ("errors/summary 30 d, from an odd second", check_summary(lambda n: _odd(n) - _MONTH)),
    (
        "latency 30 d x 1 h, from an hour",
        check_latency(lambda n: _hour(n) - _MONTH + 300 * HOUR, HOUR),
    ),
    (
        "latency 30 d x 1 h, from an odd second",
        check_latency(lambda n: _odd(n) - _MONTH + 200 * HOUR, HOUR),
    ),
    (
        "latency 30 d x 1 d, from midnight",
        check_latency(lambda n: n.replace(hour=0, minute=0, second=0) - 20 * DAY, DAY),
    ),
    ("latency 30 d x 1 d, from an odd second", check_latency(lambda n: _odd(n) - 12 * DAY, DAY)),
    (
        "latency 30 d x 1 h, from an hour, label.tenant",
        check_latency(lambda n: _hour(n) - _MONTH + 400 * HOUR, HOUR, tenant=TENANTS[3]),
    ),
    (
        "usage 30 d x 1 d, from midnight",
        check_usage(
            lambda n: n.replace(hour=0, minute=0, second=0) - 15 * DAY, DAY, by_tenant=False
        ),
    ),
    (
        "usage 30 d x 1 d, from midnight, by tenant",
        check_usage(
            lambda n: n.replace(hour=0, minute=0, second=0) - 15 * DAY, DAY, by_tenant=True
        ),
    ),
    (
        "usage 30 d x 1 h, from an odd second",
        check_usage(lambda n: _odd(n) - _MONTH + 200 * HOUR, HOUR, by_tenant=False),
    ),
    (
        "usage 30 d x 1 h, from an odd second, by tenant",
        check_usage(lambda n: _odd(n) - _MONTH + 500 * HOUR, HOUR, by_tenant=True),
    ),
    (
        "usage 30 d x 1 d, from an odd second, by tenant",
        check_usage(lambda n: _odd(n) - 10 * DAY, DAY, by_tenant=True),
    ),
    ("timeline of a FAILED agent with errors", check_timeline),
    ("agents, newest first (today's filters)", check_agents("true", lambda n: {})),
    ("agents, name", check_agents("name = %(name)s", lambda n: {"name": NAMES[0]})),
    (
        "agents, has_errors=true",
        check_agents(
            "EXISTS (SELECT FROM agent_error e WHERE e.app_id = a.app_id"
            " AND e.agent_id = a.agent_id)",
            lambda n: {},
        ),
    ),
    (
        "agents, has_errors=false",
        check_agents(
            "NOT EXISTS (SELECT FROM agent_error e WHERE e.app_id = a.app_id"
            " AND e.agent_id = a.agent_id)",
            lambda n: {},
        ),
    ),
    (
        "agents, stopped_since 24 h ago",
        check_agents("stopped_at >= %(since)s", lambda n: {"since": n - DAY}),
    ),
]
