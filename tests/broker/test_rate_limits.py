"""PostgresRateLimiterBackend: Dramatiq's rate limiters and barriers on PostgreSQL.

The limiters are dramatiq's own; these tests check that they keep their word on
this backend. Where a limiter reads the time (window, bucket), a fake clock
stands in for the module's ``time``; where a ttl must have passed, the row is
aged in the table. Threads meet at barriers, never after a sleep, and no test
measures time (one polls until a 50 ms ttl has passed; the waits that must
time out are given 100 ms).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from dramatiq.rate_limits import (
    Barrier,
    BucketRateLimiter,
    ConcurrentRateLimiter,
    RateLimiter,
    RateLimitExceeded,
    WindowRateLimiter,
)
from dramatiq.rate_limits import bucket as bucket_module
from dramatiq.rate_limits import window as window_module

from broker_pg import PostgresRateLimiterBackend, SchemaMissing
from tests.support import executed_plan, rows, scalar, wait_until

BackendFactory = Callable[..., PostgresRateLimiterBackend]

#: Longest a test lets a thread of its own run before it fails (a hang is a failure).
THREAD_TIMEOUT = 60.0


@pytest.fixture
def make_backend(database_url: str, schema: str) -> Iterator[BackendFactory]:
    """Build backends on the test schema, each with a pool of its own; closed at the end."""
    made: list[PostgresRateLimiterBackend] = []

    def make(**kwargs: Any) -> PostgresRateLimiterBackend:
        backend = PostgresRateLimiterBackend(database_url, schema=schema, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend: BackendFactory) -> PostgresRateLimiterBackend:
    return make_backend()


class FakeClock:
    """Stands in for the ``time`` module of a limiter: ``time()`` is whatever the test says."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def window_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock(1_700_000_000.0)
    monkeypatch.setattr(window_module, "time", clock)
    return clock


@pytest.fixture
def bucket_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    # The start of a 60-second bucket: BucketRateLimiter cuts time in multiples of its bucket.
    clock = FakeClock(60.0 * 28_000_000)
    monkeypatch.setattr(bucket_module, "time", clock)
    return clock


def live_value(db: psycopg.Connection, schema: str, key: str) -> int | None:
    """The key's value, or None if it has no row or an expired one."""
    return scalar(
        db,
        schema,
        "SELECT value FROM {s}.rate_limits WHERE key = %s AND expires_at > statement_timestamp()",
        key,
    )


def expire(db: psycopg.Connection, schema: str, key: str) -> None:
    """Make the key's row expired, as if its ttl had passed."""
    db.execute(
        psycopg.sql.SQL(
            "UPDATE {}.rate_limits SET expires_at = statement_timestamp() - interval '1 ms'"
            " WHERE key = %s"
        ).format(psycopg.sql.Identifier(schema)),
        (key,),
    )


def try_acquire(limiter: RateLimiter) -> bool:
    """One acquisition, released at once; whether it was granted."""
    with limiter.acquire(raise_on_failure=False) as acquired:
        return bool(acquired)


def successes(limiter: RateLimiter, attempts: int) -> int:
    return sum(try_acquire(limiter) for _ in range(attempts))


def run_threads(count: int, target: Callable[[int], None], *barriers: threading.Barrier) -> None:
    """Run ``target(0)`` … ``target(count - 1)`` in threads; re-raise the first failure.

    A thread that fails breaks ``barriers``, so the others fail too rather than wait
    for it; one still running after ``THREAD_TIMEOUT`` fails the test.
    """
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            target(index)
        except BaseException as e:
            errors.append(e)
            for barrier in barriers:
                barrier.abort()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    if errors:
        raise errors[0]


