"""Prometheus metrics: every name the service exposes, and one-line helpers to count with.

Counters and histograms live in the process that counts. Gauges that describe the database (PCU
current/cap/peak per app, history jobs by status, the oldest due job's age) are not kept here at
all: `GET /metrics` reads them from PostgreSQL at scrape time (`database_families`), so every
replica and every worker answers the same truth.

Several uvicorn workers (`convoai-ledger serve --workers N`) share one port, so a scrape reaches
one worker at random. They therefore run in prometheus-client's multiprocess mode: `serve` points
`PROMETHEUS_MULTIPROC_DIR` at a fresh directory before the workers start, every worker's counters
are written to files there, and `render()` sums them all. With one worker the process's own
registry is rendered. Each replica (pod) is its own scrape target; Prometheus sums across them.

`app_id` labels only ever carry a configured App ID (`UNKNOWN_APP` otherwise) and `event_type`
only a known event code (`OTHER_EVENT` otherwise), so no caller can blow up cardinality. The
`module` and `code` of agent errors come from Agora's payloads: a value that is not a short plain
token counts as `other`, and each process keeps at most `MAX_ERROR_PAIRS` distinct (module, code)
pairs per app, counting any further pair as (`other`, `other`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN_APP: Final = "unknown"
OTHER: Final = "other"
OTHER_EVENT: Final = OTHER
KNOWN_EVENTS: Final = frozenset({101, 102, 103, 104, 110, 111, 112, 201, 202})
HISTORY_STATUSES: Final = ("queued", "running", "done")
MAX_ERROR_PAIRS: Final = 50  # distinct (module, code) label pairs per app and process
_PLAIN_LABEL: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

NOTIFICATIONS: Final = Counter(
    "ledger_notifications",
    "Webhook deliveries by app, event type, outcome and rejection reason.",
    ["app_id", "event_type", "outcome", "reason"],
)
INGEST_DURATION: Final = Histogram(
    "ledger_ingest_duration_seconds",
    "Webhook handling time, by app and outcome.",
    ["app_id", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
OUT_OF_ORDER: Final = Counter(
    "ledger_out_of_order",
    "Notifications older than something already recorded for the agent.",
    ["app_id", "event_type"],
)
TRANSITIONS: Final = Counter(
    "ledger_transitions",
    "Lifecycle transitions recorded (committed).",
    ["app_id", "to_state", "source"],
)
THRESHOLD_CROSSINGS: Final = Counter(
    "ledger_pcu_threshold_crossings",
    "Upward crossings of the warning fraction of the cap and of the cap.",
    ["app_id", "threshold"],
)
HISTORY_COMPLETED: Final = Counter(
    "ledger_history_completed",
    "Histories settled by the worker.",
    ["app_id", "outcome"],
)
AGORA_REQUESTS: Final = Counter(
    "ledger_agora_requests",
    "Agora REST calls by app, endpoint and HTTP status (`error` for transport failures).",
    ["app_id", "endpoint", "status"],
)
AGORA_DURATION: Final = Histogram(
    "ledger_agora_request_duration_seconds",
    "Agora REST call time.",
    ["app_id", "endpoint"],
    buckets=_LATENCY_BUCKETS,
)
RECONCILE_REPAIRS: Final = Counter(
    "ledger_reconcile_repairs",
    "Reconciliation repairs: the signal that webhooks are lost.",
    ["app_id", "kind"],
)
RECONCILE_DURATION: Final = Histogram(
    "ledger_reconcile_pass_duration_seconds",
    "Reconciliation pass time.",
    ["app_id"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
RECONCILE_ERRORS: Final = Counter(
    "ledger_reconcile_errors",
    "Reconciliation passes cut short by Agora errors.",
    ["app_id"],
)
AGENT_ERRORS: Final = Counter(
    "ledger_agent_errors",
    "Agent errors (110) recorded, by module and code (bounded: see the module's docstring).",
    ["app_id", "module", "code"],
)
SESSIONS_ENDED: Final = Counter(
    "ledger_sessions_ended",
    "Agents that reached a terminal state, by outcome (stopped|failed); counted once each.",
    ["app_id", "outcome"],
)
AGENT_SECONDS: Final = Counter(
    "ledger_agent_seconds",
    "Seconds agents held a PCU slot, counted when each session's slot first closes.",
    ["app_id"],
)

AGORA_CREDENTIALS_MISSING: Final = Gauge(
    "ledger_agora_credentials_missing",
    "1 for a configured app without REST credentials: no reconciliation, no history fetching.",
    ["app_id"],
    multiprocess_mode="max",
)


INGEST_GROUPS: Final = Histogram(
    "ledger_ingest_group_size",
    "Notifications committed together by one group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
TURN_LATENCY: Final = Histogram(
    "ledger_turn_latency_seconds",
    "Turn latency as Agora reported it, per stored turn: `stage` e2e (end to end), asr_ttlw,"
    " llm_ttft or tts_ttfb (segmented_latency_ms).",
    ["app_id", "stage"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
PCU_FOLD_LAG: Final = Histogram(
    "ledger_pcu_fold_changes",
    "PCU changes one fold took up (how far the folder was behind).",
    buckets=(1, 4, 16, 64, 256, 1024, 4096),
)


def event_label(event_type: int | None) -> str:
    if event_type is None:
        return ""
    return str(event_type) if event_type in KNOWN_EVENTS else OTHER_EVENT


def notification(
    app_id: str, event_type: int | None, *, outcome: str, reason: str = "", seconds: float
) -> None:
    """One webhook delivery: `outcome` accepted|duplicate|ignored|rejected|unavailable."""
    key = (app_id, event_type, outcome, reason)
    children = _DELIVERY_CHILDREN.get(key)
    if children is None:
        children = (
            NOTIFICATIONS.labels(app_id, event_label(event_type), outcome, reason),
            INGEST_DURATION.labels(app_id, outcome),
        )
        if len(_DELIVERY_CHILDREN) < _MAX_CACHED:
            _DELIVERY_CHILDREN[key] = children
    children[0].inc()
    children[1].observe(seconds)


# The labelled children `notification()` counts with, by its arguments: found by one dict lookup
# instead of `labels()` twice per delivery (app ids are the configured ones or `unknown`, so the
# keys are few; the cache stops growing past a bound all the same).
_DELIVERY_CHILDREN: dict[tuple[str, int | None, str, str], tuple[Any, Any]] = {}
_MAX_CACHED: Final = 10_000


def group_committed(size: int) -> None:
    INGEST_GROUPS.observe(size)


class _Turn(Protocol):
    @property
    def app_id(self) -> str: ...
    @property
    def figures(self) -> Mapping[str, int | None]: ...


def turns_stored(turns: Iterable[_Turn]) -> None:
    """Turns stored now (committed, each once: one already stored is not counted again); each
    figure (ms) observed under its stage."""
    for turn in turns:
        for stage, ms in turn.figures.items():
            if ms is not None:
                TURN_LATENCY.labels(turn.app_id, stage).observe(ms / 1000)


def pcu_folded(changes: int) -> None:
    PCU_FOLD_LAG.observe(changes)


def out_of_order(app_id: str, event_type: int | None) -> None:
    OUT_OF_ORDER.labels(app_id, event_label(event_type)).inc()


def transition(app_id: str, to_state: str, source: str) -> None:
    """One committed lifecycle transition; `source` webhook|reconcile."""
    TRANSITIONS.labels(app_id, to_state, source).inc()


def threshold_crossed(app_id: str, threshold: str) -> None:
    """One committed upward crossing; `threshold` warning|cap."""
    THRESHOLD_CROSSINGS.labels(app_id, threshold).inc()


def agent_error(app_id: str, module: str | None, code: int | None) -> None:
    """One agent error newly recorded (after the commit; never for a redelivery)."""
    AGENT_ERRORS.labels(app_id, *_error_pair(app_id, module, code)).inc()


def session_ended(app_id: str, outcome: str) -> None:
    """An agent reached a terminal state for the first time; `outcome` stopped|failed."""
    SESSIONS_ENDED.labels(app_id, outcome).inc()


def agent_seconds(app_id: str, seconds: float) -> None:
    """A session's PCU slot closed after `seconds`."""
    AGENT_SECONDS.labels(app_id).inc(max(0.0, seconds))


