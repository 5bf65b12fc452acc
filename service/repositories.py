"""Write-side statements (and the reads reconciliation decides on). Each takes the caller's
connection and never commits.

The write path (`ingest`) runs on psycopg directly, set-based: a group of notifications is read
in one statement and written in one, a part per table, its rows sent as arrays (`unnest`) or one
JSON array (`jsonb_array_elements`) whatever their number, so a statement's size never depends
on a payload's; the write's COMMIT goes in its round trip (psycopg's pipeline mode). The
worker's and reconciliation's own statements use the SQLAlchemy connection they hold
(`db.driver_connection` reaches the psycopg one beneath when they share the write path's).

Dedupe and serialisation are Postgres's job: notifications are stored with `INSERT … ON CONFLICT
DO NOTHING RETURNING`; agents are created and locked (`FOR UPDATE`) in key order, so two groups
touching the same agents take turns and never deadlock; an agent is `(app_id, agent_id)` in every
statement.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson
import psycopg
from psycopg.rows import dict_row
from sqlalchemy import RowMapping, and_, cast, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from service import db, error_hours, events, jobs, lifecycle, record
from service.record import AgentRow
from service.tables import agent, history

if TYPE_CHECKING:
    from service.ingest import Delivery, Plan

Source = Literal["webhook", "reconcile"]
Outcome = Literal["accepted", "ignored", "unapplied"]
Key = tuple[str, str]
Raw = psycopg.AsyncConnection[Any]

_NAMES: Final = ", ".join(record.COLUMNS)

# Rows travel as one JSON array parameter per statement, unpacked by the server
# (`json_to_recordset`): one C-speed `json.dumps` instead of a typed array per column.

# Store a group's new notifications (sorted, so that concurrent groups wait on each other's
# keys in one order): answers the (app_id, notice_id) of those not stored before.
_STORE: Final = """
    INSERT INTO notification (app_id, notice_id, product_id, event_type, agent_id, outcome,
                              problem, event_at, notify_ms, received_at, body, raw)
    SELECT a, n, p, t, g, o, q, e, m, r, b::jsonb, decode(x, 'base64')
    FROM json_to_recordset(%s::json)
        AS n(a text, n text, p int, t int, g text, o text, q text, e timestamptz, m bigint,
             r timestamptz, b text, x text)
    ON CONFLICT (app_id, notice_id) DO NOTHING
    RETURNING app_id, notice_id"""

# Create the agents we do not know, IDLE with their `pending` history, in key order. A key that
# another transaction is inserting makes this wait for it, so `_LOCK` then sees its row.
_CREATE: Final = """
    WITH created AS (
        INSERT INTO agent (app_id, agent_id, state)
        SELECT k->>0, k->>1, 'IDLE' FROM json_array_elements(%s::json) AS k
        ORDER BY 1, 2
        ON CONFLICT (app_id, agent_id) DO NOTHING
        RETURNING app_id, agent_id
    )
    INSERT INTO history (app_id, agent_id) SELECT app_id, agent_id FROM created
    ON CONFLICT (app_id, agent_id) DO NOTHING"""

# Lock every agent of the group, in key order, and read what the rules decide on.
_LOCK: Final = f"""
    SELECT {_NAMES} FROM agent
    WHERE (app_id, agent_id) IN (SELECT k->>0, k->>1 FROM json_array_elements(%s::json) AS k)
    ORDER BY app_id, agent_id
    FOR UPDATE"""


_TYPES: Final = {
    "name": "text", "name_at": "timestamptz", "channel": "text", "channel_at": "timestamptz",
    "labels": "jsonb", "label_versions": "jsonb", "state": "text", "state_at": "timestamptz",
    "started_at": "timestamptz", "stopped_at": "timestamptz", "stop_status": "text",
    "stop_message": "text", "active_from": "timestamptz", "active_until": "timestamptz",
    "warning": "text", "warning_at": "timestamptz", "last_event_at": "timestamptz",
}  # fmt: skip
_NULLS: Final = ", ".join(f"NULL::{_TYPES[c]} AS {c}" for c in record.COLUMNS[2:])

# The read floor in one statement: the new notifications stored (kind 'n', with app_id and
# notice_id), the unknown agents created (kind 'c') and the known ones locked (kind 'l'): only
# the agents of notifications stored now, and of those only the ones stored `accepted` (the
# others name no agent to apply to: `outcome_of`), so a repeated noticeId naming another agent
# leaves no agent behind that nothing was recorded for. A key twice is inserted once (the second
# does nothing) and locked once. Append
# runs its branches in order, so a group inserts its notifications, then its agents, then locks
# rows, each in key order: the same order as every other group, so none waits on another in a
# cycle. A key another group is inserting makes ours wait and then do nothing; that agent is then
# neither created nor visible to this statement's snapshot, and `lock_agents` takes it after.
_STORE_AND_LOCK: Final = f"""
    WITH stored AS (
        INSERT INTO notification (app_id, notice_id, product_id, event_type, agent_id, outcome,
                                  problem, event_at, notify_ms, received_at, body, raw)
        SELECT a, n, p, t, g, o, q, e, m, r, b::jsonb, decode(x, 'base64')
        FROM json_to_recordset(%(notes)s::json)
            AS n(a text, n text, p int, t int, g text, o text, q text, e timestamptz, m bigint,
                 r timestamptz, b text, x text)
        ON CONFLICT (app_id, notice_id) DO NOTHING
        RETURNING app_id, notice_id, agent_id, outcome
    ),
    wanted AS (
        SELECT app_id, agent_id FROM stored WHERE outcome = 'accepted' AND agent_id IS NOT NULL
    ),
    created AS (
        INSERT INTO agent (app_id, agent_id, state)
        SELECT app_id, agent_id, 'IDLE' FROM wanted ORDER BY 1, 2
        ON CONFLICT (app_id, agent_id) DO NOTHING
        RETURNING {_NAMES}
    ),
    history_row AS (
        INSERT INTO history (app_id, agent_id) SELECT app_id, agent_id FROM created
        ON CONFLICT (app_id, agent_id) DO NOTHING
    )
    SELECT 'n' AS kind, app_id, notice_id AS agent_id, {_NULLS} FROM stored
    UNION ALL
    SELECT 'c', {_NAMES} FROM created
    UNION ALL
    SELECT 'l', locked.* FROM (
        SELECT {_NAMES} FROM agent
        WHERE (app_id, agent_id) IN (SELECT app_id, agent_id FROM wanted)
        ORDER BY app_id, agent_id
        FOR UPDATE
    ) AS locked"""


def outcome_of(note: events.Notification) -> Outcome:
    """How a delivery is stored: `ignored` (not for us), `unapplied` (no usable agent) or
    `accepted`."""
    if note.ignored is not None:
        return "ignored"
    return "unapplied" if note.unusable is not None else "accepted"


def _notifications(
    deliveries: Sequence[Delivery], *, outcome: Outcome | None = None, problem: str | None = None
) -> str:
    """`_STORE`'s rows, in (app_id, noticeId) order."""
    rows = []
    for d in sorted(deliveries, key=lambda d: (d.app_id, d.note.notice_id)):
        n = d.note
        rows.append(
            {
                "a": d.app_id,
                "n": n.notice_id,
                "p": n.product_id,
                "t": n.event_type,
                "g": n.agent_id,
                "o": outcome or outcome_of(n),
                "q": problem or n.problem,
                "e": _iso(n.occurred_at),
                "m": n.notify_ms,
                "r": d.received_at.isoformat(),
                "b": n.json,
                "x": base64.b64encode(n.raw).decode() if n.raw is not None else None,
            }
        )
    return _json(rows)


