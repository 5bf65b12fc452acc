"""Turn latency (CONTRACT §6.1) from the database against percentiles computed here by sorting,
through the webhook write path and the worker's `/turns` store, folded and not."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service import batcher, db, erasure, events, ingest, latency, repositories
from tests.factories import APP_ID, Sql, deliver, payload, poll, reader_headers
from tests.integration.test_pcu import fold_all, run
from tests.simulation import Ledger, ledger

T = TypeVar("T")
BASE = datetime(2025, 7, 1, tzinfo=UTC)  # a UTC midnight
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Turn:
    agent_id: str
    turn_id: int
    end_at: datetime | None
    e2e: int | None
    stages: Mapping[str, int] = field(default_factory=dict)

    def as_112(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"segmented_latency_ms": dict(self.stages)}
        if self.e2e is not None:
            metrics["e2e_latency_ms"] = self.e2e
        end = {} if self.end_at is None else {"end_at": int(self.end_at.timestamp() * 1000)}
        return {"turn_id": self.turn_id, "end": end, "metrics": metrics}

    def as_rest(self) -> dict[str, Any]:
        """As `GET …/turns` lists it: the stages as [{name, latency}]."""
        item = self.as_112()
        stages = [{"name": k, "latency": v} for k, v in self.stages.items()]
        return {**item, "metrics": {**item["metrics"], "segmented_latency_ms": stages}}


def nearest_rank(values: Sequence[int], p: Fraction) -> int | None:
    """The smallest value with at least a share `p` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered)) - 1]


def expected(
    turns: Sequence[Turn], start: datetime, end: datetime, step_s: int
) -> list[dict[str, Any]]:
    step = timedelta(seconds=step_s)
    points = []
    at = start
    while at < end:
        inside = [t for t in turns if t.end_at is not None and at <= t.end_at < min(at + step, end)]
        e2e = [t.e2e for t in inside if t.e2e is not None]
        segments = {}
        for stage in events.STAGES:
            values = [t.stages[stage] for t in inside if stage in t.stages]
            segments[stage] = {
                "p50": nearest_rank(values, Fraction(1, 2)),
                "p90": nearest_rank(values, Fraction(9, 10)),
            }
        points.append(
            {
                "at": at.isoformat().replace("+00:00", "Z"),
                "turns": len(inside),
                "e2e_ms": {
                    "p50": nearest_rank(e2e, Fraction(1, 2)),
                    "p90": nearest_rank(e2e, Fraction(9, 10)),
                    "p99": nearest_rank(e2e, Fraction(99, 100)),
                    "max": max(e2e, default=None),
                },
                "segments": segments,
            }
        )
        at += step
    return points


def random_turns(rng: random.Random, agent_id: str, count: int, *, span: timedelta) -> list[Turn]:
    out = []
    for turn_id in range(1, count + 1):
        stages = {
            stage: rng.choice([rng.randint(50, 900), rng.randint(50, 60)])
            for stage in events.STAGES
            if rng.random() < 0.8
        }
        end_at = BASE + timedelta(seconds=rng.randrange(int(span.total_seconds())))
        if rng.random() < 0.1:  # on an hour boundary
            end_at = end_at.replace(minute=0, second=0)
        out.append(
            Turn(
                agent_id=agent_id,
                turn_id=turn_id,
                end_at=None if rng.random() < 0.03 else end_at,
                e2e=None if rng.random() < 0.05 else rng.randint(300, 3000),
                stages=stages,
            )
        )
    return out


async def send_112(
    engine: AsyncEngine,
    agent_turns: Mapping[str, Sequence[Turn]],
    *,
    labels: Mapping[str, Mapping[str, Any]] | None = None,
    notify_ms: int | None = None,
) -> None:
    """Each agent's turns as one 112, through the webhook write path (group commit), with its
    `labels` (default `tier` = its id) at `notify_ms` (default now)."""
    group = batcher.Batcher(engine.url.render_as_string(hide_password=False), writers=1)
    await group.start()
    try:
        for agent_id, turns in agent_turns.items():
            tags = {"tier": agent_id} if labels is None else labels[agent_id]
            body = payload(agent_id, turns=[t.as_112() for t in turns], labels=tags)
            note = events.parse(deliver(112, body, notify_ms=notify_ms).body)
            delivery = ingest.Delivery(app_id=APP_ID, note=note, received_at=datetime.now(UTC))
            await group.submit(delivery)
    finally:
        await group.close()


