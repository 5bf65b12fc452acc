"""The OpenAPI 3.1 description of every endpoint, served as `GET /openapi.json`.

Written by hand, beside the routes it describes; `tests/http/test_openapi.py` validates it against
the OpenAPI 3.1 schema and checks that every route the app serves is described here.
"""

from __future__ import annotations

from typing import Any, Final

from service import lifecycle, timeline

JSON: Final = "application/json"
_TIME: Final = {"type": "string", "format": "date-time"}
# A time parameter: RFC 3339 with an offset (fractional seconds truncated to the microsecond).
_TIME_PARAM: Final = {
    **_TIME,
    "description": "RFC 3339 with Z or an offset; within years 1 to 9999 once in UTC.",
}
_NULLABLE_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
# A nearest-rank percentile (ms) of the bucket's turns; null when none reported the figure.
_MS: Final = {"type": ["integer", "null"], "minimum": 0}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: str | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _object(properties: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def _param(name: str, where: str, description: str, schema: dict[str, Any], **extra: Any) -> Any:
    return {"name": name, "in": where, "description": description, "schema": schema, **extra}


def _list_of(item: str) -> dict[str, Any]:
    return _object(
        {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
        }
    )


_READ_ERRORS: Final = {
    "400": _answer(
        "A query parameter is invalid (the detail names it); a text filter with a NUL is one.",
        "InvalidParameter",
    ),
    "401": _answer("Missing or wrong bearer token.", "Error"),
}
_NOT_FOUND: Final = {
    "404": _answer(
        "No such agent or app, or one this token may not see (an id with a NUL is none).", "Error"
    )
}
_PAGE: Final = [
    _param(
        "limit",
        "query",
        "Items per page.",
        {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
    ),
    _param("cursor", "query", "The `next_cursor` of the previous page.", {"type": "string"}),
]
_AGENT_ID: Final = _param(
    "agent_id", "path", "Agora's agent id.", {"type": "string"}, required=True
)
_APP_ID: Final = _param("app_id", "path", "A configured App ID.", {"type": "string"}, required=True)
_WHICH_APP: Final = _param(
    "app_id",
    "query",
    "The agent's App ID; needed when this agent_id exists in several apps (else 409).",
    {"type": "string"},
)
_AMBIGUOUS: Final = {
    "409": _answer("The agent_id exists in several apps: name one with app_id.", "Ambiguous")
}


def _read(
    summary: str,
    answer: str,
    schema: str,
    *,
    params: list[Any],
    found: bool = True,
    agent: bool = False,
) -> Any:
    responses = {"200": _answer(answer, schema), **_READ_ERRORS}
    if found:
        responses.update(_NOT_FOUND)
    if agent:
        responses.update(_AMBIGUOUS)
        params = [*params, _WHICH_APP]
    return {
        "get": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": params,
            "responses": responses,
        }
    }


def _webhook(with_app: bool) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Receive an Agora NCS notification"
            + ("" if with_app else " (when exactly one app is configured)"),
            "description": "Signed with `Agora-Signature-V2` (HMAC-SHA256, hex) or, when that "
            "header is absent, `Agora-Signature` (HMAC-SHA1, hex) over the raw body. Stored once "
            "per `noticeId`; its effects are committed before the 200.",
            "parameters": ([_APP_ID] if with_app else [])
            + [
                _param("Agora-Signature-V2", "header", "HMAC-SHA256 hex.", {"type": "string"}),
                _param("Agora-Signature", "header", "HMAC-SHA1 hex.", {"type": "string"}),
            ],
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _ref("Notification")}},
            },
            "responses": {
                "200": _answer("Accepted, unapplied, duplicate or ignored.", "WebhookAnswer"),
                "400": _answer("Not a valid notification.", "InvalidNotification"),
                "401": _answer("Missing or wrong signature.", "Error"),
                "404": _answer("Unknown app.", "Error"),
                "413": _answer("Body over 1 MiB.", "Error"),
                "503": _answer("Database unavailable; Agora retries.", "Error"),
            },
        }
    }


