"""A month of one big app for the insight benchmark: its agents, their transitions, turns and
errors, written with COPY, then the rollup marks the write path would have left for them.

One app (`APP`) holds every session: the per-app reads (usage, latency, the error summary) then
face the whole month at once, their worst case. Sessions start uniformly over `DAYS` days and
last a few minutes (log-normal, median 2.5 min; 2 % last 10 min to 3 h); those not over by `now`
are still RUNNING. Labels: `tenant` one of 20 (absent on ~8 %), `region` one of 3. About 5 turns
per finished session (`source` webhook, as from a 112), each ending inside it, with its e2e latency
and the stages asr_ttlw / llm_ttft / tts_ttfb; ~10 % of sessions report 1 to 3 errors from a small
set of module/code pairs, and ~2 % of those finished end FAILED (each with errors). Start and stop
times are whole seconds (Agora's `start_ts`/`stop_ts`), turn times milliseconds. Everything comes
from fixed seeds: the same `count` and `now` give the same rows.

Nothing here decides a figure the benchmark checks: the checks compute theirs from the rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import psycopg

from benchmarks import common

APP: Final = "bench-app"
DAYS: Final = 30
NAMES: Final = ("support-bot", "sales-assistant", "booking-agent", "triage")
TENANTS: Final = tuple(f"tenant-{i:02d}" for i in range(20))
REGIONS: Final = ("eu", "us", "ap")
# (module, code, message, weight): what a voice agent's vendors mostly answer when they fail.
ERRORS: Final = (
    ("llm", 504, "upstream timeout", 30),
    ("llm", 429, "rate limited by vendor", 20),
    ("tts", 429, "vendor rate limited", 15),
    ("asr", 1003, "audio stream interrupted", 15),
    ("tts", 500, "synthesis failed", 10),
    ("llm", 401, "invalid api key", 5),
    ("rtc", 2001, "channel connection lost", 5),
)
FAILED_MESSAGES: Final = ("LLM vendor unavailable", "TTS vendor unavailable", "ASR failed")
_ERROR_WEIGHTS: Final = [weight for *_, weight in ERRORS]


@dataclass(frozen=True, slots=True)
class Session:
    index: int
    begin: int  # s since the epoch
    end: int | None  # None: still running at `now`
    failed: bool
    labels: str  # the agent's labels as JSON text
    name: str
    turns: int  # finished sessions only
    errors: int

    @property
    def agent_id(self) -> str:
        return f"agent-{self.index:07d}"


def sessions(count: int, *, now: datetime) -> Iterator[Session]:
    """The month's sessions, in index order (a fixed seed: every pass sees the same ones)."""
    rng = random.Random(42)
    end_s = int(now.timestamp())
    span = DAYS * 86_400
    labels = _label_sets()
    for index in range(count):
        begin = end_s - span + rng.randrange(span)
        if rng.random() < 0.02:
            length = rng.randrange(600, 3 * 3600)
        else:
            length = max(5, min(7200, int(rng.lognormvariate(5.0, 0.8))))  # median 150 s
        end = begin + length if begin + length <= end_s else None
        failed = end is not None and rng.random() < 0.02
        has_errors = failed or rng.random() < 0.085
        yield Session(
            index=index,
            begin=begin,
            end=end,
            failed=failed,
            labels=labels[rng.randrange(len(labels))],
            name=NAMES[rng.randrange(len(NAMES))],
            turns=0 if end is None else max(1, min(12, round(rng.gauss(5, 2)))),
            errors=rng.choices((1, 2, 3), weights=(6, 3, 1))[0] if has_errors else 0,
        )


def _label_sets() -> list[str]:
    """Every tenant in every region, and ~8 % of sessions without a tenant (weighted by copies)."""
    with_tenant = [json.dumps({"tenant": t, "region": r}) for t in TENANTS for r in REGIONS]
    return with_tenant + [json.dumps({"region": r}) for r in REGIONS] * 2