async def store_rest(engine: AsyncEngine, agent_id: str, turns: Sequence[Turn]) -> int:
    """The turns as the history worker stores what `GET …/turns` answered; answers how many
    were new."""
    parsed = [events.parse_turn(t.as_rest(), f"turns[{i}]") for i, t in enumerate(turns)]
    async with engine.begin() as conn:
        stored = await repositories.upsert_turns(
            conn, app_id=APP_ID, agent_id=agent_id, turns=parsed, source="api"
        )
    return len(stored)


async def read(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    step_s: int,
    labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return await latency.series(
            conn, app_id=APP_ID, start=start, end=end, step_s=step_s, labels=labels or {}
        )


# (start offset, length, step): aligned hours and days (the rollup), unaligned starts, other
# steps, a cut last bucket.
WINDOWS = [
    (timedelta(0), timedelta(days=3), 3600),
    (timedelta(0), timedelta(days=3), 86_400),
    (-timedelta(days=1), timedelta(days=5), 86_400),
    (timedelta(hours=5), timedelta(hours=30, minutes=30), 3600),
    (timedelta(minutes=17, seconds=3), timedelta(days=2), 3600),
    (timedelta(hours=2), timedelta(days=2, hours=7), 86_400),
    (timedelta(0), timedelta(days=3), 900),
    (timedelta(seconds=1), timedelta(days=3), 7 * 3600),
]


def check_all(engine: AsyncEngine, turns: Sequence[Turn]) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        for offset, length, step_s in WINDOWS:
            start = BASE + offset
            got = await read(engine, start, start + length, step_s)
            assert got == expected(turns, start, start + length, step_s), (offset, step_s)

    return check


def test_figures_are_nearest_rank_folded_or_not(database_url: str, sql: Sql) -> None:
    rng = random.Random(7)
    agents = {
        f"agent-{i}": random_turns(rng, f"agent-{i}", 150, span=timedelta(days=3)) for i in range(4)
    }
    everything = [t for turns in agents.values() for t in turns]

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, agents)
        assert sql.value("SELECT count(*) FROM insight_change WHERE kind = 'latency'") > 0
        await check_all(engine, everything)()  # nothing folded yet
        await fold_all(engine)
        assert sql.value("SELECT count(*) FROM insight_change WHERE kind = 'latency'") == 0
        assert sql.value("SELECT count(*) FROM latency_bucket WHERE width = 86400") == 3
        await check_all(engine, everything)()  # all from the rollup where it can
        # ... which it does: a rollup row is what an aligned hourly read answers.
        sql.execute(
            "UPDATE latency_bucket SET turns = 12345 WHERE width = 3600 AND at = %(at)s", at=BASE
        )
        hourly = await read(engine, BASE, BASE + timedelta(days=1), 3600)
        assert hourly[0]["turns"] == 12345

    run(sql.url, work)