_error_pairs: dict[str, set[tuple[str, str]]] = {}


def _error_pair(app_id: str, module: str | None, code: int | None) -> tuple[str, str]:
    """The bounded (module, code) labels for one error: absent values are "", odd ones
    `other`, and past `MAX_ERROR_PAIRS` distinct pairs for the app the pair is (other, other)."""
    pair = (_plain(module), _plain(None if code is None else str(code)))
    seen = _error_pairs.setdefault(app_id, set())
    if pair in seen:
        return pair
    if len(seen) >= MAX_ERROR_PAIRS:
        return (OTHER, OTHER)
    seen.add(pair)
    return pair


def _plain(value: str | None) -> str:
    if value is None:
        return ""
    return value if _PLAIN_LABEL.fullmatch(value) else OTHER


def history_completed(app_id: str, outcome: str) -> None:
    """A history settled by the worker; `outcome` complete|unavailable."""
    HISTORY_COMPLETED.labels(app_id, outcome).inc()


def agora_request(app_id: str, endpoint: str, status: int | str, seconds: float) -> None:
    """One Agora REST call for a configured app; `endpoint` join|leave|query|list|history|turns,
    `status` the HTTP code or "error" for a transport failure."""
    AGORA_REQUESTS.labels(app_id, endpoint, str(status)).inc()
    AGORA_DURATION.labels(app_id, endpoint).observe(seconds)