class Stamps:
    """timestamptz text for COPY, fast: the hour's prefix is formatted once."""

    def __init__(self) -> None:
        self._hours: dict[int, str] = {}

    def _prefix(self, hour: int) -> str:
        prefix = self._hours.get(hour)
        if prefix is None:
            prefix = datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:")
            self._hours[hour] = prefix
        return prefix

    def s(self, seconds: int) -> str:
        hour, rest = divmod(seconds, 3600)
        return f"{self._prefix(hour)}{rest // 60:02d}:{rest % 60:02d}+00"

    def ms(self, millis: int) -> str:
        seconds, fraction = divmod(millis, 1000)
        hour, rest = divmod(seconds, 3600)
        return f"{self._prefix(hour)}{rest // 60:02d}:{rest % 60:02d}.{fraction:03d}+00"


AGENT_COLUMNS: Final = (
    "agent_id, app_id, name, name_at, channel, channel_at, labels, state, state_at, started_at,"
    " stopped_at, stop_status, stop_message, active_from, active_until, last_event_at,"
    " first_seen_at"
)
TRANSITION_COLUMNS: Final = (
    "app_id, agent_id, from_state, to_state, cause, source, notice_id, event_at, received_at"
)
TURN_COLUMNS: Final = (
    "app_id, agent_id, turn_id, start_at, end_at, start_type, end_type, e2e_latency_ms,"
    " asr_ttlw, llm_ttft, tts_ttfb, data, source"
)
ERROR_COLUMNS: Final = (
    "app_id, agent_id, notice_id, position, module, code, message, turn_id, event_at, received_at"
)


def load(url: str, count: int, *, now: datetime) -> dict[str, int]:
    """Write the month into the database at `url` (migrated, empty); answers rows per table.

    The agents go first and are committed; their transitions, turns and errors then stream into
    three COPYs at once, one connection each. Run by a superuser, those connections skip the
    foreign-key and statement triggers (`session_replication_role = replica`): every row names an
    agent just written, no history is erased, and checking 7 million rows one by one would
    double the load.
    """
    stamps = Stamps()
    with psycopg.connect(url) as conn:
        with common.copy_into(conn, "agent", AGENT_COLUMNS, fresh=True) as rows:
            for session in sessions(count, now=now):
                rows.write(_agent_row(session, stamps))
        conn.commit()
    counts = {"agent": count, "agent_transition": 0, "agent_turn": 0, "agent_error": 0}
    rng = random.Random(43)
    conns = [psycopg.connect(url) for _ in range(3)]
    try:
        for conn in conns:
            _skip_triggers(conn)
        with (
            common.copy_into(
                conns[0], "agent_transition", TRANSITION_COLUMNS, fresh=True
            ) as transitions,
            common.copy_into(conns[1], "agent_turn", TURN_COLUMNS, fresh=True) as turns,
            common.copy_into(conns[2], "agent_error", ERROR_COLUMNS, fresh=True) as errors,
        ):
            end_s = int(now.timestamp())
            for session in sessions(count, now=now):
                for row in _transition_rows(session, stamps):
                    transitions.write(row)
                    counts["agent_transition"] += 1
                for row in _turn_rows(session, stamps, rng):
                    turns.write(row)
                    counts["agent_turn"] += 1
                for row in _error_rows(session, stamps, rng, end_s=end_s):
                    errors.write(row)
                    counts["agent_error"] += 1
        for conn in conns:
            conn.commit()
    finally:
        for conn in conns:
            conn.close()
    return counts


