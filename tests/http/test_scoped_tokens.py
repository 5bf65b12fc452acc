"""App-scoped read tokens (CONTRACT §8): a token from an app's `read_tokens` sees that app only,
and about any other app every endpoint answers exactly as about an app that does not exist."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from service import config
from service.app import create_app
from tests.factories import (
    ADMIN_TOKEN,
    APP_ID,
    READ_TOKEN,
    SCOPED_TOKEN,
    SECOND_APP,
    SECOND_SCOPED_TOKEN,
    SECOND_SECRET,
    SECRET,
    deliver,
    environment,
    payload,
    post,
    reader_headers,
    scoped_environment,
)

START = 1_751_400_000
UNKNOWN_APP = "no-such-app"


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """Two apps; `shared` exists in both, `only-one` and `only-two` in one each."""
    settings = config.load(scoped_environment(database_url, tmp_path))
    with TestClient(create_app(settings)) as test_client:
        for app_id, secret, agents in (
            (APP_ID, SECRET, ("shared", "only-one")),
            (SECOND_APP, SECOND_SECRET, ("shared", "only-two")),
        ):
            for agent_id in agents:
                session(test_client, app_id=app_id, secret=secret, agent_id=agent_id)
        # An unapplied notification in each app (no usable agent id).
        for app_id, secret in ((APP_ID, SECRET), (SECOND_APP, SECOND_SECRET)):
            assert post(test_client, deliver(110, {}, secret=secret), app_id).json() == {
                "status": "unapplied"
            }
        yield test_client


def session(client: TestClient, *, app_id: str, secret: str, agent_id: str) -> None:
    for event_type, fields in (
        (101, {"start_ts": START}),
        (102, {"start_ts": START, "stop_ts": START + 60, "status": "STOPPED"}),
        (103, {"contents": [{"role": "user", "content": f"words of {app_id}"}]}),
    ):
        response = post(
            client, deliver(event_type, payload(agent_id, **fields), secret=secret), app_id
        )
        assert response.json() == {"status": "accepted"}


def read_routes() -> list[str]:
    """Every GET route under /v1 the app serves (the insight routes and the stream included)."""
    app = create_app(config.load(environment(None)))
    return sorted(
        route.path
        for route in app.routes
        if isinstance(route, Route)
        and route.path.startswith("/v1/")
        and "GET" in (route.methods or ())
    )


def get(client: TestClient, path: str, token: str = SCOPED_TOKEN) -> tuple[int, Any]:
    response = client.get(path, headers=reader_headers(token))
    return response.status_code, response.json()


@pytest.mark.parametrize("route", [r for r in read_routes() if "{app_id}" in r])
def test_another_apps_routes_answer_exactly_as_an_unknown_apps(
    client: TestClient, route: str
) -> None:
    other = get(client, route.replace("{app_id}", SECOND_APP).replace("{agent_id}", "shared"))
    unknown = get(client, route.replace("{app_id}", UNKNOWN_APP).replace("{agent_id}", "shared"))
    assert other == unknown == (404, {"error": "not_found"})
    # The app's own token reads it, so the 404 is not about the route.
    own = get(
        client,
        route.replace("{app_id}", SECOND_APP).replace("{agent_id}", "shared"),
        SECOND_SCOPED_TOKEN,
    )
    assert own[0] == 200, own


@pytest.mark.parametrize("route", [r for r in read_routes() if "{agent_id}" in r])
def test_another_apps_agent_answers_exactly_as_an_agent_never_seen(
    client: TestClient, route: str
) -> None:
    other = get(client, route.replace("{agent_id}", "only-two"))
    unknown = get(client, route.replace("{agent_id}", "never-seen"))
    assert other == unknown == (404, {"error": "not_found"})
    named = get(client, route.replace("{agent_id}", "shared") + f"?app_id={SECOND_APP}")
    named_unknown = get(client, route.replace("{agent_id}", "shared") + f"?app_id={UNKNOWN_APP}")
    assert named == named_unknown == (404, {"error": "not_found"})


@pytest.mark.parametrize("route", [r for r in read_routes() if "{agent_id}" in r])
def test_an_agent_id_in_two_apps_is_never_ambiguous_to_a_scoped_token(
    client: TestClient, route: str
) -> None:
    status, body = get(client, route.replace("{agent_id}", "shared"))
    assert status == 200, body
    assert "ambiguous" not in str(body) and SECOND_APP not in str(body)
    # A token that sees both apps is told they both hold it.
    assert get(client, route.replace("{agent_id}", "shared"), READ_TOKEN) == (
        409,
        {"error": "ambiguous_agent", "app_ids": [APP_ID, SECOND_APP]},
    )


@pytest.mark.parametrize("route", [r for r in read_routes() if "{" not in r])
def test_an_app_id_filter_on_another_app_answers_as_on_an_unknown_app(
    client: TestClient, route: str
) -> None:
    other = get(client, f"{route}?app_id={SECOND_APP}")
    unknown = get(client, f"{route}?app_id={UNKNOWN_APP}")
    assert other == unknown
    assert other[0] in (400, 404), other  # 400 where the route takes no app_id


def test_a_scoped_token_lists_only_its_apps_agents(client: TestClient) -> None:
    def listed(token: str) -> list[tuple[str, str]]:
        status, body = get(client, "/v1/agents?limit=500", token)
        assert status == 200
        return sorted((item["app_id"], item["agent_id"]) for item in body["items"])

    assert listed(SCOPED_TOKEN) == [(APP_ID, "only-one"), (APP_ID, "shared")]
    assert listed(SECOND_SCOPED_TOKEN) == [(SECOND_APP, "only-two"), (SECOND_APP, "shared")]
    everything = [
        (APP_ID, "only-one"),
        (APP_ID, "shared"),
        (SECOND_APP, "only-two"),
        (SECOND_APP, "shared"),
    ]
    assert listed(READ_TOKEN) == everything
    assert listed(ADMIN_TOKEN) == everything  # admin tokens read like read tokens


def test_a_scoped_token_reads_its_own_app_in_full(client: TestClient) -> None:
    assert get(client, f"/v1/apps/{APP_ID}/pcu")[1]["app_id"] == APP_ID
    status, history = get(client, "/v1/agents/shared/history")
    assert status == 200
    assert history["contents"] == [{"role": "user", "content": f"words of {APP_ID}"}]
    status, events = get(client, "/v1/agents/shared/events")
    assert status == 200 and len(events["items"]) == 3
    status, unapplied = get(client, f"/v1/apps/{APP_ID}/notifications?status=unapplied")
    assert status == 200 and len(unapplied["items"]) == 1


def test_nothing_a_scoped_token_reads_mentions_another_app(client: TestClient) -> None:
    for path in (
        "/v1/agents?limit=500",
        "/v1/agents/shared",
        "/v1/agents/shared/history",
        "/v1/agents/shared/events",
        f"/v1/apps/{APP_ID}/pcu",
        f"/v1/apps/{APP_ID}/pcu/series",
        f"/v1/apps/{APP_ID}/usage?group_by=label.k",
        f"/v1/apps/{APP_ID}/notifications",
    ):
        scoped = client.get(path, headers=reader_headers(SCOPED_TOKEN))
        assert scoped.status_code == 200, (path, scoped.text)
        assert SECOND_APP not in scoped.text, path
        assert f"words of {SECOND_APP}" not in scoped.text, path