def _stream() -> dict[str, Any]:
    return {
        "get": {
            "summary": "Live events: every applied transition and PCU change (server-sent events)",
            "description": "`text/event-stream`, open until the client leaves. Event `agent` "
            "(data: AgentEvent) for every applied transition, event `pcu` (data: PcuEvent) when an "
            "app's current count changes; each with an `id` that increases in stream order "
            "(fixed-length, so ids also compare as strings). Send the last id received as "
            "`Last-Event-ID` to resume right after it. A comment line goes out at least every "
            "15 s. Every replica streams every change.",
            "security": [{"bearer": []}],
            "parameters": [
                _param("app_id", "query", "Only this app's events.", {"type": "string"}),
                _param(
                    "Last-Event-ID",
                    "header",
                    "Resume after this event (an id this stream sent).",
                    {"type": "string"},
                ),
            ],
            "responses": {
                "200": {
                    "description": "The stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_READ_ERRORS,
                "404": _answer("No such app.", "Error"),
                "503": _answer(
                    "This process streams to as many readers as it may (`too_many_subscribers`, "
                    "with Retry-After), or it is shutting down, or the database is unavailable.",
                    "Error",
                ),
            },
        }
    }


_ADMIN_ERRORS: Final = {
    "401": _answer("Missing or wrong bearer token.", "Error"),
    "403": _answer(
        "A read token (not one of ADMIN_API_TOKENS); answered before anything is looked up.",
        "Error",
    ),
    **_NOT_FOUND,
}


def _erase_history() -> dict[str, Any]:
    return {
        "summary": "Erase the agent's transcript, turns and the transcript in its raw 103",
        "description": "Admin tokens only. Deletes `history.contents`, the agent's turns, "
        "`payload.contents` of its stored 103s and `payload.turns` of its 112s; the history then "
        "answers `status` `erased`, and stays so (a later 103 or fetch brings nothing back). "
        "Idempotent. Logged with the agent id and the token's place, never the token.",
        "security": [{"bearer": []}],
        "parameters": [_AGENT_ID, _WHICH_APP],
        "responses": {
            "204": {"description": "Erased (or already erased)."},
            "400": _answer("A query parameter is invalid.", "InvalidParameter"),
            **_ADMIN_ERRORS,
            **_AMBIGUOUS,
        },
    }


def _erase_by_label() -> dict[str, Any]:
    return {
        "post": {
            "summary": "Erase the histories of every agent of the app whose labels hold a pair",
            "description": "Admin tokens only. As `DELETE /v1/agents/{agent_id}/history` for "
            "each agent of the app whose `labels` hold `KEY` = `VALUE`.",
            "security": [{"bearer": []}],
            "parameters": [_APP_ID],
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _ref("ErasureRequest")}},
            },
            "responses": {
                "200": _answer(
                    "How many agents hold the label (their histories are all erased now).",
                    "ErasureCount",
                ),
                "400": _answer('The body is not {"label": {KEY: VALUE}}.', "InvalidParameter"),
                **_ADMIN_ERRORS,
                "413": _answer("Body over 16 KiB.", "Error"),
                "503": _answer("Some of these agents stayed locked by writes; retry.", "Error"),
            },
        }
    }