def _json(value: Any) -> str:
    """JSON text for a statement parameter: orjson (several times faster than the stdlib's on
    these rows), or the stdlib's for what orjson refuses (an integer past 64 bits, kept as sent
    in free-form data)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False)


async def store_and_lock(
    conn: Raw, deliveries: Sequence[Delivery]
) -> tuple[set[tuple[str, str]], dict[Key, AgentRow]]:
    """Store the deliveries (unique noticeIds) and create and lock the agents of those stored
    now: one statement, one round trip (two when another group created one of the agents at the
    same moment). Answers the (app_id, noticeId) stored now and the locked rows."""
    params = {"notes": _notifications(deliveries)}
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(_STORE_AND_LOCK, params)
    stored: set[tuple[str, str]] = set()
    rows: dict[Key, AgentRow] = {}
    for row in await cursor.fetchall():
        if row.pop("kind") == "n":
            stored.add((row["app_id"], row["agent_id"]))
        else:
            found = _agent_row(row)
            rows[found.key] = found
    # The agents the statement was to lock: those of the deliveries stored now that name one.
    keys = sorted(
        {d.key for d in deliveries if d.key is not None and (d.app_id, d.note.notice_id) in stored}
    )
    missing = [key for key in keys if key not in rows]
    if missing:
        rows |= await lock_agents(conn, missing)
    return stored, rows


def _agent_row(row: dict[str, Any]) -> AgentRow:
    return AgentRow(**{**row, "state": lifecycle.State(row["state"])})


async def lock_agents(conn: Raw, keys: Sequence[Key]) -> dict[Key, AgentRow]:
    """Create the agents `keys` (sorted) we do not know, IDLE, and lock them all; their rows."""
    if not keys:
        return {}
    async with conn.pipeline():
        rows = await _create_and_lock(conn, keys)
    return await _rows(rows)


async def _create_and_lock(conn: Raw, keys: Sequence[Key]) -> psycopg.AsyncCursor[Any]:
    params = [_json(keys)]
    await conn.execute(_CREATE, params)
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(_LOCK, params)
    return cursor


async def _rows(cursor: psycopg.AsyncCursor[Any] | None) -> dict[Key, AgentRow]:
    if cursor is None:
        return {}
    out: dict[Key, AgentRow] = {}
    for row in await cursor.fetchall():
        found = _agent_row(row)
        out[found.key] = found
    return out


async def keep_unapplied(
    conn: Raw, *, delivery: Delivery, problem: str, raw: bytes | None = None
) -> bool:
    """Store a delivery that could not be applied, `unapplied` with `problem` (and `raw` as its
    exact bytes, when given); False if its noticeId was stored meanwhile."""
    if raw is not None:
        note = dataclasses.replace(delivery.note, json='{"unstorable": true}', raw=raw)
        delivery = dataclasses.replace(delivery, note=note)
    rows = _notifications([delivery], outcome="unapplied", problem=problem)
    return bool(await (await conn.execute(_STORE, [rows])).fetchall())


# The write floor: the whole group in ONE statement, a CTE per table it writes to, each fed one
# JSON array. Only the tables a group writes to are in its statement (a data-modifying CTE opens
# its table and indexes even for no rows); the few combinations that occur are each prepared once
# per connection. Every row it touches belongs to an agent the group holds locked, so it never
# waits on another group. Workers are woken once if a history job is new or due now (a 103).
_PARTS: Final = {
    "agents": """
        UPDATE agent AS a SET
            name = u.name, name_at = u.name_at, channel = u.channel,
            channel_at = u.channel_at, labels = u.labels, label_versions = u.label_versions,
            state = u.state, state_at = u.state_at, started_at = u.started_at,
            stopped_at = u.stopped_at, stop_status = u.stop_status,
            stop_message = u.stop_message, active_from = u.active_from,
            active_until = u.active_until, warning = u.warning, warning_at = u.warning_at,
            last_event_at = u.last_event_at, updated_at = now()
        FROM json_to_recordset(%(agents)s::json)
            AS u(app_id text, agent_id text, name text, name_at timestamptz, channel text,
                 channel_at timestamptz, labels jsonb, label_versions jsonb, state text,
                 state_at timestamptz, started_at timestamptz, stopped_at timestamptz,
                 stop_status text, stop_message text, active_from timestamptz,
                 active_until timestamptz, warning text, warning_at timestamptz,
                 last_event_at timestamptz)
        WHERE a.app_id = u.app_id AND a.agent_id = u.agent_id""",
    "transitions": """
        INSERT INTO agent_transition (app_id, agent_id, from_state, to_state, cause, source,
                                      notice_id, inferred, event_at, received_at)
        SELECT t->>0, t->>1, t->>2, t->>3, t->>4, t->>5, t->>6, (t->>7)::bool,
               (t->>8)::timestamptz, (t->>9)::timestamptz
        FROM jsonb_array_elements(%(transitions)s::jsonb) AS t""",
    "errors": """
        INSERT INTO agent_error (app_id, agent_id, notice_id, position, module, code, message,
                                 turn_id, event_at, received_at)
        SELECT e->>0, e->>1, e->>2, (e->>3)::int, e->>4, (e->>5)::bigint, e->>6, e->>7,
               (e->>8)::timestamptz, (e->>9)::timestamptz
        FROM jsonb_array_elements(%(errors)s::jsonb) AS e
        ON CONFLICT DO NOTHING
        RETURNING app_id, agent_id, module, code, event_at""",
    "metrics": """
        INSERT INTO agent_metric (app_id, agent_id, notice_id, position, turn_id, asr_ttlw,
                                  llm_ttfb, llm_ttfs, tts_ttfb, figures, event_at)
        SELECT m->>0, m->>1, m->>2, (m->>3)::int, m->>4, (m->5->>'asr_ttlw')::int,
               (m->5->>'llm_ttfb')::int, (m->5->>'llm_ttfs')::int,
               (m->5->>'tts_ttfb')::int, m->5, (m->>6)::timestamptz
        FROM jsonb_array_elements(%(metrics)s::jsonb) AS m
        ON CONFLICT DO NOTHING""",
    "call_states": """
        INSERT INTO call_state (app_id, agent_id, notice_id, direction, state, reported_at,
                                received_at)
        SELECT c->>0, c->>1, c->>2, c->>3, c->>4, (c->>5)::timestamptz, (c->>6)::timestamptz
        FROM jsonb_array_elements(%(call_states)s::jsonb) AS c
        ON CONFLICT DO NOTHING""",
    "transcripts": """
        UPDATE history AS h
        SET status = 'complete', source = 'webhook', contents = u->2,
            reason = NULL, transcript_at = now(), updated_at = now()
        FROM jsonb_array_elements(%(transcripts)s::jsonb) AS u
        WHERE h.app_id = u->>0 AND h.agent_id = u->>1
        RETURNING h.app_id, h.agent_id""",
    "due": """
        UPDATE history_job AS j SET due_at = now()
        FROM transcripts AS w
        WHERE j.app_id = w.app_id AND j.agent_id = w.agent_id
          AND j.status = 'queued' AND j.due_at > now()
        RETURNING j.agent_id""",
    "jobs": """
        INSERT INTO history_job (app_id, agent_id)
        SELECT k->>0, k->>1 FROM jsonb_array_elements(%(jobs)s::jsonb) AS k
        ON CONFLICT (app_id, agent_id) DO NOTHING
        RETURNING agent_id""",
    "pcu": """
        INSERT INTO pcu_change (app_id, at, delta, live)
        SELECT c->>0, (c->>1)::timestamptz, (c->>2)::int, (c->>3)::int
        FROM jsonb_array_elements(%(pcu)s::jsonb) AS c""",
    # Hours whose usage rollup the group changed (`usage.marks`), for the folder to recompute.
    "usage": """
        INSERT INTO insight_change (app_id, kind, hour)
        SELECT c->>0, 'usage', timestamptz 'epoch' + (c->>1)::bigint * interval '1 microsecond'
        FROM jsonb_array_elements(%(usage)s::jsonb) AS c""",
    # Hours holding turns of agents whose label pairs changed (`Plan.label_marks`), for the folder
    # to recompute their per-label latency (`latency`). The group holds these agents locked, as
    # every writer of their turns does, so no turn of theirs commits unseen by this statement.
    "label_marks": """
        INSERT INTO insight_change (app_id, kind, hour)
        SELECT DISTINCT t.app_id, 'latency_label', date_trunc('hour', t.end_at, 'UTC')
        FROM jsonb_array_elements(%(label_marks)s::jsonb) AS k
        JOIN agent_turn AS t ON t.app_id = k->>0 AND t.agent_id = k->>1
        WHERE t.end_at IS NOT NULL""",
    "unapplied": """
        UPDATE notification AS n SET outcome = 'unapplied', problem = u->>2
        FROM jsonb_array_elements(%(unapplied)s::jsonb) AS u
        WHERE n.app_id = u->>0 AND n.notice_id = u->>1""",
}
# `agent_turn` rows from one JSON array of `turn_rows()`; a turn already stored is kept. The new
# ones come back (`_TURN_FIGURES`) and mark their hours for the latency folder (`turn_marks`).
TURNS: Final = """
    INSERT INTO agent_turn (app_id, agent_id, turn_id, start_at, end_at, start_type, end_type,
                            e2e_latency_ms, data, source, asr_ttlw, llm_ttft, tts_ttfb)
    SELECT t->>0, t->>1, (t->>2)::int, (t->>3)::timestamptz, (t->>4)::timestamptz, t->>5, t->>6,
           (t->>7)::int, t->8, t->>9, (t->>10)::int, (t->>11)::int, (t->>12)::int
    FROM jsonb_array_elements(%(turns)s::jsonb) AS t
    ON CONFLICT DO NOTHING
    RETURNING app_id, agent_id, end_at, e2e_latency_ms, asr_ttlw, llm_ttft, tts_ttfb"""
_TURN_MARKS: Final = """
    INSERT INTO insight_change (app_id, kind, hour)
    SELECT DISTINCT app_id, 'latency', date_trunc('hour', end_at, 'UTC')
    FROM turns WHERE end_at IS NOT NULL"""
# Whether the history of the agent `{key}` names is erased or expired, as a probe of its key: as a
# join, the planner may read every history of those states instead (a scan of the whole table
# while it is small, for every group).
_GONE: Final = """
    coalesce((SELECT h.status IN ('erased', 'expired') FROM history AS h
              WHERE h.app_id = {key}), false)"""
# The new turns' figures as one JSON array (NULL for none), but those of an agent whose history
# is erased or expired: the statement trigger on `agent_turn` deletes those again.
_TURN_FIGURES: Final = f"""
    (SELECT json_agg(json_build_array(t.app_id, t.e2e_latency_ms, t.asr_ttlw, t.llm_ttft,
                                      t.tts_ttfb))
     FROM turns AS t
     WHERE NOT {_GONE.format(key="t.app_id AND h.agent_id = t.agent_id").strip()})"""
_PARTS["turns"] = TURNS
_PARTS["turn_marks"] = _TURN_MARKS
_PARTS["error_marks"] = error_hours.MARKS
# A 103's transcript or a 112's turns stored in this group for an agent whose history was erased
# (or expired) go again: the agent's row is ours now, so no erasure is under way.
_PARTS["stripped"] = f"""
        UPDATE notification AS n
        SET body = n.body #- CASE n.event_type WHEN 103 THEN '{{payload,contents}}'::text[]
                                                ELSE '{{payload,turns}}'::text[] END,
            raw = NULL
        FROM jsonb_array_elements(%(stripped)s::jsonb) AS s
        WHERE n.app_id = s->>0 AND n.notice_id = s->>1
          AND {_GONE.format(key="s->>0 AND h.agent_id = s->>2").strip()}"""
# What each part needs in the statement besides itself.
_NEEDS: Final = {"due": "transcripts", "turn_marks": "turns", "error_marks": "errors"}


@functools.cache
def write_statement(parts: frozenset[str]) -> str:
    """The write statement for a group that writes to `parts` (see `_PARTS`)."""
    names = [name for name in _PARTS if name in parts or _NEEDS.get(name) in parts]
    ctes = ",\n".join(f"    {name} AS (\n{_PARTS[name].strip(chr(10))}\n    )" for name in names)
    woken = [f"EXISTS (SELECT FROM {name})" for name in ("due", "jobs") if name in names]
    final = (
        f"SELECT pg_notify('{jobs.CHANNEL}', '') WHERE {' OR '.join(woken)}"
        if woken
        else "SELECT 1"
    )
    if "turns" in names:
        final = f"SELECT ({final}) IS NULL AS quiet, {_TURN_FIGURES.strip()} AS turns"
    return f"WITH\n{ctes}\n{final}"


async def write(conn: Raw, plan: Plan, *, commit: bool = False) -> list[StoredTurn]:
    """Write everything `plan` decided in one statement; with `commit`, the transaction's COMMIT
    goes in the same round trip. Answers the turns stored now (not those stored before)."""
    params = _write_params(plan)
    cursor = None
    async with conn.pipeline():
        if params:
            cursor = await conn.execute(write_statement(frozenset(params)), params)
        if commit:
            await conn.execute("COMMIT")
    if cursor is None or "turns" not in params:
        return []
    row = await cursor.fetchone()
    return _stored_turns(row[1] if row is not None else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredTurn:
    """A turn stored now, with its latency figures (ms; None where it reported none)."""

    app_id: str
    figures: Mapping[str, int | None]  # "e2e" and each of `events.STAGES`


def _stored_turns(rows: Sequence[Sequence[Any]] | None) -> list[StoredTurn]:
    return [
        StoredTurn(app_id=row[0], figures=dict(zip(("e2e", *events.STAGES), row[1:], strict=True)))
        for row in rows or ()
    ]


def _write_params(plan: Plan) -> dict[str, str]:
    """The JSON array of each table `plan` writes to (see `_PARTS`)."""
    changed = plan.changed()
    rows: dict[str, Sequence[Any]] = {
        "agents": [_agent(row) for row in changed],
        "transitions": plan.transitions,
        "errors": plan.errors,
        "metrics": plan.metrics,
        "turns": plan.turns,
        "call_states": plan.call_states,
        "transcripts": [(*key, t) for key, t in plan.transcripts.items()],
        "jobs": sorted(plan.jobs),
        "pcu": [(app, _iso(at), d, live) for app, at, d, live in plan.pcu_changes(changed)],
        "usage": plan.usage_marks(changed),
        "label_marks": plan.label_marks(changed),
        "unapplied": plan.unapplied,
        "stripped": plan.transcript_notices,
    }
    return {name: _json(values) for name, values in rows.items() if values}


def _agent(row: AgentRow) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in record.COLUMNS:
        value = getattr(row, name)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def turn_rows(
    key: Key, turns: Sequence[events.Turn], *, source: Literal["webhook", "api"]
) -> list[list[Any]]:
    """`agent_turn` rows for `turns` (`TURNS`; a turn id given twice: the last one)."""
    return [
        [
            *key,
            t.turn_id,
            _iso(t.start_at),
            _iso(t.end_at),
            t.start_type,
            t.end_type,
            t.e2e_latency_ms,
            t.data,
            source,
            *(t.stages.get(stage) for stage in events.STAGES),
        ]
        for t in {t.turn_id: t for t in turns}.values()
    ]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def upsert_turns(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    turns: Sequence[events.Turn],
    source: Literal["webhook", "api"],
) -> list[StoredTurn]:
    """Store turns by `(app_id, agent_id, turn_id)`; a turn already stored is kept as it is.
    Answers the turns stored now (to count once the caller has committed)."""
    if not turns:
        return []
    rows = turn_rows((app_id, agent_id), turns, source=source)
    raw = await db.driver_connection(conn)
    statement = f"WITH turns AS ({TURNS}), turn_marks AS ({_TURN_MARKS}) SELECT {_TURN_FIGURES}"
    found = await (await raw.execute(statement, {"turns": _json(rows)})).fetchone()
    return _stored_turns(found[0] if found is not None else None)


async def store_transcript(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    contents: Sequence[Mapping[str, Any]],
    source: Literal["webhook", "api"],
) -> bool:
    """Set the transcript and mark the history `complete`; True if it was written.

    A webhook (103) transcript is what Agora pushed after the stop and always wins; an API
    transcript never replaces a webhook one.
    """
    stmt = (
        update(history)
        .where(history.c.app_id == app_id, history.c.agent_id == agent_id)
        .values(
            status="complete",
            source=source,
            contents=cast(literal(json.dumps(list(contents), ensure_ascii=False)), JSONB),
            reason=None,
            transcript_at=func.now(),
            updated_at=func.now(),
        )
        .returning(history.c.agent_id)
    )
    if source == "api":
        stmt = stmt.where(history.c.source.is_distinct_from("webhook"))
    return (await conn.execute(stmt)).first() is not None


async def mark_history_unavailable(
    conn: AsyncConnection, *, app_id: str, agent_id: str, reason: str
) -> bool:
    """Settle a still-`pending` history as `unavailable` with `reason`; True if it was pending.

    A transcript stored later (`store_transcript`) still makes it `complete`.
    """
    stmt = (
        update(history)
        .where(
            history.c.app_id == app_id,
            history.c.agent_id == agent_id,
            history.c.status == "pending",
        )
        .values(status="unavailable", reason=reason, updated_at=func.now())
        .returning(history.c.agent_id)
    )
    return (await conn.execute(stmt)).first() is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracked:
    """An agent as reconciliation compares it with Agora's list (read without a lock)."""

    agent_id: str
    state: lifecycle.State
    started_at: datetime | None  # Agora's start_ts, else when it became active here


