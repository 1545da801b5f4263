"""Concurrency keys: at most ``max`` executions of an actor per key at a time.

A limited execution runs only while it holds a slot of its key: ``acquire``
refuses it otherwise, and its delivery, instead of circling the queue, makes
it wait (``wait_for_slot``). Slots are never counted, only derived: the
holders of a key are its admitted executions that are still active, so an
execution that ends, however it ends, gives its slot back in the transaction
that ends it. Whoever frees a slot admits the next waiters in that same
transaction and sends their resuming messages (``admit``); the sweeper admits
any that a release passed over. Keys are independent, so a busy key never
holds up another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConcurrencyKeyError
from .store import Store, Transaction

if TYPE_CHECKING:
    from .actor import DurableActor

Scope = Literal["open", "running"]


@dataclass(frozen=True)
class Limit:
    """At most ``max`` executions per value of ``key`` at a time.

    ``key`` is called with the execution's input (as the body receives it)
    and its result, as text, is the key. ``scope="open"`` counts executions
    from their admission to their end, sleeps and waits included;
    ``scope="running"`` counts only those running now.
    """

    key: Callable[..., Any]
    max: int = 1
    scope: Scope = "open"

    def __post_init__(self) -> None:
        if not callable(self.key):
            raise TypeError(
                f"zart.Limit(key=...) takes a function of the actor's input, not {self.key!r}"
            )
        if not isinstance(self.max, int) or isinstance(self.max, bool) or self.max < 1:
            raise ValueError(f"zart.Limit(max=...) must be a whole number >= 1, not {self.max!r}")
        if self.scope not in ("open", "running"):
            raise ValueError(f"zart.Limit(scope=...) is 'open' or 'running', not {self.scope!r}")


@dataclass(frozen=True)
class Slot:
    """The key a run's execution counts against."""

    actor_name: str
    key: str
    scope: Scope


@dataclass(frozen=True)
class Admitted:
    """An execution given a slot: it runs once its resuming message arrives."""

    execution_id: str
    message: bytes
    seq: int


def key_of(actor: DurableActor, args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """The concurrency key of an execution of ``actor`` with this (JSON) input, if limited."""
    limit = actor.concurrency
    if limit is None:
        return None
    typed_args, typed_kwargs = actor.load_arguments(tuple(args), kwargs)
    try:
        key = limit.key(*typed_args, **typed_kwargs)
    except Exception as e:
        raise ConcurrencyKeyError(
            f"the concurrency key of {actor.actor_name} could not be computed from its input "
            f"({type(e).__name__}: {e}); zart.Limit(key=...) must accept the actor's arguments"
        ) from e
    if key is None:
        raise ConcurrencyKeyError(
            f"the concurrency key of {actor.actor_name} is None for this input; "
            "return a value for every input"
        )
    return str(key)


def wait_for_slot(store: Store, tx: Transaction, execution_id: str) -> Slot | None:
    """The execution waits for a slot of its key; None if it no longer needs one."""
    row = store.run(tx, "wait_for_slot", id=execution_id)
    return None if row is None else Slot(actor_name=row[0], key=row[1], scope=row[2])


def admit(store: Store, tx: Transaction, slot: Slot, max: int | None) -> list[Admitted]:
    """Admit the waiters ``slot``'s key has room for, in order; return them.

    ``max`` is the limit the code declares, None to keep the one recorded.
    The caller sends their resuming messages in ``tx``.
    """
    row = store.run(tx, "lock_concurrency_key", actor=slot.actor_name, key=slot.key, max=max)
    assert row is not None
    rows = store.run_all(tx, "admit", actor=slot.actor_name, key=slot.key, max=row[0])
    return [Admitted(*row) for row in rows]


def passed_over(store: Store, grace_s: float) -> list[Slot]:
    """Keys whose waiters have waited longer than ``grace_s``: a release may have passed them."""
    rows = store.fetchall("keys_with_waiters", grace_s=grace_s)
    return [Slot(actor_name=row[0], key=row[1], scope=row[2]) for row in rows]