def _plain(summary: str, answers: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": answers}}


_SCHEMAS: Final[dict[str, Any]] = {
    "Error": _object({"error": {"type": "string"}}),
    "InvalidParameter": _object(
        {"error": {"const": "invalid_parameter"}, "detail": {"type": "string"}}
    ),
    "InvalidNotification": _object(
        {"error": {"const": "invalid_notification"}, "detail": {"type": "string"}}
    ),
    "Notification": {
        "type": "object",
        "description": "Agora NCS envelope; `productId` 17 is Conversational AI.",
        "properties": {
            "noticeId": {"type": "string"},
            "productId": {"type": "integer"},
            "eventType": {"type": "integer"},
            "notifyMs": {"type": "integer"},
            "sid": {"type": "string"},
            "payload": {"type": "object"},
        },
        "required": ["noticeId", "productId", "eventType", "payload"],
    },
    "WebhookAnswer": _object(
        {"status": {"enum": ["accepted", "unapplied", "duplicate", "ignored"]}}
    ),
    "Ambiguous": _object(
        {
            "error": {"const": "ambiguous_agent"},
            "app_ids": {"type": "array", "items": {"type": "string"}},
        }
    ),
    "State": {"enum": [state.value for state in lifecycle.State]},
    "Agent": _object(
        {
            "agent_id": {"type": "string"},
            "app_id": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "channel": {"type": ["string", "null"]},
            "labels": {"type": "object", "additionalProperties": True},
            "state": _ref("State"),
            "started_at": _NULLABLE_TIME,
            "stopped_at": _NULLABLE_TIME,
            "stop_message": {"type": ["string", "null"]},
            "last_event_at": _NULLABLE_TIME,
        }
    ),
    "Transition": _object(
        {
            "from": _ref("State"),
            "to": _ref("State"),
            "cause": {"type": "string"},
            "source": {"enum": ["webhook", "reconcile"]},
            "inferred": {"type": "boolean"},
            "notice_id": {"type": ["string", "null"]},
            "event_at": _TIME,
            "received_at": _TIME,
        }
    ),
    "AgentError": _object(
        {
            "module": {"type": ["string", "null"]},
            "code": {"type": ["integer", "null"]},
            "message": {"type": ["string", "null"]},
            "turn_id": {"type": ["string", "null"]},
            "notice_id": {"type": "string"},
            "at": _NULLABLE_TIME,
        }
    ),
    "AgentDetail": {
        "allOf": [
            _ref("Agent"),
            _object(
                {
                    "warning": {
                        "oneOf": [
                            {"type": "null"},
                            _object({"message": {"type": "string"}, "at": _NULLABLE_TIME}),
                        ]
                    },
                    "transitions": {"type": "array", "items": _ref("Transition")},
                    "errors": {"type": "array", "items": _ref("AgentError")},
                }
            ),
        ]
    },
    "AgentList": _list_of("Agent"),
    "Event": _object(
        {
            "notice_id": {"type": "string"},
            "event_type": {"type": "integer"},
            "event_time": _NULLABLE_TIME,
            "received_at": _TIME,
            "outcome": {"enum": ["accepted", "unapplied"]},
            "problem": {
                "type": ["string", "null"],
                "description": "Why it is unapplied, or what was left out of it.",
            },
            "payload": {"type": ["object", "null"]},
        }
    ),
    "EventList": _list_of("Event"),
    "Unapplied": _object(
        {
            "notice_id": {"type": "string"},
            "event_type": {"type": "integer"},
            "received_at": _TIME,
            "problem": {"type": ["string", "null"]},
            "payload": {"type": ["object", "null"]},
        }
    ),
    "UnappliedList": _list_of("Unapplied"),
    "History": _object(
        {
            "agent_id": {"type": "string"},
            "status": {"enum": ["pending", "complete", "unavailable", "erased", "expired"]},
            "source": {"enum": ["webhook", "api", None]},
            "contents": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
                    "required": ["role", "content"],
                },
            },
            "turns": {"type": "array", "items": {"type": "object"}},
            "reason": {"type": ["string", "null"]},
        }
    ),
    "Pcu": _object(
        {
            "app_id": {"type": "string"},
            "cap": {"type": "integer", "minimum": 1},
            "current": {"type": "integer", "minimum": 0},
            "available": {"type": "integer", "minimum": 0},
            "utilisation": {"type": "number", "minimum": 0, "description": "current / cap"},
            "window": {"enum": ["1h", "24h", "7d", "30d"]},
            "peak": _object(
                {
                    "value": {"type": "integer", "minimum": 0},
                    "at": {
                        **_NULLABLE_TIME,
                        "description": "First moment the peak was reached (null when 0).",
                    },
                }
            ),
        }
    ),
    "PcuSeries": _object(
        {
            "app_id": {"type": "string"},
            "from": _TIME,
            "to": _TIME,
            "step": {"type": "integer", "minimum": 1},
            "points": {
                "type": "array",
                "items": _object(
                    {
                        "at": {**_TIME, "description": "Start of the bucket."},
                        "max": {"type": "integer", "minimum": 0},
                        "avg": {"type": "number", "minimum": 0, "description": "Time-weighted."},
                    }
                ),
            },
        }
    ),
    "LatencySeries": _object(
        {
            "app_id": {"type": "string"},
            "from": _TIME,
            "to": _TIME,
            "step": {"type": "integer", "minimum": 1},
            "points": {"type": "array", "items": _ref("LatencyPoint")},
        }
    ),
    "LatencyPoint": _object(
        {
            "at": {**_TIME, "description": "Start of the bucket."},
            "turns": {
                "type": "integer",
                "minimum": 0,
                "description": "Turns (from 112 or Agora's /turns) whose `end_at` is in it.",
            },
            "e2e_ms": _object(
                {name: _MS for name in ("p50", "p90", "p99", "max")},
            ),
            "segments": _object(
                {
                    stage: _object({"p50": _MS, "p90": _MS})
                    for stage in ("asr_ttlw", "llm_ttft", "tts_ttfb")
                }
            ),
        }
    ),
    "Usage": _object(
        {
            "app_id": {"type": "string"},
            "from": _TIME,
            "to": _TIME,
            "step": {"type": "integer", "minimum": 1},
            "group_by": {"type": ["string", "null"]},
            "points": {
                "type": "array",
                "items": _object(
                    {
                        "at": {**_TIME, "description": "Start of the bucket."},
                        "groups": {
                            "type": "array",
                            "items": _object(
                                {
                                    "key": {"type": ["string", "null"]},
                                    "agent_seconds": {"type": "number", "minimum": 0},
                                    "sessions": {"type": "integer", "minimum": 0},
                                    "failed": {"type": "integer", "minimum": 0},
                                }
                            ),
                        },
                    }
                ),
            },
        }
    ),
    "AgentEvent": _object(
        {
            "app_id": {"type": "string"},
            "agent_id": {"type": "string"},
            "state": _ref("State"),
            "at": {**_TIME, "description": "Event time of the transition."},
            "cause": {"type": "string"},
        }
    ),
    "PcuEvent": _object(
        {
            "app_id": {"type": "string"},
            "current": {"type": "integer", "minimum": 0},
            "cap": {"type": "integer", "minimum": 1},
            "at": {**_TIME, "description": "When the count was read."},
        }
    ),
    "AppCapacity": _object(
        {
            "app_id": {"type": "string"},
            "cap": {"type": "integer", "minimum": 1},
            "current": {"type": "integer", "minimum": 0},
            "available": {"type": "integer", "minimum": 0},
        }
    ),
    "AppList": _object({"items": {"type": "array", "items": _ref("AppCapacity")}}),
    "ErrorItem": _object(
        {
            "app_id": {"type": "string"},
            "agent_id": {"type": "string"},
            "at": {
                **_NULLABLE_TIME,
                "description": "Event time; null when the notification had no usable time "
                "(listed after every timed error).",
            },
            "module": {"type": ["string", "null"]},
            "code": {"type": ["integer", "null"]},
            "message": {"type": ["string", "null"]},
            "turn_id": {"type": ["string", "null"]},
        }
    ),
    "ErrorList": _list_of("ErrorItem"),
    "ErrorSummary": _object(
        {
            "app_id": {"type": "string"},
            "from": _TIME,
            "to": _TIME,
            "items": {
                "type": "array",
                "items": _object(
                    {
                        "module": {"type": ["string", "null"]},
                        "code": {"type": ["integer", "null"]},
                        "count": {"type": "integer", "minimum": 1},
                        "agents": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "Distinct agents with this error.",
                        },
                        "last_at": {**_TIME, "description": "The latest one's event time."},
                    }
                ),
            },
            "truncated": {
                "type": "boolean",
                "description": "More than 500 (module, code) groups: the 500 most frequent.",
            },
        }
    ),
    "TimelineItem": {
        "type": "object",
        "description": "`at` and `kind`, then the kind's fields: transition `from`, `to`, "
        "`cause`, `source`, `inferred`; error `module`, `code`, `message` (its first 1,000 "
        "characters), `turn_id`; metrics `turn_id`, `asr_ttlw`, `llm_ttfb`, `llm_ttfs`, "
        "`tts_ttfb`; turn `turn_id`, `start_at`, `end_at`, `start_type`, `end_type`, "
        "`e2e_latency_ms`, `asr_ttlw`, `llm_ttft`, `tts_ttfb`; call_state `direction`, `state`; "
        "warning `text`; transcript `source`, `messages` (how many, never their words). "
        "Figures are milliseconds.",
        "properties": {
            "at": {
                **_NULLABLE_TIME,
                "description": "Event time (a turn: its end, else its start; a call state: "
                "when reported, else received; a transcript: when stored). Null sorts last.",
            },
            "kind": {"enum": list(timeline.KINDS)},
        },
        "required": ["at", "kind"],
        "additionalProperties": True,
    },
    "Timeline": _object(
        {
            "agent_id": {"type": "string"},
            "app_id": {"type": "string"},
            "items": {"type": "array", "items": _ref("TimelineItem")},
            "truncated": {
                "type": "boolean",
                "description": f"More than {timeline.MAX_ITEMS:,} items: the first ones in "
                "time. Ask for fewer kinds with `kind`.",
            },
        }
    ),
    "ErasureRequest": {
        **_object(
            {
                "label": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": {"type": "string", "minLength": 1},
                    "description": "Exactly one label KEY and its VALUE.",
                }
            }
        ),
        "additionalProperties": False,
    },
    "ErasureCount": _object({"agents": {"type": "integer", "minimum": 0}}),
    "Health": _object({"status": {"const": "ok"}}),
    "Ready": _object(
        {
            "ok": {"type": "array", "items": {"type": "string"}},
            "failing": {"type": "object", "additionalProperties": {"type": "string"}},
        }
    ),
}