def in_thread(call: Callable[[], bool]) -> tuple[threading.Thread, list[bool]]:
    """Start ``call`` in a thread; its result lands in the returned list."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


def finished(thread: threading.Thread, result: list[bool]) -> bool:
    thread.join(THREAD_TIMEOUT)
    assert not thread.is_alive(), "the wait did not end"
    [value] = result
    return value


# --- The backend's operations --------------------------------------------------------------------


def test_add_sets_a_key_only_if_it_is_absent_or_expired(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    assert backend.add("k", 5, ttl=60_000)
    assert not backend.add("k", 7, ttl=60_000)
    assert live_value(db, schema, "k") == 5

    expire(db, schema, "k")
    assert backend.add("k", 7, ttl=60_000)
    assert live_value(db, schema, "k") == 7


def test_incr_counts_from_zero_and_never_passes_the_maximum(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    assert backend.incr("k", 1, maximum=3, ttl=60_000)
    assert backend.incr("k", 2, maximum=3, ttl=60_000)
    assert not backend.incr("k", 1, maximum=3, ttl=60_000)
    assert live_value(db, schema, "k") == 3

    # An amount past the maximum on its own: refused, and the key stays absent.
    assert not backend.incr("other", 4, maximum=3, ttl=60_000)
    assert live_value(db, schema, "other") is None


def test_decr_never_falls_below_the_minimum(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    assert backend.add("k", 2, ttl=60_000)
    assert backend.decr("k", 1, minimum=0, ttl=60_000)
    assert backend.decr("k", 1, minimum=0, ttl=60_000)
    assert not backend.decr("k", 1, minimum=0, ttl=60_000)
    assert live_value(db, schema, "k") == 0

    # An absent key counts as 0: below the minimum it stays absent; above it, it is set.
    assert not backend.decr("absent", 1, minimum=0, ttl=60_000)
    assert live_value(db, schema, "absent") is None
    assert backend.decr("absent", 1, minimum=-5, ttl=60_000)
    assert live_value(db, schema, "absent") == -1


def test_an_expired_key_counts_as_absent(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    assert backend.add("up", 5, ttl=60_000)
    assert backend.add("down", 5, ttl=60_000)
    expire(db, schema, "up")
    expire(db, schema, "down")

    assert backend.incr("up", 1, maximum=1, ttl=60_000)
    assert live_value(db, schema, "up") == 1
    assert not backend.decr("down", 1, minimum=0, ttl=60_000)
    assert live_value(db, schema, "down") is None


def test_ttls_are_milliseconds_on_the_servers_clock_and_each_write_renews_them(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    def assert_expires_in(ttl_ms: int, write: Callable[[], bool]) -> None:
        # Between the server's clock just before the write and just after it, plus the ttl.
        before = scalar(db, schema, "SELECT clock_timestamp()")
        assert write()
        after = scalar(db, schema, "SELECT clock_timestamp()")
        expires_at = scalar(db, schema, "SELECT expires_at FROM {s}.rate_limits WHERE key = 'k'")
        ttl = timedelta(milliseconds=ttl_ms)
        assert before + ttl <= expires_at <= after + ttl

    assert_expires_in(90_000, lambda: backend.add("k", 1, ttl=90_000))
    assert_expires_in(600_000, lambda: backend.incr("k", 1, 5, ttl=600_000))
    assert_expires_in(1_500, lambda: backend.decr("k", 1, 0, ttl=1_500))


def test_incr_and_sum_sums_only_the_live_keys_it_is_given(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    assert backend.add("w@2", 1, ttl=60_000)
    assert backend.add("w@1", 5, ttl=60_000)
    expire(db, schema, "w@1")  # expired: counts for nothing
    assert backend.add("elsewhere", 10, ttl=60_000)  # not in the window

    def keys() -> list[str]:
        return ["w@3", "w@2", "w@1"]

    assert backend.incr_and_sum("w@3", keys, 1, maximum=3, ttl=60_000)
    assert backend.incr_and_sum("w@3", keys, 1, maximum=3, ttl=60_000)
    assert not backend.incr_and_sum("w@3", keys, 1, maximum=3, ttl=60_000)
    assert live_value(db, schema, "w@3") == 2
    assert live_value(db, schema, "w@2") == 1


def test_incr_and_sum_is_atomic_across_its_keys(
    make_backend: BackendFactory, db: psycopg.Connection, schema: str
) -> None:
    # Threads of two processes (two pools) increment two different keys of the
    # same window at once: each must see the other key's increments, or their
    # sum would pass the maximum.
    backends = [make_backend(), make_backend()]
    maximum, threads, attempts = 20, 8, 10
    start = threading.Barrier(threads, timeout=THREAD_TIMEOUT)
    granted = [0] * threads

    def work(index: int) -> None:
        backend = backends[index % 2]
        key = ("a", "b")[index // 2 % 2]
        start.wait()
        for _ in range(attempts):
            if backend.incr_and_sum(key, lambda: ["a", "b"], 1, maximum, ttl=60_000):
                granted[index] += 1

    run_threads(threads, work, start)

    assert sum(granted) == maximum
    assert (live_value(db, schema, "a") or 0) + (live_value(db, schema, "b") or 0) == maximum


def test_a_schema_without_the_migration_is_reported(
    database_url: str, unmigrated_schema: str
) -> None:
    backend = PostgresRateLimiterBackend(database_url, schema=unmigrated_schema)
    try:
        with pytest.raises(SchemaMissing, match="zart-dramatiq"):
            backend.add("k", 1, ttl=1000)
    finally:
        backend.close()


# --- ConcurrentRateLimiter ---------------------------------------------------------------------


def test_a_concurrent_limiter_releases_its_slot_after_each_use(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    mutex = ConcurrentRateLimiter(backend, "sequential", limit=1)
    assert successes(mutex, 8) == 8
    assert live_value(db, schema, "sequential") == 0


def test_a_concurrent_limiter_admits_at_most_limit_holders(
    backend: PostgresRateLimiterBackend,
) -> None:
    limiter = ConcurrentRateLimiter(backend, "three", limit=3)
    with ExitStack() as held:
        for _ in range(3):
            assert held.enter_context(limiter.acquire())
        assert not try_acquire(limiter)
        with pytest.raises(RateLimitExceeded), limiter.acquire():
            pass
    # All three released: the slots are free again.
    with ExitStack() as held:
        for _ in range(3):
            assert held.enter_context(limiter.acquire())


def test_a_concurrent_limiter_never_exceeds_its_limit_across_threads_and_processes(
    make_backend: BackendFactory, db: psycopg.Connection, schema: str
) -> None:
    # Eight threads, on two backends (as two worker processes would be), all try
    # at once in every round; those that got a slot hold it until every thread
    # has tried. Each round, exactly `limit` may hold: never more (the limit),
    # never fewer (the previous round's releases all counted).
    backends = [make_backend(), make_backend()]
    limit, threads, rounds = 3, 8, 25
    tried = threading.Barrier(threads, timeout=THREAD_TIMEOUT)
    granted = [[False] * threads for _ in range(rounds)]

    def work(index: int) -> None:
        limiter = ConcurrentRateLimiter(backends[index % 2], "shared", limit=limit)
        for round_ in range(rounds):
            tried.wait()  # the previous round's holders have released
            with limiter.acquire(raise_on_failure=False) as acquired:
                granted[round_][index] = bool(acquired)
                tried.wait()  # every thread has tried while the holders hold

    run_threads(threads, work, tried)

    assert [sum(holders) for holders in granted] == [limit] * rounds
    assert live_value(db, schema, "shared") == 0


def test_a_slot_whose_holder_died_frees_up_once_its_ttl_has_passed(
    make_backend: BackendFactory, db: psycopg.Connection, schema: str
) -> None:
    dead = ConcurrentRateLimiter(make_backend(), "mutex", limit=1, ttl=60_000)
    alive = ConcurrentRateLimiter(make_backend(), "mutex", limit=1, ttl=60_000)
    assert dead._acquire()  # and its worker is killed: no release ever comes

    assert not try_acquire(alive)
    expire(db, schema, "mutex")  # its 60 seconds have passed
    assert try_acquire(alive)


def test_a_slot_held_past_a_short_ttl_frees_up_by_itself(
    backend: PostgresRateLimiterBackend,
) -> None:
    mutex = ConcurrentRateLimiter(backend, "short", limit=1, ttl=50)
    assert mutex._acquire()  # never released
    wait_until(lambda: try_acquire(mutex), message="the slot's 50 ms ttl to pass")


# --- WindowRateLimiter ---------------------------------------------------------------------------


def test_a_window_limiter_admits_limit_per_window(
    backend: PostgresRateLimiterBackend, window_clock: FakeClock
) -> None:
    limiter = WindowRateLimiter(backend, "window", limit=2, window=60)
    start = window_clock.now
    assert successes(limiter, 8) == 2
    for later in (1, 30, 59):
        window_clock.now = start + later
        assert successes(limiter, 8) == 0, later
    # The first second has left the window; the next 60 seconds start.
    window_clock.now = start + 60
    assert successes(limiter, 8) == 2
    window_clock.now = start + 119
    assert successes(limiter, 8) == 0
    window_clock.now = start + 120
    assert successes(limiter, 8) == 2


def test_a_window_slides_one_second_at_a_time(
    backend: PostgresRateLimiterBackend, window_clock: FakeClock
) -> None:
    limiter = WindowRateLimiter(backend, "sliding", limit=3, window=60)
    start = window_clock.now
    for later in (0, 10, 20):  # one call each
        window_clock.now = start + later
        assert try_acquire(limiter)
    window_clock.now = start + 59
    assert successes(limiter, 5) == 0
    window_clock.now = start + 60  # the call at `start` left the window
    assert successes(limiter, 5) == 1
    window_clock.now = start + 69
    assert successes(limiter, 5) == 0
    window_clock.now = start + 70  # the call at `start + 10` left it
    assert successes(limiter, 5) == 1


def test_a_window_limiter_admits_limit_across_threads_and_processes(
    make_backend: BackendFactory, window_clock: FakeClock
) -> None:
    backends = [make_backend(), make_backend()]
    limit, threads = 5, 8
    start = threading.Barrier(threads, timeout=THREAD_TIMEOUT)
    granted = [0] * threads

    def work(index: int) -> None:
        limiter = WindowRateLimiter(backends[index % 2], "busy-window", limit=limit, window=60)
        start.wait()
        granted[index] = successes(limiter, 8)

    run_threads(threads, work, start)
    assert sum(granted) == limit


# --- BucketRateLimiter ---------------------------------------------------------------------------


def test_a_bucket_limiter_admits_limit_per_bucket(
    backend: PostgresRateLimiterBackend, bucket_clock: FakeClock
) -> None:
    limiter = BucketRateLimiter(backend, "bucket", limit=2, bucket=60_000)
    start = bucket_clock.now
    assert successes(limiter, 8) == 2
    bucket_clock.now = start + 59.999
    assert successes(limiter, 8) == 0
    bucket_clock.now = start + 60  # the next bucket
    assert successes(limiter, 8) == 2


def test_a_bucket_limiter_admits_limit_across_threads_and_processes(
    make_backend: BackendFactory, bucket_clock: FakeClock
) -> None:
    backends = [make_backend(), make_backend()]
    limit, threads = 5, 8
    start = threading.Barrier(threads, timeout=THREAD_TIMEOUT)
    granted = [0] * threads

    def work(index: int) -> None:
        limiter = BucketRateLimiter(backends[index % 2], "busy-bucket", limit=limit, bucket=60_000)
        start.wait()
        granted[index] = successes(limiter, 8)

    run_threads(threads, work, start)
    assert sum(granted) == limit


# --- Barrier -------------------------------------------------------------------------------------


def test_a_barrier_is_created_once_and_clears_with_its_last_party(
    backend: PostgresRateLimiterBackend,
) -> None:
    barrier = Barrier(backend, "barrier", ttl=60_000)
    assert barrier.create(parties=3)
    assert not barrier.create(parties=10)
    assert not barrier.wait(block=False)
    assert not barrier.wait(block=False)
    assert barrier.wait(block=False)


def test_waiters_block_until_the_last_party_arrives(
    make_backend: BackendFactory, db: psycopg.Connection, schema: str
) -> None:
    # Two parties wait, each through a backend (a process) of its own; the third releases them.
    first, second, last = (Barrier(make_backend(), "meeting", ttl=60_000) for _ in range(3))
    assert first.create(parties=3)
    waiters = [
        in_thread(lambda b=b: b.wait(timeout=THREAD_TIMEOUT * 1000)) for b in (first, second)
    ]
    wait_until(
        lambda: live_value(db, schema, "meeting") == 1, message="both parties at the barrier"
    )
    assert all(thread.is_alive() for thread, _ in waiters), "a party did not wait"

    assert last.wait(block=False)
    assert [finished(*waiter) for waiter in waiters] == [True, True]


def test_a_wait_sees_an_event_notified_before_it_began(
    backend: PostgresRateLimiterBackend,
) -> None:
    # A party that passed the barrier, then was slow to wait: the last one cleared it meanwhile.
    barrier = Barrier(backend, "late", ttl=60_000)
    assert barrier.create(parties=2)
    assert backend.decr(barrier.key, 1, 1, barrier.ttl)  # the slow party passed
    assert barrier.wait(block=False)  # the last one cleared it

    assert finished(*in_thread(lambda: backend.wait(barrier.key_events, 10_000)))


def test_a_barrier_wait_times_out(backend: PostgresRateLimiterBackend) -> None:
    barrier = Barrier(backend, "lonely", ttl=60_000)
    assert barrier.create(parties=2)
    assert not finished(*in_thread(lambda: barrier.wait(timeout=100)))


def test_an_expired_event_wakes_no_one(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    backend.wait_notify("old@events", ttl=60_000)
    expire(db, schema, "old@events")
    assert not finished(*in_thread(lambda: backend.wait("old@events", 100)))


def test_a_wait_without_a_timeout_ends_after_the_default_one(
    make_backend: BackendFactory,
) -> None:
    backend = make_backend(default_timeout=100)
    barrier = Barrier(backend, "forever", ttl=60_000)
    assert barrier.create(parties=2)
    assert not finished(*in_thread(lambda: barrier.wait()))


# --- Expired rows --------------------------------------------------------------------------------


def expired_rows(db: psycopg.Connection, schema: str) -> int:
    return int(
        scalar(
            db,
            schema,
            "SELECT count(*) FROM {s}.rate_limits WHERE expires_at <= statement_timestamp()",
        )
    )


def add_expired(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str, *keys: str
) -> None:
    for key in keys:
        assert backend.add(key, 1, ttl=60_000)
        expire(db, schema, key)


def test_purge_deletes_expired_rows_in_bounded_batches(
    backend: PostgresRateLimiterBackend, db: psycopg.Connection, schema: str
) -> None:
    backend.purge_interval = 3600.0  # no purge by the writes below, but for the first
    backend.add("first", 1, ttl=60_000)
    add_expired(backend, db, schema, *(f"old-{n}" for n in range(5)))
    backend.add("live", 1, ttl=60_000)

    assert backend.purge_expired(limit=3) == 3
    assert expired_rows(db, schema) == 2
    assert backend.purge_expired(limit=3) == 2
    assert backend.purge_expired(limit=3) == 0
    assert rows(db, schema, "SELECT key FROM {s}.rate_limits ORDER BY key") == [
        ("first",),
        ("live",),
    ]


def test_writes_purge_expired_rows_now_and_then(
    make_backend: BackendFactory, db: psycopg.Connection, schema: str
) -> None:
    setup = make_backend()
    setup.purge_interval = 3600.0
    add_expired(setup, db, schema, *(f"old-{n}" for n in range(5)))

    backend = make_backend()
    backend.purge_interval, backend.purge_batch = 3600.0, 2
    backend.add("a", 1, ttl=60_000)  # the first write purges: a full batch of 2
    assert expired_rows(db, schema) == 3
    backend.incr("b", 1, 5, ttl=60_000)  # a full batch goes on at the next write
    assert expired_rows(db, schema) == 1
    backend.decr("b", 1, 0, ttl=60_000)  # 1 left: not a full batch, the purge rests
    assert expired_rows(db, schema) == 0
    add_expired(setup, db, schema, "later")
    backend.wait_notify("c", ttl=60_000)
    assert expired_rows(db, schema) == 1


@pytest.mark.parametrize(
    ("query", "params", "index"),
    [
        ("purge_expired", {"limit": 1000}, "rate_limits_expiry"),
        (
            "incr_and_sum",
            {"key": "w@2", "keys": ["w@2", "w@1"], "amount": 1, "maximum": 5, "ttl_ms": 1000},
            "rate_limits_pkey",
        ),
    ],
)
def test_statements_read_the_table_through_an_index(
    backend: PostgresRateLimiterBackend,
    db: psycopg.Connection,
    query: str,
    params: dict[str, Any],
    index: str,
) -> None:
    for n in range(200):
        backend.add(f"k{n}", 1, ttl=60_000)
    plan = executed_plan(db, backend.queries[query], params, generic=True)
    assert ("Seq Scan", None) not in plan.scans(), plan.scans()
    assert index in {node.get("Index Name") for node in plan.nodes()}, plan.nodes()