_TRACKED_COLUMNS = (
    agent.c.agent_id,
    agent.c.state,
    func.coalesce(agent.c.started_at, agent.c.active_from).label("started_at"),
)
_ACTIVE_STATES = [state.value for state in lifecycle.ACTIVE]


def _tracked(row: RowMapping) -> Tracked:
    return Tracked(
        agent_id=row["agent_id"],
        state=lifecycle.State(row["state"]),
        started_at=row["started_at"],
    )


async def unsettled_agents(
    conn: AsyncConnection, *, app_id: str, idle_since: datetime
) -> list[Tracked]:
    """The agents of `app_id` that Agora may still have to settle: every active one (holding a
    PCU slot), and every IDLE one first seen since `idle_since`."""
    stmt = select(*_TRACKED_COLUMNS).where(
        agent.c.app_id == app_id,
        or_(
            agent.c.state.in_(_ACTIVE_STATES),
            and_(
                agent.c.state == lifecycle.State.IDLE.value,
                agent.c.first_seen_at >= idle_since,
            ),
        ),
    )
    return [_tracked(row) for row in (await conn.execute(stmt)).mappings()]


async def tracked_agents(
    conn: AsyncConnection, *, app_id: str, agent_ids: Sequence[str]
) -> list[Tracked]:
    """The agents of `app_id` among `agent_ids` that we know, in any state."""
    if not agent_ids:
        return []
    stmt = select(*_TRACKED_COLUMNS).where(
        agent.c.app_id == app_id, agent.c.agent_id.in_(agent_ids)
    )
    return [_tracked(row) for row in (await conn.execute(stmt)).mappings()]


