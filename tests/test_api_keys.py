"""API keys: created, listed, revoked and verified on a real PostgreSQL; and their commands."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from psycopg import sql

from broker_pg import PostgresBroker
from tests.support import Cli, rows, scalar, wait_until
from zart_dramatiq.api_keys import SCOPES, ApiKey, ApiKeys
from zart_dramatiq.store import Store

TOKEN = re.compile(r"zk_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})")


@pytest.fixture
def keys(broker: PostgresBroker) -> ApiKeys:
    return ApiKeys(Store(broker.db))


def parts(token: str) -> tuple[str, str]:
    match = TOKEN.fullmatch(token)
    assert match, token
    return match["id"], match["secret"]


def key_row(db: psycopg.Connection, schema: str, key_id: str) -> tuple[Any, ...]:
    [row] = rows(
        db,
        schema,
        "SELECT name, scopes, hash, last_used_at, revoked_at, xmin::text"
        " FROM {s}.api_keys WHERE id = %s",
        key_id,
    )
    return row


def test_a_created_key_verifies_as_itself(keys: ApiKeys) -> None:
    before = datetime.now(UTC)
    key, token = keys.create(["events", "read", "events"], name="webhooks")
    key_id, _ = parts(token)
    assert key == ApiKey(
        id=key_id,
        name="webhooks",
        scopes=frozenset({"read", "events"}),
        created_at=key.created_at,
        last_used_at=None,
        revoked_at=None,
    )
    assert key.created_at >= before - timedelta(seconds=5)

    verified = keys.verify(token)
    assert verified is not None
    assert verified.id == key.id
    assert verified.scopes == {"read", "events"}
    assert verified.last_used_at is not None
    assert keys.get(key.id) == verified

    # Every key is its own: another one's token verifies as the other one.
    other, other_token = keys.create(["admin"])
    assert other.name is None
    assert other.id != key.id
    assert other_token != token
    assert (verified_other := keys.verify(other_token)) is not None
    assert verified_other.id == other.id
    assert verified_other.scopes == {"admin"}


def test_the_table_keeps_the_sha256_of_the_secret_never_the_key(
    keys: ApiKeys, db: psycopg.Connection, schema: str
) -> None:
    key, token = keys.create(["admin"], name="ops")
    key_id, secret = parts(token)
    assert key_id == key.id
    name, scopes, digest, _, _, _ = key_row(db, schema, key_id)
    assert (name, scopes) == ("ops", ["admin"])
    assert bytes(digest) == hashlib.sha256(secret.encode()).digest()
    # Neither the key nor its secret appears anywhere in the row, in any form.
    text = scalar(db, schema, "SELECT t::text FROM {s}.api_keys AS t WHERE id = %s", key_id)
    for form in (token, secret, secret.encode().hex()):
        assert form not in text


def test_list_returns_every_key_oldest_first_revoked_ones_included(keys: ApiKeys) -> None:
    assert keys.list() == []
    first, _ = keys.create(["read"], name="first")
    second, _ = keys.create(["events"], name="second")
    third, _ = keys.create(SCOPES)
    assert keys.revoke(second.id)
    listed = keys.list()
    assert [k.id for k in listed] == [first.id, second.id, third.id]
    assert [k.revoked for k in listed] == [False, True, False]
    assert listed[2].scopes == frozenset(SCOPES)


def test_tampered_malformed_and_unknown_tokens_are_refused(
    keys: ApiKeys, db: psycopg.Connection, schema: str
) -> None:
    key, token = keys.create(["read"])
    key_id, secret = parts(token)
    assert key_id == key.id
    _, other_token = keys.create(["read"])
    other_id, other_secret = parts(other_token)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    refused = [
        f"zk_{key_id}_{flipped}",  # one character changed
        f"zk_{key_id}_{other_secret}",  # another key's secret
        f"zk_{other_id}_{secret}",  # this secret, another id
        f"zk_{'0' * 12}_{secret}",  # no such id
        f"zk_{key_id}_{secret[:-1]}",  # cut short
        f"{token}A",  # too long
        f" {token}",
        f"{token}\n",
        f"Bearer {token}",
        f"zk_{key_id.upper()}_{secret}",
        f"zk_{key_id}-{secret}",
        f"zk-{key_id}_{secret}",
        f"{key_id}_{secret}",
        f"zk_{key_id}_{secret[:-1]}é",
        f"zk_{key_id}_",
        "zk_",
        "",
        secret,
        key_id,
    ]
    for attempt in refused:
        assert keys.verify(attempt) is None, attempt
    # Failed attempts record no use.
    assert key_row(db, schema, key_id)[3] is None
    assert keys.verify(token) is not None


def test_a_revoked_key_is_refused_and_revoking_again_says_so(
    keys: ApiKeys, db: psycopg.Connection, schema: str
) -> None:
    key, token = keys.create(["events"])
    kept, kept_token = keys.create(["events"])
    assert keys.verify(token) is not None

    assert keys.revoke(key.id) is True
    assert keys.verify(token) is None
    revoked = keys.get(key.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert key_row(db, schema, key.id)[4] == revoked.revoked_at

    # Already revoked, unknown, or not even an id: False, and nothing changes.
    assert keys.revoke(key.id) is False
    assert keys.get(key.id) == revoked
    assert keys.revoke("0" * 12) is False
    assert keys.revoke("not an id") is False
    # The other key is untouched.
    assert keys.verify(kept_token) is not None
    assert (still := keys.get(kept.id)) is not None and not still.revoked


def test_scopes_must_be_known_and_at_least_one(
    keys: ApiKeys, db: psycopg.Connection, schema: str
) -> None:
    with pytest.raises(ValueError, match=r"'write'.*read, events, admin"):
        keys.create(["read", "write"])
    with pytest.raises(ValueError, match=r"'Admin', 'all'.*read, events, admin"):
        keys.create(["all", "Admin"])
    with pytest.raises(ValueError, match=r"at least one scope.*read, events, admin"):
        keys.create([])
    with pytest.raises(TypeError, match="not the string 'read'"):
        keys.create("read")
    assert scalar(db, schema, "SELECT count(*) FROM {s}.api_keys") == 0


@pytest.mark.parametrize(
    ("scopes", "digest"),
    [
        ("{write}", b"\x00" * 32),
        ("{}", b"\x00" * 32),
        ("{read,NULL}", b"\x00" * 32),
        ("{read}", b"zk_0123456789ab_secret"),
    ],
    ids=["unknown scope", "no scope", "null scope", "not a sha256"],
)
def test_the_table_refuses_bad_scopes_and_anything_but_a_digest(
    db: psycopg.Connection, schema: str, scopes: str, digest: bytes
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        rows(
            db,
            schema,
            "INSERT INTO {s}.api_keys (id, scopes, hash) VALUES ('k', %s, %s) RETURNING id",
            scopes,
            digest,
        )


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    """The time, frozen at 2030-01-01 12:00 UTC until the test moves it."""
    with freeze_time("2030-01-01 12:00:00") as frozen:
        assert isinstance(frozen, FrozenDateTimeFactory)
        yield frozen


def test_use_is_recorded_at_most_once_a_minute(
    keys: ApiKeys, db: psycopg.Connection, schema: str, clock: FrozenDateTimeFactory
) -> None:
    key, token = keys.create(["read"])
    start = datetime(2030, 1, 1, 12, tzinfo=UTC)

    first = keys.verify(token)
    assert first is not None and first.last_used_at == start
    _, _, _, used_at, _, version = key_row(db, schema, key.id)
    assert used_at == start

    # Within the minute: verified, and nothing written (the row version stays).
    for seconds in (1, 30, 59):
        clock.move_to(start + timedelta(seconds=seconds))
        again = keys.verify(token)
        assert again is not None and again.last_used_at == start
        assert key_row(db, schema, key.id)[3:] == (start, None, version)

    # A minute on, the use is recorded again, once.
    later = start + timedelta(minutes=1, seconds=5)
    clock.move_to(later)
    touched = keys.verify(token)
    assert touched is not None and touched.last_used_at == later
    _, _, _, used_at, _, touched_version = key_row(db, schema, key.id)
    assert used_at == later and touched_version != version
    assert keys.verify(token) is not None
    assert key_row(db, schema, key.id)[5] == touched_version


def test_a_later_use_recorded_by_another_process_is_kept(
    keys: ApiKeys, db: psycopg.Connection, schema: str, clock: FrozenDateTimeFactory
) -> None:
    key, token = keys.create(["read"])
    start = datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert keys.verify(token) is not None
    # Another process, whose clock runs 30 s ahead, recorded a use after this one.
    ahead = start + timedelta(seconds=90)
    query = "UPDATE {s}.api_keys SET last_used_at = %s WHERE id = %s RETURNING id"
    rows(db, schema, query, ahead, key.id)
    version = key_row(db, schema, key.id)[5]
    clock.move_to(start + timedelta(seconds=61))
    verified = keys.verify(token)
    assert verified is not None and verified.last_used_at == ahead
    assert key_row(db, schema, key.id)[3:] == (ahead, None, version)


def test_of_two_processes_recording_a_use_at_once_one_writes(
    keys: ApiKeys, db: psycopg.Connection, schema: str, database_url: str
) -> None:
    key, token = keys.create(["read"])
    # The other process has recorded a use and not committed yet: it holds the row.
    other_use = datetime(2031, 1, 1, tzinfo=UTC)
    with psycopg.connect(database_url) as other:
        query = sql.SQL("UPDATE {}.api_keys SET last_used_at = %s WHERE id = %s")
        other.execute(query.format(sql.Identifier(schema)), (other_use, key.id))
        # This verification read the row before that commit: it finds no use
        # recorded, and its own write waits for the row.
        blocker = other.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            verifying = pool.submit(keys.verify, token)
            try:
                wait_until(
                    lambda: (
                        verifying.done()
                        or scalar(
                            db,
                            schema,
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE %s = ANY (pg_blocking_pids(pid))",
                            blocker,
                        )
                        == 1
                    ),
                    message="the verification's write to wait for the other process's",
                )
                assert not verifying.done(), verifying.result()
            finally:
                other.commit()
            verified = verifying.result(timeout=10)
    # Once the other process committed, the guard saw its use: nothing was written.
    assert verified is not None and verified.last_used_at is None
    assert key_row(db, schema, key.id)[3] == other_use


# -- The commands -------------------------------------------------------------------------------


def test_keys_create_prints_the_key_alone_on_the_last_line_and_it_verifies(
    cli: Cli, keys: ApiKeys
) -> None:
    out = cli.ok("keys", "create", "--scope", "events", "--scope", "read", "--name", "webhooks")
    *about, token = out.splitlines()
    key_id, _ = parts(token)
    assert about == [
        f"created API key {key_id} (webhooks) with scopes read,events; "
        "the key below is shown once, keep it now:"
    ]
    key = keys.verify(token)
    assert key is not None
    assert (key.id, key.name, key.scopes) == (key_id, "webhooks", {"read", "events"})


@pytest.mark.parametrize(
    "argv",
    [("--scope", "write"), ("--scope", "read", "--scope", "Admin"), ("--name", "no scope")],
    ids=["unknown", "one of two unknown", "none"],
)
def test_keys_create_with_a_bad_scope_is_a_usage_error_and_writes_nothing(
    cli: Cli, db: psycopg.Connection, schema: str, argv: tuple[str, ...]
) -> None:
    result = cli("keys", "create", *argv)
    assert (result.code, result.out) == (2, "")
    assert "--scope" in result.err
    if argv[-1] != "no scope":
        assert all(scope in result.err for scope in (argv[-1], *SCOPES))
    assert scalar(db, schema, "SELECT count(*) FROM {s}.api_keys") == 0


def test_keys_list_shows_a_table_or_json(cli: Cli, keys: ApiKeys) -> None:
    assert cli.ok("keys", "list") == "(no API keys)\n"
    assert cli.json("keys", "list") == []
    ops, ops_token = keys.create(["admin", "read"], name="ops")
    hook, _ = keys.create(["events"])
    assert keys.verify(ops_token) is not None
    assert keys.revoke(hook.id)

    header, *lines = cli.ok("keys", "list").splitlines()
    assert header.split() == ["ID", "NAME", "SCOPES", "CREATED", "LAST", "USED", "REVOKED"]
    assert lines[0].split()[:3] == [ops.id, "ops", "read,admin"]
    assert lines[1].split()[:3] == [hook.id, "-", "events"]
    assert lines[0].endswith("-")  # not revoked
    assert not lines[1].endswith("-")

    listed = cli.json("keys", "list")
    assert [(k["id"], k["name"], k["scopes"]) for k in listed] == [
        (ops.id, "ops", ["read", "admin"]),
        (hook.id, None, ["events"]),
    ]
    assert listed[0]["last_used_at"] is not None and listed[0]["revoked_at"] is None
    revoked = keys.get(hook.id)
    assert revoked is not None
    assert datetime.fromisoformat(listed[1]["revoked_at"]) == revoked.revoked_at


def test_keys_revoke_refuses_the_key_at_once_and_names_an_unknown_one(
    cli: Cli, keys: ApiKeys
) -> None:
    key, token = keys.create(["read"])
    assert cli.ok("keys", "revoke", key.id) == (
        f"revoked API key {key.id}: it is refused from now on\n"
    )
    assert keys.verify(token) is None
    assert cli.ok("keys", "revoke", key.id).startswith(f"API key {key.id} was already revoked (at ")

    error = cli.fails("keys", "revoke", "0123456789ab")
    assert "no API key '0123456789ab'" in error
    assert "keys list" in error
