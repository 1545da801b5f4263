"""Named SQL queries loaded from ``.sql`` files shipped next to the code.

A file holds blocks that start with ``-- name: <query_name>``. ``{schema}``
placeholders are bound to a quoted identifier once, so schema names never reach
SQL as raw text.
"""

from __future__ import annotations

import re
from importlib import resources

from psycopg import sql

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


class Queries:
    """The queries of one ``.sql`` file, bound to one schema."""

    def __init__(self, package: str, filename: str, schema: str) -> None:
        text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
        parts = _BLOCK.split(text)
        identifier = sql.Identifier(schema)
        # Rendered once: psycopg would otherwise render a Composed query on every call.
        self._queries = {
            name: sql.SQL(body.strip()).format(schema=identifier).as_bytes(None)
            for name, body in zip(parts[1::2], parts[2::2], strict=True)
        }

    def __getitem__(self, name: str) -> bytes:
        return self._queries[name]