def test_buckets_that_cut_hours_take_each_hours_turns_from_its_row(
    database_url: str, sql: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A series whose buckets cut hours reads the folded hours' turns from their rows, exact at
    any instant: ties on a bucket's edge, a figure at either end of int4, turns lacking
    figures; a row that does not hold all its hour's turns is computed from the turns."""
    rng = random.Random(11)
    odd = BASE + timedelta(hours=1, minutes=20, seconds=37)
    step = timedelta(minutes=25)
    on_edges = [
        Turn("edges", i, odd + (i % 9) * step + (i % 3 - 1) * timedelta(milliseconds=1), e2e)
        for i, e2e in enumerate([-(2**31), 2**31 - 1, 0, 7, None, 7, 3] * 4, start=1)
    ]
    ties = [
        Turn("ties", i, odd + step, rng.choice([None, 40, 41]), {"tts_ttfb": 2**31 - 1 - i % 2})
        for i in range(1, 30)
    ]
    # The only turn of its hour, on a bucket's edge: that hour is held for the next bucket.
    alone = [Turn("alone", 1, BASE + timedelta(hours=7, minutes=30), 5, {"asr_ttlw": 6})]
    agents = {
        "edges": on_edges,
        "ties": ties,
        "alone": alone,
        **{
            f"agent-{i}": random_turns(rng, f"agent-{i}", 120, span=timedelta(hours=6))
            for i in range(3)
        },
    }
    everything = [t for turns in agents.values() for t in turns]
    windows = [
        (odd, odd + timedelta(hours=4), 1500),
        (odd, odd + timedelta(hours=5, seconds=1), 3600),
        (BASE + timedelta(seconds=1), BASE + timedelta(hours=6), 86_400),
        (odd + timedelta(microseconds=999), odd + timedelta(hours=2), 60),
        (BASE + timedelta(hours=7, minutes=5), BASE + timedelta(hours=8), 1500),
    ]

    async def work(engine: AsyncEngine) -> None:
        async def answers() -> list[list[dict[str, Any]]]:
            return [await read(engine, start, end, s) for start, end, s in windows]

        await send_112(engine, agents)
        await fold_all(engine)
        whole = sql.value(
            "SELECT count(*) FROM (SELECT turns, by_turn, substring(by_turn FROM 1 FOR 2) AS head"
            f" FROM latency_bucket WHERE width = 3600) AS b WHERE {latency.PACKED_WHOLE}"
        )
        assert whole == 7
        truth = [expected(everything, start, end, s) for start, end, s in windows]
        assert await answers() == truth
        for hours_at_once in (1, 2):  # buckets completed across fetches, an edge on each
            monkeypatch.setattr(latency, "HOURS_AT_ONCE", hours_at_once)
            assert await answers() == truth
        # ... which it does: the second hour's row given the first's turns changes the answer.
        sql.execute(
            "UPDATE latency_bucket AS b SET by_turn = a.by_turn, turns = a.turns"
            " FROM latency_bucket AS a WHERE a.width = 3600 AND a.at = %(first)s"
            " AND b.width = 3600 AND b.at = %(second)s",
            first=BASE,
            second=BASE + HOUR,
        )
        assert await answers() != truth
        # A row holding fewer turns than its count, or none (folded by the previous release),
        # is computed from the turns.
        sql.execute(
            "UPDATE latency_bucket SET turns = turns + 1 WHERE width = 3600 AND at = %(at)s",
            at=BASE + HOUR,
        )
        assert await answers() == truth
        # A row in the previous format (25 bytes a turn; the previous release folds so during
        # a rollout) is computed from the turns too.
        sql.execute(
            "UPDATE latency_bucket AS b SET turns = p.turns, by_turn = p.by_turn FROM ("
            "  SELECT date_trunc('hour', t.end_at, 'UTC') AS at, count(*)::int AS turns,"
            "         string_agg(int8send((extract(epoch FROM t.end_at) * 1000000)::int8)"
            "                    || '\\x00'::bytea || int4send(coalesce(t.e2e_latency_ms, 0))"
            "                    || int4send(coalesce(t.asr_ttlw, 0))"
            "                    || int4send(coalesce(t.llm_ttft, 0))"
            "                    || int4send(coalesce(t.tts_ttfb, 0)), '' ORDER BY t.end_at)"
            "                    AS by_turn"
            "  FROM agent_turn AS t GROUP BY 1) AS p"
            " WHERE b.width = 3600 AND b.at = p.at"
        )
        assert await answers() == truth
        sql.execute("UPDATE latency_bucket SET by_turn = NULL, turns = 1 WHERE width = 3600")
        assert await answers() == truth

    run(sql.url, work)


def test_a_label_filter_takes_the_turns_of_the_agents_holding_it(
    database_url: str, sql: Sql
) -> None:
    rng = random.Random(11)
    agents = {
        name: random_turns(rng, name, 60, span=timedelta(days=1)) for name in ("gold", "free")
    }

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, agents)
        await fold_all(engine)
        end = BASE + timedelta(days=1)
        gold = await read(engine, BASE, end, 3600, {"tier": "gold"})
        assert gold == expected(agents["gold"], BASE, end, 3600)
        nobody = await read(engine, BASE, end, 3600, {"tier": "none"})
        assert nobody == expected([], BASE, end, 3600)
        assert all(p["turns"] == 0 and p["e2e_ms"]["p50"] is None for p in nobody)

    run(sql.url, work)


