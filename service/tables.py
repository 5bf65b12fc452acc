"""The schema, as SQLAlchemy Core tables; alembic revisions must match it exactly.

Postgres holds the invariants: `(app_id, notice_id)` is unique (dedupe), an agent is identified by
`(app_id, agent_id)` in every table (two apps may use the same `agent_id` and never share a row),
states and sources are CHECKed, transitions are append-only (a trigger created by the first
revision refuses UPDATE and DELETE), and every agent has at most one history and one history job.
An erased or expired history holds no transcript, and triggers (revision 458d73fa6583, see
`service/erasure.py`) keep anything written later from bringing its transcript or turns back.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata: Final = MetaData(naming_convention=NAMING_CONVENTION)

_STATES = "'IDLE', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED', 'RECOVERING', 'FAILED'"
# ok: answered 200; skipped: not needed (a webhook transcript was there first); not_found: 404;
# rejected: another 4xx or an unreadable body; gave_up: retries exhausted; not_configured: no
# REST credentials for the app.
# invalid_id: the agent_id is not a plain id, so it is never sent to Agora.
_CALL_OUTCOMES = (
    "'ok', 'skipped', 'not_found', 'rejected', 'gave_up', 'not_configured', 'invalid_id'"
)
# accepted: stored and applied; ignored: stored, not for us (another product, a test callback);
# unapplied: stored, but it could not be applied (`problem` says why; `reapply` retries).
NOTIFICATION_OUTCOMES = ("accepted", "ignored", "unapplied")
# How a webhook delivery was answered (`webhook_count`): the stored outcomes above, a repeat, a
# refusal (401, 400, 404, 413, or a client gone mid-body), 503, or an unexpected failure.
WEBHOOK_OUTCOMES = (*NOTIFICATION_OUTCOMES, "duplicate", "rejected", "unavailable", "error")


def _agent_key() -> tuple[Column[object], Column[object], ForeignKeyConstraint]:
    """`app_id`, `agent_id` and the foreign key to the agent they name."""
    return (
        Column("app_id", Text, nullable=False),
        Column("agent_id", Text, nullable=False),
        ForeignKeyConstraint(["app_id", "agent_id"], ["agent.app_id", "agent.agent_id"]),
    )


def _timestamp(name: str, *, nullable: bool = True, default_now: bool = False) -> Column[object]:
    return Column(
        name,
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if default_now else None,
    )


notification: Final = Table(
    "notification",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("app_id", Text, nullable=False),
    Column("notice_id", Text, nullable=False),
    Column("product_id", Integer, nullable=False),
    Column("event_type", Integer, nullable=False),
    Column("agent_id", Text),
    Column("outcome", Text, nullable=False),
    # Why an `unapplied` notification could not be applied (or what was left out of it).
    Column("problem", Text),
    _timestamp("event_at"),
    Column("notify_ms", BigInteger),
    _timestamp("received_at", nullable=False, default_now=True),
    # The body as JSON; when jsonb cannot hold it (a NUL character, an unpaired surrogate), a
    # copy with those replaced, and the exact bytes in `raw`.
    Column("body", JSONB, nullable=False),
    Column("raw", LargeBinary),
    UniqueConstraint("app_id", "notice_id"),
    CheckConstraint(
        "outcome IN (" + ", ".join(f"'{o}'" for o in NOTIFICATION_OUTCOMES) + ")", name="outcome"
    ),
    Index(None, "app_id", "agent_id", "event_at", postgresql_where=text("agent_id IS NOT NULL")),
    Index(None, "received_at"),
    Index(
        "ix_notification_unapplied",
        "app_id",
        text("received_at DESC"),
        text("id DESC"),
        postgresql_where=text("outcome = 'unapplied'"),
    ),
)

agent: Final = Table(
    "agent",
    metadata,
    Column("app_id", Text, nullable=False),
    Column("agent_id", Text, nullable=False),
    Column("name", Text),
    Column("channel", Text),
    # Event times of the notifications `name` and `channel` came from: the earliest wins.
    _timestamp("name_at"),
    _timestamp("channel_at"),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # Per label key, the version of its value: [event time in µs, noticeId]; the latest wins.
    Column("label_versions", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("state", Text, nullable=False, server_default="IDLE"),
    # Event time of the observation that set `state` (orders live-state observations).
    _timestamp("state_at"),
    # Agora's `start_ts`: when the agent was created (the earliest any event reported).
    _timestamp("started_at"),
    _timestamp("stopped_at"),
    Column("stop_status", Text),
    Column("stop_message", Text),
    # The interval the agent held a PCU slot: [active_from, active_until); open while active.
    _timestamp("active_from"),
    _timestamp("active_until"),
    Column("warning", Text),
    _timestamp("warning_at"),
    _timestamp("last_event_at"),
    # When a reconciliation pass last saw Agora list or report the agent live (service/reconcile.py).
    _timestamp("seen_live_at"),
    _timestamp("first_seen_at", nullable=False, default_now=True),
    _timestamp("updated_at", nullable=False, default_now=True),
    PrimaryKeyConstraint("app_id", "agent_id"),
    CheckConstraint(f"state IN ({_STATES})", name="state"),
    CheckConstraint(
        "active_until IS NULL OR (active_from IS NOT NULL AND active_until >= active_from)",
        name="active_interval",
    ),
    Index(None, "app_id", "state"),
    Index(None, "app_id", "started_at"),
    Index(None, "agent_id"),  # GET /v1/agents/{agent_id} without app_id
    Index(None, "channel"),  # GET /v1/agents?channel=
    # PCU: edges by time (live pieces of reads) and "who was active at t" (GiST).
    Index(None, "app_id", "active_from", postgresql_where=text("active_from IS NOT NULL")),
    Index(None, "app_id", "active_until", postgresql_where=text("active_until IS NOT NULL")),
    Index(
        "ix_agent_active_range",
        text("tstzrange(active_from, active_until)"),
        postgresql_using="gist",
        postgresql_where=text("active_from IS NOT NULL"),
    ),
    # Insight: agents still holding a slot (usage adds them to the rollup of closed intervals),
    # stop times (`stopped_since`/`stopped_until`, FAILED per bucket) and names.
    Index(
        "ix_agent_open_interval",
        "app_id",
        "active_from",
        postgresql_where=text("active_from IS NOT NULL AND active_until IS NULL"),
    ),
    # Closed intervals longer than a day: usage reads them from the agents (`service.usage`).
    Index(
        "ix_agent_long_interval",
        "app_id",
        "active_from",
        postgresql_where=text(
            "active_from IS NOT NULL AND active_until - active_from > interval '1 day'"
        ),
    ),
    Index(None, "app_id", "stopped_at", postgresql_where=text("stopped_at IS NOT NULL")),
    # FAILED stops per bucket (`service.usage`): a few agents, so a probe reads only theirs.
    Index(
        "ix_agent_failed_stop",
        "app_id",
        "stopped_at",
        postgresql_where=text("state = 'FAILED' AND stopped_at IS NOT NULL"),
    ),
    Index(None, "app_id", "name", postgresql_where=text("name IS NOT NULL")),
)

# GET /v1/agents lists newest first by this key (the start time, else when first seen), with
# keyset pagination on (listed_at, app_id, agent_id).
agent_listed_at: Final = func.coalesce(agent.c.started_at, agent.c.first_seen_at)
Index("ix_agent_listed_at", agent_listed_at.desc(), agent.c.app_id.desc(), agent.c.agent_id.desc())

agent_transition: Final = Table(
    "agent_transition",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_agent_key(),
    Column("from_state", Text, nullable=False),
    Column("to_state", Text, nullable=False),
    Column("cause", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("notice_id", Text),
    Column("inferred", Boolean, nullable=False, server_default=text("false")),
    _timestamp("event_at", nullable=False),
    _timestamp("received_at", nullable=False, default_now=True),
    # The id of the transaction that wrote the row, from the default (writers never set it): the
    # live stream reads the log in (xid, id) order, up to the oldest transaction still running.
    Column(
        "xid",
        BigInteger,
        nullable=False,
        server_default=text("(pg_current_xact_id())::text::bigint"),
    ),
    CheckConstraint(f"from_state IN ({_STATES})", name="from_state"),
    CheckConstraint(f"to_state IN ({_STATES})", name="to_state"),
    CheckConstraint("source IN ('webhook', 'reconcile')", name="source"),
    Index(None, "app_id", "agent_id", "event_at"),
    Index(None, "xid", "id"),
)

agent_error: Final = Table(
    "agent_error",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_agent_key(),
    Column("notice_id", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("module", Text),
    Column("code", BigInteger),
    Column("message", Text),
    Column("turn_id", Text),
    _timestamp("event_at"),
    _timestamp("received_at", nullable=False, default_now=True),
    UniqueConstraint("app_id", "agent_id", "notice_id", "position"),
    # GET /v1/errors (newest first, per app) and the per-app error summary over a range.
    Index("ix_agent_error_app_id_event_at", "app_id", text("event_at DESC"), text("id DESC")),
)

agent_metric: Final = Table(
    "agent_metric",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_agent_key(),
    Column("notice_id", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("turn_id", Text),
    Column("asr_ttlw", Integer),
    Column("llm_ttfb", Integer),
    Column("llm_ttfs", Integer),
    Column("tts_ttfb", Integer),
    Column("figures", JSONB, nullable=False),
    _timestamp("event_at"),
    UniqueConstraint("app_id", "agent_id", "notice_id", "position"),
)

agent_turn: Final = Table(
    "agent_turn",
    metadata,
    *_agent_key(),
    Column("turn_id", Integer, nullable=False),
    _timestamp("start_at"),
    _timestamp("end_at"),
    Column("start_type", Text),
    Column("end_type", Text),
    Column("e2e_latency_ms", Integer),
    # The stages of `segmented_latency_ms` (ms), from a 112's object or a `/turns` list alike.
    Column("asr_ttlw", Integer),
    Column("llm_ttft", Integer),
    Column("tts_ttfb", Integer),
    Column("data", JSONB, nullable=False),
    Column("source", Text, nullable=False),
    PrimaryKeyConstraint("app_id", "agent_id", "turn_id"),
    CheckConstraint("source IN ('webhook', 'api')", name="source"),
    # GET /v1/apps/{app_id}/latency: the turns ending in a range, figures read from the index.
    Index(
        None,
        "app_id",
        "end_at",
        postgresql_include=["e2e_latency_ms", "asr_ttlw", "llm_ttft", "tts_ttfb", "agent_id"],
        postgresql_where=text("end_at IS NOT NULL"),
    ),
)

call_state: Final = Table(
    "call_state",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_agent_key(),
    Column("notice_id", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("state", Text, nullable=False),
    _timestamp("reported_at"),
    _timestamp("received_at", nullable=False, default_now=True),
    UniqueConstraint("app_id", "agent_id", "notice_id"),
    CheckConstraint("direction IN ('inbound', 'outbound')", name="direction"),
)

history: Final = Table(
    "history",
    metadata,
    *_agent_key(),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("source", Text),
    Column("contents", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("reason", Text),
    _timestamp("transcript_at"),
    _timestamp("updated_at", nullable=False, default_now=True),
    PrimaryKeyConstraint("app_id", "agent_id"),
    # erased: its transcript was deleted on request; expired: by HISTORY_RETENTION_DAYS.
    CheckConstraint(
        "status IN ('pending', 'complete', 'unavailable', 'erased', 'expired')", name="status"
    ),
    CheckConstraint("source IS NULL OR source IN ('webhook', 'api')", name="source"),
    CheckConstraint(
        "status NOT IN ('erased', 'expired') OR (contents = '[]'::jsonb AND source IS NULL)",
        name="erased_empty",
    ),
)

# One durable job per stopped agent, enqueued in the transaction that records the stop.
history_job: Final = Table(
    "history_job",
    metadata,
    *_agent_key(),
    Column("status", Text, nullable=False, server_default="queued"),
    _timestamp("due_at", nullable=False, default_now=True),
    # When the stop was recorded here; HISTORY_GRACE_S counts from it.
    _timestamp("stop_recorded_at", nullable=False, default_now=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("lease_owner", Text),
    _timestamp("lease_expires_at"),
    Column("last_error", Text),
    _timestamp("created_at", nullable=False, default_now=True),
    _timestamp("finished_at"),
    # How each Agora call ended; NULL until it has (a job taken over after a crash redoes only
    # the calls without an outcome, and a settled call is never made again).
    Column("history_call", Text),
    Column("turns_call", Text),
    PrimaryKeyConstraint("app_id", "agent_id"),
    CheckConstraint("status IN ('queued', 'running', 'done')", name="status"),
    CheckConstraint(f"history_call IN ({_CALL_OUTCOMES})", name="history_call"),
    CheckConstraint(f"turns_call IN ({_CALL_OUTCOMES})", name="turns_call"),
    Index(None, "due_at", postgresql_where=text("status <> 'done'")),
)

# What a transaction changed about PCU and the folder has not yet folded into the rollup: each
# moved interval edge (`at`, `delta` +1/-1, a removed edge as its opposite) and each change of an
# agent's holding a slot now (`live` +1/-1, `at` NULL). Inserted by the write path without any
# lock; deleted by `service.rollup.fold`, which rewrites the touched minutes and hours in the same
# snapshot. The rollup plus these rows is what the agents say (reads use both).
pcu_change: Final = Table(
    "pcu_change",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("app_id", Text, nullable=False),
    _timestamp("at"),
    Column("delta", Integer, nullable=False, server_default=text("0")),
    Column("live", Integer, nullable=False, server_default=text("0")),
    Index(None, "app_id", "at"),
)

# PCU rollup: per app and minute with edges, the summary of the agents' interval edges inside
# that minute (`service.pcu.Span` relative to the level just before the minute) and the edges
# themselves (µs offsets in the minute, ascending and distinct, with the net change at each, the
# level after it relative to the minute's start, the highest level up to it and from it on, and
# the running sum of change * offset: any prefix or suffix of the minute in one binary search).
# Rewritten from the agent rows, under a per-minute lock, by every transaction that moves an
# edge (`service.rollup`).
pcu_minute: Final = Table(
    "pcu_minute",
    metadata,
    Column("app_id", Text, nullable=False),
    Column("minute", DateTime(timezone=True), nullable=False),
    Column("delta", Integer, nullable=False),
    Column("peak", Integer, nullable=False),
    Column("area_us", BigInteger, nullable=False),
    Column("edge_at", ARRAY(Integer), nullable=False),
    Column("edge_delta", ARRAY(Integer), nullable=False),
    Column("edge_level", ARRAY(Integer), nullable=False),
    Column("edge_pmax", ARRAY(Integer), nullable=False),
    Column("edge_smax", ARRAY(Integer), nullable=False),
    Column("edge_wsum", ARRAY(BigInteger), nullable=False),
    PrimaryKeyConstraint("app_id", "minute"),
)

# PCU rollup per app and hour with edges: for each minute position k (0..60, array index k+1),
# relative to the level just before the hour: `cum` the level before minute k, `area` the area
# over minutes [0, k) in level·µs, `pmax` the highest level over [0, k), `smax` the highest over
# [k, 60) (see `service.pcu.HourPrefix`). Rewritten from its minutes after them (`service.rollup`).
pcu_hour: Final = Table(
    "pcu_hour",
    metadata,
    Column("app_id", Text, nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("cum", ARRAY(Integer), nullable=False),
    Column("area", ARRAY(BigInteger), nullable=False),
    Column("pmax", ARRAY(Integer), nullable=False),
    Column("smax", ARRAY(Integer), nullable=False),
    PrimaryKeyConstraint("app_id", "hour"),
)

# Where each app's current PCU stood against its thresholds when its changes were last folded
# (`service.rollup.fold`, one folder per app at a time), and the count it stood at.
pcu_alarm: Final = Table(
    "pcu_alarm",
    metadata,
    Column("app_id", Text, primary_key=True),
    Column("level", Text, nullable=False, server_default="normal"),
    Column("current", Integer, nullable=False, server_default=text("0")),
    _timestamp("changed_at", nullable=False, default_now=True),
    CheckConstraint("level IN ('normal', 'warning', 'cap')", name="level"),
)


# Insight rollups (`service.usage`, `service.latency`, `service.error_hours`), folded off the
# request path like PCU's: the write path records which (app, hour) a transaction changed for
# usage (an agent's active interval, its labels or its FAILED stop), for latency (`latency`: a
# turn stored or deleted; `latency_label`: the labels of an agent with turns changed, so only the
# per-label figures) or for errors (`errors`: an error stored, and the agent's next hour with the
# same error), the folders recompute those hours from the agents, turns and errors and delete the
# marks they saw. Reads
# take the rollup for hours without marks and compute the others from the agents and turns
# themselves, so an answer is always what the rows say.
insight_change: Final = Table(
    "insight_change",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("app_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    _timestamp("hour", nullable=False),
    CheckConstraint("kind IN ('usage', 'latency', 'latency_label', 'errors')", name="kind"),
    Index(None, "app_id", "kind", "hour"),
)

# Agent errors per app, UTC hour (of `event_at`) and (module, code), for the error summary
# (`service.error_hours`): the errors, the distinct agents with one, the latest time, and for
# those agents that had the same error before this hour, how many hours back their previous one
# was: `gap_agents[i]` agents `gap_hours[i]` hours back (ascending). Rows of an hour are replaced
# together (no key: module and code may be NULL).
error_hour: Final = Table(
    "error_hour",
    metadata,
    Column("app_id", Text, nullable=False),
    _timestamp("hour", nullable=False),
    Column("module", Text),
    Column("code", BigInteger),
    Column("errors", BigInteger, nullable=False),
    Column("agents", Integer, nullable=False),
    _timestamp("last_at", nullable=False),
    Column("gap_hours", ARRAY(Integer), nullable=False),
    Column("gap_agents", ARRAY(Integer), nullable=False),
    Index(None, "app_id", "hour"),
)

# Usage per app, hour and label set: `agent_us` the overlap (µs) of the agents' CLOSED active
# intervals with the hour (agents still active are added at read time), `sessions` the agents
# whose interval starts in it, `failed` the agents that became FAILED with their stop in it.
usage_hour: Final = Table(
    "usage_hour",
    metadata,
    Column("app_id", Text, nullable=False),
    _timestamp("hour", nullable=False),
    Column("labels", JSONB, nullable=False),
    Column("agent_us", BigInteger, nullable=False),
    Column("sessions", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    PrimaryKeyConstraint("app_id", "hour", "labels"),
)

# Starts and FAILED stops per app and hour, by minute, for usage without a label (the area under
# the concurrency gives its agent time): `sessions[k]` (array index k + 1) the agents whose
# interval starts in minutes [0, k) of the hour, `failed[k]` those that became FAILED with their
# stop in them (k = 0..60). A row only for hours with either (`service.usage`).
usage_count: Final = Table(
    "usage_count",
    metadata,
    Column("app_id", Text, nullable=False),
    _timestamp("hour", nullable=False),
    Column("sessions", ARRAY(Integer), nullable=False),
    Column("failed", ARRAY(Integer), nullable=False),
    PrimaryKeyConstraint("app_id", "hour"),
)


# Usage per app, hour and label set by minute, to cut an hour at any second when grouping by a
# label (`service.usage`), over the minutes from `first` to the last one in which the label set
# has anything (an interval, a start, a FAILED stop), index i + 1 for minute first + i:
# `agent_us` the overlap (µs) of the intervals `usage_hour` counts with the hour's minutes up
# to and including that one, `sessions` and `failed` the starts and FAILED stops in them,
# `level` how many of those intervals hold the minute's first instant inside (started before
# it, end after it). Before `first` all are 0; after the last minute the sums stay and the
# level is 0. So a row's size follows the label set's minutes: a label with a value per agent
# (a user id) costs a few minutes a row, not 60. The same rows as `usage_hour` (a label set
# with anything in the hour), written by the same fold.
usage_minute: Final = Table(
    "usage_minute",
    metadata,
    Column("app_id", Text, nullable=False),
    _timestamp("hour", nullable=False),
    Column("labels", JSONB, nullable=False),
    Column("first", Integer, nullable=False),
    Column("agent_us", ARRAY(BigInteger), nullable=False),
    Column("level", ARRAY(Integer), nullable=False),
    Column("sessions", ARRAY(Integer), nullable=False),
    Column("failed", ARRAY(Integer), nullable=False),
    PrimaryKeyConstraint("app_id", "hour", "labels"),
)


def _latency_figures() -> tuple[Column[object], ...]:
    """A latency bucket's figures (`service.latency`): its turns, nearest-rank percentiles of
    `e2e` [p50, p90, p99, max] and of each stage [p50, p90], NULL where no turn reported it."""
    return (
        Column("turns", Integer, nullable=False),
        Column("e2e", ARRAY(Integer), nullable=False),
        Column("asr_ttlw", ARRAY(Integer), nullable=False),
        Column("llm_ttft", ARRAY(Integer), nullable=False),
        Column("tts_ttfb", ARRAY(Integer), nullable=False),
    )


# Turn latency per app and UTC-aligned bucket (`width` 3600 or 86400 s, `at` its start): the
# turns ending in it and nearest-rank percentiles: `e2e` [p50, p90, p99, max], each stage
# [p50, p90] (NULL where no turn reported it). An hour's row also holds its turns' end times and
# figures in end-time order (`by_turn`, packed by column: `service.latency._PACKED`), so any part
# of the hour can be answered exactly without reading the turns; stored uncompressed (the
# migration), as the read takes a month of them at once.
latency_bucket: Final = Table(
    "latency_bucket",
    metadata,
    Column("app_id", Text, nullable=False),
    Column("width", Integer, nullable=False),
    _timestamp("at", nullable=False),
    *_latency_figures(),
    Column("by_turn", LargeBinary),
    PrimaryKeyConstraint("app_id", "width", "at"),
    CheckConstraint("width IN (3600, 86400)", name="width"),
)

# The same figures per label pair: the turns ending in the bucket whose agent's labels hold `key`
# with the string `value` (what `label.KEY=VALUE` selects), a row per pair with turns. Keyed for
# the read (one pair's buckets in a range); the fold replaces a bucket's rows by (app, width, at).
latency_label_bucket: Final = Table(
    "latency_label_bucket",
    metadata,
    Column("app_id", Text, nullable=False),
    Column("width", Integer, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", Text, nullable=False),
    _timestamp("at", nullable=False),
    *_latency_figures(),
    PrimaryKeyConstraint("app_id", "width", "key", "value", "at"),
    CheckConstraint("width IN (3600, 86400)", name="width"),
    Index(None, "app_id", "width", "at"),
)


# Webhook deliveries per app, minute received, answer and reason (`service.webhook_counts`):
# every serving process counts in memory and adds its counts here every few seconds, so
# duplicates and refusals, which store nothing else, are counted too, and the webhook path
# itself never writes here. `app_id` is the App ID the path named (one that is not configured
# only for `unknown_app`; '' when the path named none or no plain one); `reason` the error code
# of a refusal, else ''.
webhook_count: Final = Table(
    "webhook_count",
    metadata,
    Column("app_id", Text, nullable=False),
    _timestamp("minute", nullable=False),
    Column("outcome", Text, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("count", BigInteger, nullable=False),
    PrimaryKeyConstraint("app_id", "minute", "outcome", "reason"),
    CheckConstraint(
        "outcome IN (" + ", ".join(f"'{o}'" for o in WEBHOOK_OUTCOMES) + ")", name="outcome"
    ),
    Index(None, "minute"),  # pruning
)
