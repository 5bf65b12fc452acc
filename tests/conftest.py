"""Shared fixtures: a real PostgreSQL, a migrated template database, a client.

The server is `TEST_DATABASE_URL` when set, else a throw-away embedded PostgreSQL for the session.
`alembic upgrade head` runs once into a template database; every test that touches the database
gets its own fresh copy (`CREATE DATABASE … TEMPLATE …`), dropped afterwards, so tests can commit,
run concurrently against one database, and never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from starlette.testclient import TestClient

from service import config, localdb, schema
from service.app import create_app
from tests.factories import Sql, admin, environment, with_database

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A libpq URL (postgresql://) of a server where we may create databases."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield urlunsplit(urlsplit(given)._replace(scheme="postgresql"))
        return
    with localdb.temporary() as server:
        yield server.url


@pytest.fixture(scope="session")
def template_database(postgres_url: str) -> Iterator[str]:
    name = f"ledger_template_{os.getpid()}"
    with admin(postgres_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    schema.upgrade(with_database(postgres_url, name, driver=True))
    yield name
    with admin(postgres_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def create_database(postgres_url: str, template_database: str) -> Iterator[Callable[[], str]]:
    """Make fresh databases at head (as `postgresql+psycopg://` URLs); all dropped at the end."""
    made: list[str] = []

    def create() -> str:
        name = f"ledger_test_{os.getpid()}_{next(_names)}"
        with admin(postgres_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        made.append(name)
        return with_database(postgres_url, name, driver=True)

    yield create
    with admin(postgres_url) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_url: str, create_database: Callable[[], str]) -> Iterator[str]:
    """A fresh database at head for one test, dropped afterwards."""
    url = create_database()
    yield url
    with admin(postgres_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(postgres_url: str) -> Iterator[str]:
    """A database with nothing in it, not even the schema."""
    name = f"ledger_empty_{os.getpid()}_{next(_names)}"
    with admin(postgres_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(postgres_url, name, driver=True)
    with admin(postgres_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sql(database_url: str) -> Sql:
    return Sql(database_url)


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., config.Settings]:
    def make(**overrides: str) -> config.Settings:
        return config.load(environment(database_url, **overrides))

    return make


@pytest.fixture
def client(make_settings: Callable[..., config.Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