# Agents and their labels for the per-label tests: pairs shared, a pair alone, none at all, and
# values no `label.KEY=VALUE` can select (a number, a list, an object).
LABELLED: dict[str, dict[str, Any]] = {
    "gold-eu": {"tier": "gold", "region": "eu"},
    "gold-us": {"tier": "gold", "region": "us"},
    "free-eu": {"tier": "free", "region": "eu"},
    "eu-only": {"region": "eu"},
    "bare": {},
    "number": {"tier": 5, "region": "eu"},
    "listed": {"tier": ["gold"]},
    "nested": {"tier": {"gold": "gold"}},
}
# Filters asked: one pair (the per-label rollup), several pairs (from the turns), and pairs only
# a value of another type would seem to hold.
FILTERS: list[dict[str, str]] = [
    {"tier": "gold"},
    {"tier": "free"},
    {"region": "eu"},
    {"region": "us"},
    {"tier": "5"},
    {"tier": "silver"},
    {"tier": "gold", "region": "eu"},
    {"tier": "gold", "region": "nowhere"},
]
LABEL_WINDOWS = [
    (BASE, BASE + timedelta(days=2), 3600),
    (BASE, BASE + timedelta(days=2), 86_400),
    (BASE - timedelta(days=1), BASE + timedelta(days=3, hours=5), 86_400),  # a cut last day
    (BASE + timedelta(hours=7), BASE + timedelta(hours=31, minutes=20), 3600),
    (BASE + timedelta(minutes=5), BASE + timedelta(days=1), 3600),  # an odd start
]


def holding(
    turns: Mapping[str, Sequence[Turn]], labels: Mapping[str, Mapping[str, Any]], wanted: Any
) -> list[Turn]:
    """The turns of the agents whose labels hold every pair of `wanted` (values compared as
    they are: the number 5 is not the string "5")."""
    return [
        t
        for agent_id, agent_turns in turns.items()
        if all(labels[agent_id].get(k) == v for k, v in wanted.items())
        for t in agent_turns
    ]


def check_labels(
    engine: AsyncEngine,
    turns: Mapping[str, Sequence[Turn]],
    labels: Mapping[str, Mapping[str, Any]],
) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        for wanted in FILTERS:
            chosen = holding(turns, labels, wanted)
            for start, end, step_s in LABEL_WINDOWS:
                got = await read(engine, start, end, step_s, wanted)
                assert got == expected(chosen, start, end, step_s), (wanted, start, step_s)

    return check


