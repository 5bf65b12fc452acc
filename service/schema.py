"""The database schema's version: migrate to head, and tell whether a database is at head.

Revisions live in `migrations/` (alembic). `upgrade()` backs `convoai-ledger migrate` (a Kubernetes
Job before each rollout, and `make run`); `/readyz` compares the database with `head()`.
"""

from __future__ import annotations

from functools import cache

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from service import db


def alembic_config(url: str | None = None) -> Config:
    """An alembic `Config` for our script directory; `url` overrides the environment's."""
    cfg = Config()
    cfg.set_main_option("script_location", str(db.migrations_path()))
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


@cache
def head() -> str:
    """The newest revision in the script directory."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {len(heads)}")
    return heads[0]


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` (psycopg form) to `revision`; safe to run concurrently."""
    command.upgrade(alembic_config(url), revision)
