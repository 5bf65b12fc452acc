"""Factories and helpers shared by the tests: signed deliveries, SQL assertions, polling."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from starlette.testclient import TestClient

from service import events, signatures

APP_ID = "app-one"
SECRET = "ncs-secret-one"
READ_TOKEN = "reader-token-one"


def with_database(url: str, name: str, *, driver: bool = False) -> str:
    parts = urlsplit(url)
    scheme = "postgresql+psycopg" if driver else "postgresql"
    return urlunsplit(parts._replace(scheme=scheme, path=f"/{name}"))


def admin(postgres_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(postgres_url, autocommit=True)


class Sql:
    """Plain SQL against the test database, for asserting on rows."""

    def __init__(self, url: str) -> None:
        self.url = with_database(url, urlsplit(url).path.lstrip("/"))

    def rows(self, query: str, **params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, row_factory=dict_row) as conn:
            return list(conn.execute(query, params).fetchall())

    def value(self, query: str, **params: Any) -> Any:
        rows = self.rows(query, **params)
        return next(iter(rows[0].values())) if rows else None

    def execute(self, query: str, **params: Any) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query, params)

    def count(self, table: str) -> int:
        return int(self.value(f"SELECT count(*) FROM {table}"))


def environment(database_url: str | None, **overrides: str) -> dict[str, str]:
    env = {
        "AGORA_APP_ID": APP_ID,
        "AGORA_WEBHOOK_SECRETS": SECRET,
        "READ_API_TOKENS": READ_TOKEN,
        "AGORA_API_BASE_URL": "http://127.0.0.1:9/api/conversational-ai-agent",
        "RECONCILE_INTERVAL_S": "0",
        "LOG_LEVEL": "warning",
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(overrides)
    return env


SECOND_APP = "app-two"
SECOND_SECRET = "ncs-secret-two"


def apps_file(directory: Path, *apps: tuple[str, str], extra: str = "") -> str:
    """A LEDGER_APPS_FILE with these (app_id, webhook secret) pairs; answers its path."""
    path = directory / "apps.toml"
    path.write_text(
        "".join(
            f"[[apps]]\napp_id = '{app_id}'\nwebhook_secrets = ['{secret}']\n{extra}\n"
            for app_id, secret in apps
        )
    )
    return str(path)


@dataclass(frozen=True, slots=True)
class Delivery:
    body: bytes
    headers: dict[str, str]
    notice_id: str


def deliver(
    event_type: int,
    payload: Mapping[str, Any],
    *,
    notice_id: str | None = None,
    notify_ms: int | None = None,
    secret: str = SECRET,
    product_id: int = events.CONVOAI_PRODUCT_ID,
) -> Delivery:
    """A signed notification exactly as Agora's NCS would send it."""
    notice_id = notice_id or f"{uuid.uuid4()}"
    body = events.build(
        event_type,
        payload,
        notice_id=notice_id,
        notify_ms=notify_ms if notify_ms is not None else int(time.time() * 1000),
        product_id=product_id,
    )
    headers = {"Content-Type": "application/json", **signatures.sign(body, secret)}
    return Delivery(body=body, headers=headers, notice_id=notice_id)


def post(client: TestClient, delivery: Delivery, app_id: str = APP_ID) -> Any:
    return client.post(
        f"/v1/webhooks/agora/{app_id}", content=delivery.body, headers=delivery.headers
    )


def payload(agent_id: str, **fields: Any) -> dict[str, Any]:
    """An agent payload with the fields every ConvoAI event carries."""
    return {
        "agent_id": agent_id,
        "name": f"name-{agent_id}",
        "channel": f"chan-{agent_id}",
        **fields,
    }


def load_payload(name: str) -> dict[str, Any]:
    path = os.path.join(os.path.dirname(__file__), "payloads", name)
    with open(path, encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
        return loaded


def poll(check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """`poll` for coroutines: `check` runs in a thread, so it may block (SQL)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(check):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def reader_headers(token: str = READ_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN_TOKEN = "admin-token-one"
SCOPED_TOKEN = "scoped-reader-one"  # reads APP_ID only
SECOND_SCOPED_TOKEN = "scoped-reader-two"  # reads SECOND_APP only


def scoped_environment(
    database_url: str | None, directory: Path, **overrides: str
) -> dict[str, str]:
    """APP_ID and SECOND_APP from an apps file, each with its own scoped read token, plus the
    global READ_TOKEN and ADMIN_TOKEN."""
    path = directory / "scoped-apps.toml"
    path.write_text(
        f"[[apps]]\napp_id = '{APP_ID}'\nwebhook_secrets = ['{SECRET}']\n"
        f"read_tokens = ['{SCOPED_TOKEN}']\n"
        f"[[apps]]\napp_id = '{SECOND_APP}'\nwebhook_secrets = ['{SECOND_SECRET}']\n"
        f"read_tokens = ['{SECOND_SCOPED_TOKEN}']\n"
    )
    scoped = {
        "AGORA_APP_ID": "",
        "AGORA_WEBHOOK_SECRETS": "",
        "LEDGER_APPS_FILE": str(path),
        "ADMIN_API_TOKENS": ADMIN_TOKEN,
    }
    return environment(database_url, **{**scoped, **overrides})