def test_one_label_pair_is_read_from_its_own_rollup_and_equals_the_turns(
    database_url: str, sql: Sql
) -> None:
    rng = random.Random(17)
    turns = {a: random_turns(rng, a, 40, span=timedelta(days=2)) for a in LABELLED}

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, turns, labels=LABELLED)
        check = check_labels(engine, turns, LABELLED)
        await check()  # nothing folded yet
        await fold_all(engine)
        assert sql.value("SELECT count(*) FROM insight_change") == 0
        # One row per bucket and string pair with turns; no row for other types of value.
        pairs = sql.rows("SELECT DISTINCT key, value FROM latency_label_bucket ORDER BY key, value")
        assert [(p["key"], p["value"]) for p in pairs] == [
            ("region", "eu"),
            ("region", "us"),
            ("tier", "free"),
            ("tier", "gold"),
        ]
        assert sql.value(
            "SELECT turns FROM latency_label_bucket"
            " WHERE width = 86400 AND key = 'region' AND value = 'eu' AND at = %(at)s",
            at=BASE,
        ) == len(
            [
                t
                for t in holding(turns, LABELLED, {"region": "eu"})
                if t.end_at is not None and BASE <= t.end_at < BASE + timedelta(days=1)
            ]
        )
        await check()  # folded
        # Late turns in one hour: that hour is marked (a day at most: its agents looked up).
        late = [
            Turn("gold-eu", 900 + i, BASE + 3 * HOUR + i * timedelta(minutes=3), 4000 + i)
            for i in range(9)
        ]
        await send_112(engine, {"gold-eu": late}, labels=LABELLED)
        more = {**turns, "gold-eu": [*turns["gold-eu"], *late]}
        check = check_labels(engine, more, LABELLED)
        await check()
        await fold_all(engine)
        await check()
        # ... and an aligned series with one pair answers the rollup's row.
        sql.execute(
            "UPDATE latency_label_bucket SET turns = 4242"
            " WHERE width = 3600 AND key = 'tier' AND value = 'gold' AND at = %(at)s",
            at=BASE + 5 * HOUR,
        )
        gold = await read(engine, BASE, BASE + timedelta(days=1), 3600, {"tier": "gold"})
        assert gold[5]["turns"] == 4242

    run(sql.url, work)


def test_a_label_change_moves_folded_turns_to_the_new_value(database_url: str, sql: Sql) -> None:
    rng = random.Random(23)
    turns = {a: random_turns(rng, a, 50, span=timedelta(days=2)) for a in ("mover", "stayer")}
    before = {"mover": {"tier": "gold"}, "stayer": {"tier": "gold"}}
    earlier_ms = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, turns, labels=before, notify_ms=earlier_ms)
        await fold_all(engine)
        buckets = sql.value("SELECT count(*) FROM latency_bucket")
        check = check_labels(engine, turns, before)
        await check()
        # The mover is relabelled (a later event, no turns): every hour holding its turns is
        # marked for the per-label rollup only, in the same transaction.
        after = {"mover": {"tier": "silver"}, "stayer": before["stayer"]}
        await send_112(engine, {"mover": []}, labels=after)
        hours = {
            t.end_at.replace(minute=0, second=0, microsecond=0)
            for t in turns["mover"]
            if t.end_at is not None
        }
        marks = sql.rows("SELECT kind, hour FROM insight_change")
        assert {m["kind"] for m in marks} == {"latency_label"}
        assert {m["hour"] for m in marks} == hours
        check = check_labels(engine, turns, after)
        await check()  # marked: gold loses the mover's turns, silver gains them
        silver = await read(engine, BASE, BASE + timedelta(days=2), 86_400, {"tier": "silver"})
        assert sum(p["turns"] for p in silver) == len([t for t in turns["mover"] if t.end_at])
        await fold_all(engine)
        assert sql.value("SELECT count(*) FROM insight_change") == 0
        await check()  # folded
        assert sql.value("SELECT count(*) FROM latency_bucket") == buckets
        # A value no filter selects takes the mover out of every pair's rows.
        gone = {"mover": {"tier": 7}, "stayer": before["stayer"]}
        await send_112(engine, {"mover": []}, labels=gone)
        await fold_all(engine)
        assert sql.value("SELECT count(*) FROM latency_label_bucket WHERE value = 'silver'") == 0
        await check_labels(engine, turns, gone)()

    run(sql.url, work)


def test_labels_that_change_no_pair_mark_nothing(database_url: str, sql: Sql) -> None:
    turns = {"a": [Turn("a", 1, BASE + timedelta(minutes=5), 1000)]}
    earlier_ms = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, turns, labels={"a": {"tier": "gold"}}, notify_ms=earlier_ms)
        await fold_all(engine)
        # The same value again, later (a new version of the label), and a new key whose value
        # no filter selects: no pair changes.
        await send_112(engine, {"a": []}, labels={"a": {"tier": "gold", "seats": 3}})
        assert sql.value("SELECT count(*) FROM insight_change") == 0
        # A label change of an agent without turns marks no hour either.
        await send_112(engine, {"b": []}, labels={"b": {"tier": "gold"}}, notify_ms=earlier_ms)
        await send_112(engine, {"b": []}, labels={"b": {"tier": "free"}})
        assert sql.value("SELECT count(*) FROM insight_change") == 0

    run(sql.url, work)


