"""The agents list's query parameters: the API's filters (`GET /v1/agents`), as shareable URLs.

The canonical URL of a list holds exactly the API's parameters (`app_id`, `state` repeated,
`channel`, `label.KEY=VALUE`, `since`, `until`, `limit`, `cursor`), so a link people share is
also the API call that answers it. The filter form may send what only a form can (empty fields,
`label=KEY=VALUE`, times without an offset, taken as UTC); `canonical` says where such a request
is redirected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from starlette.datastructures import QueryParams

from service import lifecycle, queries
from service.errors import InvalidParameter

LABEL_PREFIX: Final = "label."
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
KNOWN: Final = frozenset({"app_id", "state", "channel", "since", "until", "limit", "cursor"})
STATES: Final = tuple(state.value for state in lifecycle.State)


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    app_id: str | None = None
    states: tuple[str, ...] = ()
    channel: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def where(self, apps: frozenset[str]) -> queries.AgentFilter:
        return queries.AgentFilter(
            app_ids=[self.app_id] if self.app_id is not None else sorted(apps),
            states=self.states,
            channel=self.channel,
            labels=self.labels,
            since=self.since,
            until=self.until,
        )

    def params(self, *, cursor: str | None = None) -> list[tuple[str, str]]:
        """The canonical query parameters (the first page unless `cursor` is given)."""
        pairs: list[tuple[str, str]] = []
        if self.app_id is not None:
            pairs.append(("app_id", self.app_id))
        pairs += [("state", state) for state in self.states]
        if self.channel is not None:
            pairs.append(("channel", self.channel))
        pairs += [(LABEL_PREFIX + key, value) for key, value in sorted(self.labels.items())]
        for name, at in (("since", self.since), ("until", self.until)):
            if at is not None:
                pairs.append((name, queries.rfc3339(at) or ""))
        if self.limit != DEFAULT_LIMIT:
            pairs.append(("limit", str(self.limit)))
        if cursor is not None:
            pairs.append(("cursor", cursor))
        return pairs

    @property
    def filtered(self) -> bool:
        return bool(self.app_id or self.states or self.channel or self.labels) or bool(
            self.since or self.until
        )


def parse(params: QueryParams, *, apps: frozenset[str]) -> Listing:
    """The listing a query asks for; `InvalidParameter` naming the parameter at fault."""
    form = _form_values(params)
    labels = _labels(params)
    if "label" in form:
        key, sep, value = form["label"].partition("=")
        if not sep or not key.strip():
            raise InvalidParameter("label: KEY=VALUE, such as tenant=acme")
        labels[key.strip()] = value.strip()
    app_id = form.get("app_id")
    if app_id is not None and app_id not in apps:
        raise InvalidParameter("app_id: no such app")
    return Listing(
        app_id=app_id,
        states=tuple(_state(value) for value in params.getlist("state") if value),
        channel=form.get("channel"),
        labels=labels,
        since=_time(form, "since"),
        until=_time(form, "until"),
        limit=_limit(form.get("limit")),
        cursor=form.get("cursor"),
    )


def canonical(params: QueryParams, listing: Listing) -> bool:
    """Whether the query is already the listing's canonical URL (else redirect to it)."""
    return sorted(params.multi_items()) == sorted(listing.params(cursor=listing.cursor))


def _form_values(params: QueryParams) -> dict[str, str]:
    """Single-valued parameters with a value (a form sends empty fields too)."""
    values: dict[str, str] = {}
    for name in params:
        if name == "state" or name.startswith(LABEL_PREFIX):
            continue
        if name not in KNOWN and name != "label":
            raise InvalidParameter(f"{name}: unknown parameter")
        given = [value.strip() for value in params.getlist(name) if value.strip()]
        if len(given) > 1:
            raise InvalidParameter(f"{name}: given more than once")
        if given:
            values[name] = given[0]
    return values


def _labels(params: QueryParams) -> dict[str, str]:
    labels: dict[str, str] = {}
    for name in params:
        if name.startswith(LABEL_PREFIX):
            key, values = name[len(LABEL_PREFIX) :], params.getlist(name)
            if not key or len(values) != 1 or not values[0]:
                raise InvalidParameter(f"{name}: label.KEY=VALUE with a key and one value")
            labels[key] = values[0]
    return labels


def _state(value: str) -> str:
    try:
        return lifecycle.State(value.upper()).value
    except ValueError:
        raise InvalidParameter(f"state: one of {', '.join(STATES)}") from None


def _time(form: Mapping[str, str], name: str) -> datetime | None:
    raw = form.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidParameter(f"{name}: a time such as 2026-01-31T12:00:00Z") from None
    # A form's date-time field has no offset: the console shows UTC, so it means UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidParameter(f"limit: an integer from 1 to {MAX_LIMIT}")
    return int(raw)
