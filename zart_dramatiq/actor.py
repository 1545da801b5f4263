"""Durable actors: ``@zart.durable`` turns a Dramatiq actor into a workflow."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from datetime import timedelta
from typing import Any, overload

import dramatiq
from dramatiq import Actor

from .concurrency import Limit
from .middleware import DurableMiddleware, current_delivery, middleware_for
from .serialization import convert_arguments, dump, load, type_hints


class DurableActor(Actor):  # type: ignore[type-arg]
    """A Dramatiq actor whose body resumes at its first unfinished step.

    Arguments are sent as JSON through their annotations (a pydantic model
    travels as a dict and comes back a model), and the result is recorded
    on the execution.
    """

    durable_timeout: timedelta | None
    #: At most so many executions per key at a time (``zart.Limit``), if set.
    concurrency: Limit | None = None

    @property
    def original_fn(self) -> Callable[..., Any]:
        return inspect.unwrap(self.fn)

    @property
    def middleware(self) -> DurableMiddleware:
        return middleware_for(self.broker)

    def message_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> dramatiq.Message[Any]:
        args, kwargs = self.dump_input(args, kwargs or {})
        return super().message_with_options(args=args, kwargs=kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        delivery = current_delivery()
        if delivery is None or delivery.actor_name != self.actor_name:
            # A direct call outside a worker runs the plain function.
            return super().__call__(*args, **kwargs)
        return self.middleware.run_body(self, delivery, args, kwargs)

    def dump_input(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """An execution's input as JSON-compatible data, through the arguments' annotations.

        Raises SerializationError, or PayloadTooLarge past ``Limits.payload_bytes``.
        """
        args, kwargs = self._convert(args, kwargs, dump)
        self.middleware.limits.check_payload([args, kwargs], what=f"the input of {self.actor_name}")
        return args, kwargs

    def load_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments restored to their annotated types."""
        return self._convert(args, kwargs, load)

    def _convert(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], convert: Callable[..., Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return convert_arguments(self.original_fn, args, kwargs, convert, owner=self.actor_name)

    @property
    def return_annotation(self) -> Any:
        return self._hints().get("return", Any)

    def _hints(self) -> dict[str, Any]:
        return type_hints(self.original_fn)


@overload
def durable(fn: Callable[..., Any] | Actor, /) -> DurableActor: ...  # type: ignore[type-arg]
@overload
def durable(
    *, timeout: timedelta | None = None, concurrency: Limit | None = None, **actor_options: Any
) -> Callable[[Callable[..., Any] | Actor], DurableActor]: ...  # type: ignore[type-arg]
def durable(
    fn: Any = None,
    /,
    *,
    timeout: timedelta | None = None,
    concurrency: Limit | None = None,
    **actor_options: Any,
) -> Any:
    """Make an actor durable: its steps are checkpointed and its body resumes after a crash.

    Use on a function (taking ``dramatiq.actor`` options) or on an existing
    ``dramatiq.Actor``. ``timeout`` bounds the whole execution: past it, the
    execution is marked ``timed_out`` even while it sleeps or waits.
    ``concurrency`` (a ``zart.Limit``) caps how many executions per key run
    at a time; the others wait, holding no thread and no queue slot.
    Installs ``DurableMiddleware`` on the actor's broker if it has none.
    """
    if concurrency is not None and not isinstance(concurrency, Limit):
        raise TypeError(
            f"durable(concurrency=...) takes a zart.Limit(key=..., max=...), not {concurrency!r}"
        )

    def decorate(target: Any) -> DurableActor:
        if isinstance(target, Actor):
            if actor_options:
                raise TypeError(
                    f"durable() got actor options {sorted(actor_options)} for the existing actor "
                    f"{target.actor_name!r}; pass them to @dramatiq.actor instead."
                )
            # Re-classing keeps the actor registered with its broker as it is.
            target.__class__ = DurableActor
            actor = typing.cast(DurableActor, target)
        else:
            make_actor = dramatiq.actor(actor_class=DurableActor, **actor_options)
            actor = typing.cast(DurableActor, make_actor(target))
        actor.durable_timeout = timeout
        actor.concurrency = concurrency
        middleware_for(actor.broker)
        return actor

    return decorate(fn) if fn is not None else decorate