def test_erasure_takes_an_agents_turns_out_of_its_pairs(database_url: str, sql: Sql) -> None:
    rng = random.Random(29)
    turns = {a: random_turns(rng, a, 40, span=timedelta(days=2)) for a in LABELLED}

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, turns, labels=LABELLED)
        await fold_all(engine)
        await erasure.erase_agent(engine, app_id=APP_ID, agent_id="gold-eu", who="test")
        left = {**turns, "gold-eu": []}
        await check_labels(engine, left, LABELLED)()  # marked
        await fold_all(engine)
        await check_labels(engine, left, LABELLED)()  # folded
        await erasure.erase_by_label(engine, app_id=APP_ID, key="region", value="eu", who="test")
        left = {a: [] if LABELLED[a].get("region") == "eu" else t for a, t in turns.items()}
        await fold_all(engine)
        await check_labels(engine, left, LABELLED)()
        assert sql.value("SELECT count(*) FROM latency_label_bucket WHERE value = 'eu'") == 0

    run(sql.url, work)


def test_a_label_change_committed_during_a_fold_survives_it(database_url: str, sql: Sql) -> None:
    """The fold's snapshot does not see a label change committed while it runs, nor its marks:
    they stay, and the hour is folded again with the new labels."""
    turns = {"a": [Turn("a", 1, BASE + timedelta(minutes=5), 1000)]}
    earlier_ms = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, turns, labels={"a": {"tier": "gold"}}, notify_ms=earlier_ms)
        url = engine.url.render_as_string(hide_password=False)
        async with await db.connect(url, name="test-folder") as conn:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await conn.execute("SELECT count(*) FROM agent")  # the snapshot is taken now
            await send_112(engine, {"a": []}, labels={"a": {"tier": "free"}})
            await conn.execute(latency.FOLD_SQL, {"app": APP_ID})
            await conn.execute("COMMIT")
        assert sql.rows("SELECT kind FROM insight_change") == [{"kind": "latency_label"}]
        assert sql.value("SELECT value FROM latency_label_bucket WHERE width = 3600") == "gold"
        end = BASE + HOUR
        for tier, want in (("gold", []), ("free", turns["a"])):
            got = await read(engine, BASE, end, 3600, {"tier": tier})
            assert got == expected(want, BASE, end, 3600)
        await fold_all(engine)
        assert sql.value("SELECT value FROM latency_label_bucket WHERE width = 3600") == "free"

    run(sql.url, work)


def test_turns_from_112_and_from_the_turns_api_are_counted_once(
    database_url: str, sql: Sql
) -> None:
    rng = random.Random(3)
    both = random_turns(rng, "both", 40, span=timedelta(hours=6))
    api_only = random_turns(rng, "api-only", 30, span=timedelta(hours=6))

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, {"both": both, "api-only": []})
        assert await store_rest(engine, "both", both) == 0  # already stored from the 112
        assert await store_rest(engine, "api-only", api_only) == len(api_only)
        await send_112(engine, {"both": both[:10]})  # a redelivered 112 (new noticeId)
        end = BASE + timedelta(hours=6)
        for step_s in (3600, 1800):
            assert await read(engine, BASE, end, step_s) == expected(
                both + api_only, BASE, end, step_s
            )
        await fold_all(engine)
        assert await read(engine, BASE, end, 3600) == expected(both + api_only, BASE, end, 3600)
        assert sql.value("SELECT count(*) FROM agent_turn") == len(both) + len(api_only)

    run(sql.url, work)