def reconcile_repair(app_id: str, kind: str, count: int = 1) -> None:
    """Reconciliation repairs; `kind` adopted|closed|gone."""
    RECONCILE_REPAIRS.labels(app_id, kind).inc(count)


def credentials_missing(app_id: str, missing: bool) -> None:
    """Whether a configured app lacks REST credentials (set by the worker at start)."""
    AGORA_CREDENTIALS_MISSING.labels(app_id).set(1 if missing else 0)


def reconcile_pass(app_id: str, seconds: float) -> None:
    RECONCILE_DURATION.labels(app_id).observe(seconds)


def reconcile_error(app_id: str) -> None:
    RECONCILE_ERRORS.labels(app_id).inc()


def database_families(
    *,
    pcu: Mapping[str, tuple[int, int, int]],
    history_jobs: Mapping[str, int],
    oldest_due_s: float,
) -> list[Metric]:
    """The scrape-time gauges: `pcu` maps app → (current, cap, peak over 24 h)."""
    current = GaugeMetricFamily(
        "ledger_pcu_current", "Agents in an active state now.", labels=["app_id"]
    )
    cap = GaugeMetricFamily("ledger_pcu_cap", "Configured concurrent-agent cap.", labels=["app_id"])
    peak = GaugeMetricFamily(
        "ledger_pcu_peak", "Peak concurrency over the last 24 h.", labels=["app_id"]
    )
    for app_id, (now, limit, high) in sorted(pcu.items()):
        current.add_metric([app_id], now)
        cap.add_metric([app_id], limit)
        peak.add_metric([app_id], high)
    jobs = GaugeMetricFamily("ledger_history_jobs", "History jobs by status.", labels=["status"])
    for status in HISTORY_STATUSES:
        jobs.add_metric([status], history_jobs.get(status, 0))
    oldest = GaugeMetricFamily(
        "ledger_history_oldest_due_seconds",
        "Age of the oldest due, unfinished history job (0 when none).",
        value=oldest_due_s,
    )
    return [current, cap, peak, jobs, oldest]


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(*, multiprocess_dir: str | None, extra: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text exposition: this process's (or all workers') metrics plus `extra`."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir:
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Families(REGISTRY.collect()))
    registry.register(_Families(extra))
    return generate_latest(registry)
