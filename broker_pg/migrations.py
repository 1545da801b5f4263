"""Apply the numbered SQL files of ``migrations/`` in order, once each.

Safe on every deploy and from several processes at once: a transaction-scoped
advisory lock serialises runners, and each file is applied in its own
transaction together with its row in ``schema_migrations``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from psycopg import sql

from .database import DEFAULT_SCHEMA, Database

logger = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
#: Arbitrary constant key for pg_advisory_xact_lock, so runners take turns.
_LOCK_KEY = 0x7A617274


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _migrations_dir() -> Traversable:
    # In a wheel the files ship inside the package; in a checkout they sit at the top level.
    packaged = resources.files("broker_pg").joinpath("_migrations")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def available_migrations() -> list[Migration]:
    """All migrations shipped with this version, in order."""
    found = []
    for entry in _migrations_dir().iterdir():
        if match := _FILE_NAME.match(entry.name):
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def migrate(url: str | None = None, *, schema: str = DEFAULT_SCHEMA) -> list[str]:
    """Bring ``schema`` up to date; return the names of the migrations applied now."""
    db = Database(url, schema=schema, pool_size=1)
    try:
        return apply_migrations(db)
    finally:
        db.close()


def pending_migrations(db: Database) -> list[str]:
    """The migrations shipped with this version that ``db``'s schema lacks (all, if none ran)."""
    with db.connection() as conn:
        table = conn.execute(
            "SELECT to_regclass(quote_ident(%s) || %s)", (db.schema, ".schema_migrations")
        ).fetchone()
        applied: set[int] = set()
        if table is not None and table[0] is not None:
            query = sql.SQL("SELECT version FROM {}.schema_migrations")
            rows = conn.execute(query.format(sql.Identifier(db.schema))).fetchall()
            applied = {version for (version,) in rows}
    return [f"{m.version:04d}_{m.name}" for m in available_migrations() if m.version not in applied]


def apply_migrations(db: Database) -> list[str]:
    """Apply pending migrations through ``db``; return the names applied now."""
    schema = sql.Identifier(db.schema)
    applied_now = []
    with db.connection() as conn:
        for migration in available_migrations():
            with conn.transaction():
                # A migration of a large table takes as long as it takes.
                conn.execute("SET LOCAL statement_timeout = 0")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                        " version integer PRIMARY KEY, name text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(schema)
                )
                done = conn.execute(
                    sql.SQL("SELECT 1 FROM {}.schema_migrations WHERE version = %s").format(schema),
                    (migration.version,),
                ).fetchone()
                if done:
                    continue
                # SET LOCAL scopes the search path to this transaction, so the
                # plain SQL files create their objects inside the target schema.
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
                conn.execute(migration.sql.encode())
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)"
                    ).format(schema),
                    (migration.version, migration.name),
                )
                label = f"{migration.version:04d}_{migration.name}"
                logger.info("Applied migration %s to schema %s", label, db.schema)
                applied_now.append(label)
    return applied_now