def test_late_turns_change_an_earlier_answer_before_and_after_a_fold(
    database_url: str, sql: Sql
) -> None:
    rng = random.Random(5)
    first = random_turns(rng, "first", 80, span=timedelta(days=2))
    late = [
        Turn("late", i, BASE + timedelta(hours=3, minutes=i), 5000 + i, {"asr_ttlw": 9})
        for i in range(1, 20)
    ]
    odd = BASE + timedelta(minutes=17, seconds=3)
    windows = [
        (BASE, BASE + timedelta(days=2), 3600),
        (BASE, BASE + timedelta(days=2), 86_400),
        (odd, odd + timedelta(days=2), 3600),  # every hour cut, from its own turns' rows
        (odd, odd + timedelta(hours=30), 1800),
    ]

    async def work(engine: AsyncEngine) -> None:
        async def answers() -> list[list[dict[str, Any]]]:
            return [await read(engine, s, e, step) for s, e, step in windows]

        await send_112(engine, {"first": first})
        await fold_all(engine)
        before = await answers()
        assert before == [expected(first, s, e, step) for s, e, step in windows]
        await send_112(engine, {"late": late})  # marked, not folded
        unfolded = await answers()
        assert unfolded == [expected(first + late, s, e, step) for s, e, step in windows]
        assert unfolded != before
        await fold_all(engine)
        assert await answers() == unfolded
        # Erasing an agent's turns changes the answer back, folded or not.
        await erasure.erase_agent(engine, app_id=APP_ID, agent_id="late", who="test")
        assert await answers() == before
        await fold_all(engine)
        assert await answers() == before
        assert sql.value("SELECT count(*) FROM insight_change") == 0

    run(sql.url, work)


def test_today_is_folded_hour_by_hour_and_its_day_once_it_has_ended(
    database_url: str, sql: Sql
) -> None:
    """The current hour and day change with every turn: the folder folds today's hours that have
    ended, leaves the day marked on its last hour (reads compute it from the turns), and the
    answers are the turns' throughout."""
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    hour = now.replace(minute=0, second=0, microsecond=0)
    ended = [
        Turn("today", i, today + timedelta(minutes=7 * i), 900 + i, {"llm_ttft": i})
        for i in range(1, 1 + min(60, int((hour - today) / timedelta(minutes=7))))
    ]
    current = [Turn("today", 500 + i, hour + timedelta(seconds=i), 2000 + i) for i in range(3)]
    turns = ended + current
    windows = [(today, today + timedelta(days=1), 86_400), (today, hour + HOUR, 3600)]

    async def work(engine: AsyncEngine) -> None:
        async def answers() -> list[list[dict[str, Any]]]:
            return [await read(engine, s, e, step) for s, e, step in windows]

        want = [expected(turns, s, e, step) for s, e, step in windows]
        await send_112(engine, {"today": turns})
        assert await answers() == want
        await fold_all(engine)
        assert await answers() == want
        # Nothing of the current hour or of today as a day is in the rollup; a mark on today's
        # last hour keeps the day for when it has ended.
        assert (
            sql.value(
                "SELECT count(*) FROM latency_bucket WHERE width = 86400 OR at >= %(hour)s",
                hour=hour,
            )
            == 0
        )
        last = today + timedelta(hours=23)
        marks = {row["hour"] for row in sql.rows("SELECT DISTINCT hour FROM insight_change")}
        assert hour in marks
        assert marks <= {hour, last}
        assert (last in marks) == bool(ended)

    run(sql.url, work)


def test_a_mark_committed_during_a_fold_survives_it(database_url: str, sql: Sql) -> None:
    """The fold's one statement takes only the marks its snapshot sees: a turn committed while
    it runs keeps its mark, so the hour is folded again and reads stay exact meanwhile."""
    turns = [Turn("a", 1, BASE + timedelta(minutes=5), 1000)]
    extra = Turn("a", 2, BASE + timedelta(minutes=6), 9000)

    async def work(engine: AsyncEngine) -> None:
        await send_112(engine, {"a": turns})
        url = engine.url.render_as_string(hide_password=False)
        async with await db.connect(url, name="test-folder") as conn:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await conn.execute("SELECT count(*) FROM agent_turn")  # the snapshot is taken now
            await store_rest(engine, "a", [extra])  # committed after that snapshot
            row = await (await conn.execute(latency.FOLD_SQL, {"app": APP_ID})).fetchone()
            await conn.execute("COMMIT")
        assert row is not None and row[0] == 1  # only the mark it could see
        assert sql.value("SELECT count(*) FROM insight_change") == 1
        end = BASE + HOUR
        assert await read(engine, BASE, end, 3600) == expected([*turns, extra], BASE, end, 3600)
        await fold_all(engine)
        assert sql.value("SELECT turns FROM latency_bucket WHERE width = 3600") == 2
        assert await read(engine, BASE, end, 3600) == expected([*turns, extra], BASE, end, 3600)

    run(sql.url, work)