_LABEL_FILTER: Final = _param(
    "label.{KEY}",
    "query",
    "Only agents whose label KEY has this value, e.g. `label.tenant=acme` (one parameter "
    "per label; all must match).",
    {"type": "string"},
)
_SERIES: Final = [
    _param(
        "from",
        "query",
        "Series start (default: `to` minus 24 h; at most 366 days before `to`).",
        _TIME_PARAM,
    ),
    _param("to", "query", "Series end, exclusive (default: now).", _TIME_PARAM),
    _param(
        "step",
        "query",
        "Bucket length in seconds (at most 10,000 buckets).",
        {"type": "integer", "minimum": 1, "maximum": 31_622_400, "default": 300},
    ),
]
_AGENT_FILTERS: Final = [
    _param(
        "app_id",
        "query",
        "Only this app's agents (404 if it is not configured).",
        {"type": "string"},
    ),
    _param(
        "state",
        "query",
        "Only agents in these states (repeat for several).",
        {"type": "array", "items": _ref("State")},
        style="form",
        explode=True,
    ),
    _param("channel", "query", "Only agents in this channel.", {"type": "string"}),
    _LABEL_FILTER,
    _param("since", "query", "Started at or after this time.", _TIME_PARAM),
    _param("until", "query", "Started before this time.", _TIME_PARAM),
    _param("name", "query", "Only agents with exactly this name.", {"type": "string"}),
    _param(
        "has_errors",
        "query",
        "Only agents with (true) or without (false) a recorded error.",
        {"enum": ["true", "false"]},
    ),
    _param("stopped_since", "query", "Stopped at or after this time.", _TIME_PARAM),
    _param("stopped_until", "query", "Stopped before this time.", _TIME_PARAM),
    *_PAGE,
]