async def mark_seen_live(
    conn: AsyncConnection, *, app_id: str, agent_ids: Sequence[str], at: datetime
) -> int:
    """Record that Agora listed or reported these agents of `app_id` live at `at`; answers the
    rows moved. Only active agents are touched, and `seen_live_at` only moves forward.
    """
    if not agent_ids:
        return 0
    stmt = (
        update(agent)
        .where(
            agent.c.app_id == app_id,
            agent.c.agent_id.in_(agent_ids),
            agent.c.state.in_(_ACTIVE_STATES),
            or_(agent.c.seen_live_at.is_(None), agent.c.seen_live_at < at),
        )
        .values(seen_live_at=at)
    )
    return (await conn.execute(stmt)).rowcount


async def last_alive_at(conn: AsyncConnection, *, app_id: str, agent_id: str) -> datetime | None:
    """The latest time anything we hold says the agent was alive.

    The greatest of: a reconciliation pass seeing it live, its latest event time, the time its
    current state was set, its start. (Greatest ignores NULLs.)
    """
    stmt = select(
        func.greatest(
            agent.c.seen_live_at,
            agent.c.last_event_at,
            agent.c.state_at,
            agent.c.active_from,
            agent.c.started_at,
        )
    ).where(tuple_(agent.c.app_id, agent.c.agent_id) == (app_id, agent_id))
    value: datetime | None = (await conn.execute(stmt)).scalar_one_or_none()
    return value
