"""The database schema's version: migrate to head, and tell whether a database is at head.

Revisions live in `migrations/` (alembic). `upgrade()` backs `convoai-ledger migrate` (a Kubernetes
Job before each rollout, and `make run`); `/readyz` asks `serves()` about the database's revision.
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


@cache
def known() -> frozenset[str]:
    """Every revision in the script directory."""
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(revision.revision for revision in script.walk_revisions())


def serves(revision: str | None) -> bool:
    """Whether this build can serve a database at `revision`.

    At head, yes; behind head or empty, no. At a revision this build does not know, yes: that is
    a newer release's, migrated by the Job that runs before its rollout, and revisions applied
    before a rollout only add (expand/contract), so the pods still running this release keep
    serving until they are replaced.
    """
    return revision is not None and (revision == head() or revision not in known())


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` (psycopg form) to `revision`; safe to run concurrently."""
    command.upgrade(alembic_config(url), revision)