_ERROR_FILTERS: Final = [
    _param(
        "app_id",
        "query",
        "Only this app's errors (404 if it is not configured); else every app the token sees.",
        {"type": "string"},
    ),
    _param("agent_id", "query", "Only this agent's errors.", {"type": "string"}),
    _param("module", "query", "Only errors from this module.", {"type": "string"}),
    _param(
        "code",
        "query",
        "Only errors with this code.",
        {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    ),
    _param("since", "query", "Event time at or after this (untimed errors left out).", _TIME_PARAM),
    _param("until", "query", "Event time before this (untimed errors left out).", _TIME_PARAM),
    *_PAGE,
]

DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "convoai-ledger",
        "version": "1",
        "description": "Agora Conversational AI webhooks into a lifecycle ledger: agents, PCU "
        "against the cap, histories. Times are RFC 3339 UTC strings. A token from an app's "
        "`read_tokens` sees that app only: every other app is answered as if it did not exist "
        "(404, left out of lists). Erasure needs one of `ADMIN_API_TOKENS`.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": _SCHEMAS,
    },
    "paths": {
        "/v1/webhooks/agora/{app_id}": _webhook(with_app=True),
        "/v1/webhooks/agora": _webhook(with_app=False),
        "/v1/agents": _read(
            "Agents, newest first",
            "A page of agents.",
            "AgentList",
            params=_AGENT_FILTERS,
        ),
        "/v1/agents/{agent_id}": _read(
            "One agent with its transitions and errors",
            "The agent.",
            "AgentDetail",
            params=[_AGENT_ID],
            agent=True,
        ),
        "/v1/agents/{agent_id}/history": {
            **_read(
                "The agent's session history (transcript and turns)",
                "The history.",
                "History",
                params=[_AGENT_ID],
                agent=True,
            ),
            "delete": _erase_history(),
        },
        "/v1/apps/{app_id}/erasures": _erase_by_label(),
        "/v1/agents/{agent_id}/events": _read(
            "The agent's stored notifications in event order",
            "A page of notifications.",
            "EventList",
            params=[_AGENT_ID, *_PAGE],
            agent=True,
        ),
        "/v1/apps/{app_id}/notifications": _read(
            "Stored notifications not yet applied, newest first",
            "A page of unapplied notifications, each with its problem.",
            "UnappliedList",
            params=[
                _APP_ID,
                _param("status", "query", "Which notifications.", {"enum": ["unapplied"]}),
                *_PAGE,
            ],
        ),
        "/v1/apps/{app_id}/pcu": _read(
            "Current PCU against the cap, and the peak over a window",
            "The app's PCU.",
            "Pcu",
            params=[
                _APP_ID,
                _param(
                    "window",
                    "query",
                    "Peak window.",
                    {"enum": ["1h", "24h", "7d", "30d"], "default": "24h"},
                ),
            ],
        ),
        "/v1/apps/{app_id}/pcu/series": _read(
            "Exact concurrency per bucket (max and time-weighted average)",
            "The series; buckets start at `from` every `step` seconds, the last ends at `to`.",
            "PcuSeries",
            params=[_APP_ID, *_SERIES],
        ),
        "/v1/apps/{app_id}/latency": _read(
            "Turn latency per bucket: nearest-rank percentiles of the turns ending in it",
            "The series; buckets start at `from` every `step` seconds, the last ends at `to`.",
            "LatencySeries",
            params=[_APP_ID, *_SERIES, _LABEL_FILTER],
        ),
        "/v1/apps/{app_id}/usage": _read(
            "Agent time, sessions and failures per bucket, optionally by a label's value",
            "The series; buckets start at `from` every `step` seconds, the last ends at `to`. "
            "`agent_seconds` is the exact overlap of the agents' active intervals (open ones up "
            "to now) with the bucket, summed in microseconds; `sessions` the intervals starting "
            "in it; `failed` the agents stopped FAILED in it. Without `group_by` each point has "
            "one group, key null; with it, one group per label value present (null: the agents "
            "without that label), by key, null last.",
            "Usage",
            params=[
                _APP_ID,
                *_SERIES[:2],
                _param(
                    "step",
                    "query",
                    "Bucket length in seconds (at most 10,000 buckets).",
                    {"type": "integer", "minimum": 1, "maximum": 31_622_400, "default": 86_400},
                ),
                _param(
                    "group_by",
                    "query",
                    "`label.KEY`: group by the value of label KEY (1 to 128 characters).",
                    {"type": "string", "pattern": "^label\\..{1,128}$"},
                ),
            ],
        ),
        "/v1/apps": _read(
            "The apps the token sees, each with its current PCU against the cap",
            "Every app the token may see, by App ID.",
            "AppList",
            params=[],
            found=False,
        ),
        "/v1/errors": _read(
            "Errors across agents, newest first (event time, then the later recorded)",
            "A page of errors.",
            "ErrorList",
            params=_ERROR_FILTERS,
        ),
        "/v1/apps/{app_id}/errors/summary": _read(
            "The app's errors by module and code, most frequent first",
            "Counts per (module, code) of the errors with event time in [from, to); ties by "
            "module, then code, ascending, absent ones last.",
            "ErrorSummary",
            params=[
                _APP_ID,
                _param(
                    "from",
                    "query",
                    "Start (default: `to` minus 24 h; at most 366 days before `to`).",
                    _TIME_PARAM,
                ),
                _param("to", "query", "End, exclusive (default: now).", _TIME_PARAM),
            ],
        ),
        "/v1/agents/{agent_id}/timeline": _read(
            "The agent's story in event-time order: transitions, errors, metrics, turns, "
            "call states, its warning, its transcript's arrival",
            "The timeline; ties in time by kind (in the order of `kind`'s values), then as "
            "recorded.",
            "Timeline",
            params=[
                _AGENT_ID,
                _param(
                    "kind",
                    "query",
                    "Only these kinds (repeat for several); default all.",
                    {"type": "array", "items": {"enum": list(timeline.KINDS)}},
                    style="form",
                    explode=True,
                ),
            ],
            agent=True,
        ),
        "/v1/stream": _stream(),
        "/healthz": _plain(
            "The process is up",
            {"200": {"description": "Up.", "content": {JSON: {"schema": _ref("Health")}}}},
        ),
        "/readyz": _plain(
            "The database is reachable and the schema at head",
            {"200": _answer("Ready.", "Ready"), "503": _answer("Not ready.", "Ready")},
        ),
        "/metrics": _plain(
            "Prometheus metrics (text exposition format)",
            {
                "200": {
                    "description": "Metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        "/openapi.json": _plain(
            "This document",
            {
                "200": {
                    "description": "OpenAPI 3.1.",
                    "content": {JSON: {"schema": {"type": "object"}}},
                }
            },
        ),
    },
}