def sim_turns(run: Ledger, agent_id: str) -> list[Turn]:
    """The turns the simulator holds for the agent (112's form), as the test's own values."""
    out = []
    for item in run.sim.backend.agents[agent_id].turns:
        metrics = item["metrics"]
        out.append(
            Turn(
                agent_id=agent_id,
                turn_id=item["turn_id"],
                end_at=datetime.fromtimestamp(item["end"]["end_at"] / 1000, tz=UTC),
                e2e=metrics["e2e_latency_ms"],
                stages=dict(metrics["segmented_latency_ms"]),
            )
        )
    return out


@pytest.mark.slow
def test_turns_from_the_simulator_by_112_and_by_the_turns_api_are_counted_once(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(database_url, tmp_path) as run:
        both = run.start("both", turns=6)  # 112 and /turns carry the same turns
        api_only = run.start("api-only", turns=5)  # no 112: /turns only
        run.stop(both, notify=[102, 112])
        run.stop(api_only, notify=[102])
        run.delivered()
        for agent_id in (both, api_only):
            poll(
                lambda a=agent_id: (
                    sql.value(  # type: ignore[misc]
                        "SELECT turns_call FROM history_job WHERE agent_id = %(a)s", a=a
                    )
                    == "ok"
                )
            )
        turns = sim_turns(run, both) + sim_turns(run, api_only)
        assert sql.value("SELECT count(*) FROM agent_turn") == len(turns) == 11
        ends = [t.end_at for t in turns if t.end_at is not None]
        start = min(ends).replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=2)
        want = {3600: expected(turns, start, end, 3600), 60: expected(turns, start, end, 60)}

        def answer(step_s: int) -> Any:
            query = {"from": start.isoformat(), "to": end.isoformat(), "step": step_s}
            response = httpx.get(
                f"{run.service.url}/v1/apps/{APP_ID}/latency",
                params=query,
                headers=reader_headers(),
                timeout=5,
            )
            assert response.status_code == 200, response.text
            return response.json()["points"]

        assert {step: answer(step) for step in want} == want
        # The service's folder folds the marks of hours that have ended; the current hour and
        # day (these turns') stay marked and are read from the turns. The answer is the same.
        ended = "SELECT count(*) FROM insight_change WHERE hour < date_trunc('hour', now(), 'UTC')"
        poll(lambda: sql.value(ended) == 0)
        today = "SELECT count(*) FROM latency_bucket WHERE width = 86400 AND at >= date_trunc('day', now(), 'UTC')"
        assert sql.value(today) == 0
        assert {step: answer(step) for step in want} == want


def test_percentile_disc_is_the_nearest_rank_for_every_count(sql: Sql) -> None:
    """PostgreSQL's `percentile_disc` takes rank ceil(p * n) in doubles; nearest rank is exact."""
    rows = sql.rows(
        "SELECT n, percentile_disc('{0.5,0.9,0.99,1}'::float8[]) WITHIN GROUP (ORDER BY v) AS p"
        " FROM generate_series(1, 1500) AS n, generate_series(n, 1, -1) AS v GROUP BY n"
    )
    assert len(rows) == 1500
    for row in rows:
        n = row["n"]
        values = list(range(1, n + 1))
        want = [nearest_rank(values, Fraction(k, 100)) for k in (50, 90, 99, 100)]
        assert row["p"] == want, n