def _skip_triggers(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row is not None and row[0]:
        conn.execute("SET session_replication_role = replica")


def _agent_row(session: Session, stamps: Stamps) -> tuple[str, ...]:
    null = common.NULL
    begin = stamps.s(session.begin)
    if session.end is None:
        state, stopped, status, message, until = "RUNNING", null, null, null, null
        last = begin
    else:
        state = status = "FAILED" if session.failed else "STOPPED"
        stopped = until = last = stamps.s(session.end)
        message = FAILED_MESSAGES[session.index % 3] if session.failed else "OK"
    return (
        session.agent_id,
        APP,
        session.name,
        begin,
        f"chan-{session.index}",
        begin,
        session.labels,
        state,
        last,
        begin,
        stopped,
        status,
        message,
        begin,
        until,
        last,
        begin,
    )


def _transition_rows(session: Session, stamps: Stamps) -> Iterator[tuple[str, ...]]:
    begin = stamps.s(session.begin)
    key = (APP, session.agent_id)
    yield (
        *key,
        "IDLE",
        "RUNNING",
        "agent_joined",
        "webhook",
        f"n{session.index}-101",
        begin,
        begin,
    )
    if session.end is not None:
        to, cause = ("FAILED", "agent_left_failed") if session.failed else ("STOPPED", "agent_left")
        at = stamps.s(session.end)
        yield (*key, "RUNNING", to, cause, "webhook", f"n{session.index}-102", at, at)


def _turn_rows(session: Session, stamps: Stamps, rng: random.Random) -> Iterator[tuple[str, ...]]:
    """Turns spread evenly over the session, each ending strictly inside it."""
    if session.end is None:
        return
    begin_ms, length_ms = session.begin * 1000, (session.end - session.begin) * 1000
    n = session.turns
    for turn in range(1, n + 1):
        end_ms = begin_ms + length_ms * (2 * turn - 1) // (2 * n)
        start_ms = max(begin_ms, end_ms - rng.randint(1500, 3500))
        asr, tts = rng.randint(250, 600), rng.randint(80, 250)
        llm = min(20_000, int(rng.lognormvariate(6.2, 0.45)))  # median ~490 ms, a long tail
        e2e = asr + llm + tts + rng.randint(110, 250)  # plus processing and transport
        start_type = "greeting" if turn == 1 else "voice_input"
        data = (
            f'{{"turn_id": {turn}, "start": {{"start_at": {start_ms}, "type": "{start_type}"}},'
            f' "end": {{"end_at": {end_ms}, "type": "ok"}}, "metrics": {{"e2e_latency_ms": {e2e},'
            f' "segmented_latency_ms": {{"asr_ttlw": {asr}, "llm_ttft": {llm},'
            f' "tts_ttfb": {tts}}}}}}}'
        )
        yield (
            APP,
            session.agent_id,
            str(turn),
            stamps.ms(start_ms),
            stamps.ms(end_ms),
            start_type,
            "ok",
            str(e2e),
            str(asr),
            str(llm),
            str(tts),
            data,
            "webhook",
        )


def _error_rows(
    session: Session, stamps: Stamps, rng: random.Random, *, end_s: int
) -> Iterator[tuple[str, ...]]:
    """Each error its own 110, at a second inside the session (up to `now` if it runs)."""
    last = (session.end if session.end is not None else end_s) - 1
    for position in range(session.errors):
        module, code, message, _ = rng.choices(ERRORS, weights=_ERROR_WEIGHTS)[0]
        at = stamps.s(rng.randint(session.begin, max(session.begin, last)))
        turn = str(rng.randint(1, session.turns)) if session.turns else common.NULL
        notice = f"n{session.index}-110-{position}"
        yield (APP, session.agent_id, notice, "0", module, str(code), message, turn, at, at)


# The marks the write path leaves for what it stores (as the insight migration marks the rows
# already there): usage for every hour an agent's active interval touches (a running agent's
# start hour) and a FAILED agent's stop hour, latency for every hour a turn ends in, errors for
# every hour holding a timed error.
MARKS_SQL: Final = """
    INSERT INTO insight_change (app_id, kind, hour)
    SELECT DISTINCT app_id, 'usage', h
    FROM agent,
         LATERAL generate_series(date_trunc('hour', active_from, 'UTC'),
                                 date_trunc('hour', coalesce(active_until, active_from), 'UTC'),
                                 interval '1 hour') AS h
    WHERE active_from IS NOT NULL
    UNION
    SELECT DISTINCT app_id, 'usage', date_trunc('hour', stopped_at, 'UTC')
    FROM agent WHERE state = 'FAILED' AND stopped_at IS NOT NULL
    UNION
    SELECT DISTINCT app_id, 'latency', date_trunc('hour', end_at, 'UTC')
    FROM agent_turn WHERE end_at IS NOT NULL
    UNION
    SELECT DISTINCT app_id, 'errors', date_trunc('hour', event_at, 'UTC')
    FROM agent_error WHERE event_at IS NOT NULL
"""
