"""zart calls for ``async def`` durable actors: ``await zart.aio.step(...)`` and the rest.

Dramatiq runs every async actor of a process on one event loop (its AsyncIO
middleware). zart's calls wait for PostgreSQL, so here each runs, as the same
synchronous call a plain body makes, in a helper thread while the loop goes
on; an ``async def`` step function runs on the loop. A sleep or an event wait
ends the delivery as in a plain body: the worker thread is freed.

The zart calls of one body run one at a time, in the order the body makes
them, so ``asyncio.gather`` of them is deterministic (the same names get the
same journal keys at every replay) but not concurrent: ``zart.aio.parallel``
and ``zart.aio.map`` run steps side by side.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar, overload
from uuid import UUID

from . import children, fanout, generations, steps, transactional, values, versioning, waits
from .actor import DurableActor
from .fanout import Call, Mode, call
from .retry_policy import Retry
from .run import active_run

__all__ = [
    "ChildHandle",
    "call",
    "capture",
    "continue_as_new",
    "deprecate_patch",
    "map",
    "now",
    "parallel",
    "patched",
    "sleep",
    "sleep_until",
    "start_child",
    "step",
    "transactional_step",
    "uuid",
    "wait_for_event",
]

T = TypeVar("T")


@overload
async def step(
    name: str,
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    retry: Retry | None = None,
    **kwargs: Any,
) -> T: ...
@overload
async def step(
    name: str, fn: Callable[..., T], /, *args: Any, retry: Retry | None = None, **kwargs: Any
) -> T: ...
async def step(
    name: str, fn: Callable[..., Any], /, *args: Any, retry: Retry | None = None, **kwargs: Any
) -> Any:
    """``zart.step``, awaitable: ``fn`` may be an ``async def`` function (run on the loop)."""
    return await _off_loop(steps.step, name, _blocking(fn), *args, retry=retry, **kwargs)


async def sleep(name: str, duration: timedelta | float) -> None:
    """``zart.sleep``, awaitable: the execution pauses and the worker thread is freed."""
    await _off_loop(waits.sleep, name, duration)


async def sleep_until(name: str, when: datetime) -> None:
    """``zart.sleep_until``, awaitable."""
    await _off_loop(waits.sleep_until, name, when)


@overload
async def wait_for_event(name: str, timeout: timedelta | None = None) -> Any: ...
@overload
async def wait_for_event(
    name: str, timeout: timedelta | None = None, *, model: type[T], default: Any = ...
) -> T: ...
async def wait_for_event(name: str, timeout: timedelta | None = None, **options: Any) -> Any:
    """``zart.wait_for_event``, awaitable (``model=``, ``default=`` as there)."""
    return await _off_loop(waits.wait_for_event, name, timeout, **options)


async def now(name: str) -> datetime:
    """``zart.now``, awaitable."""
    return await _off_loop(values.now, name)


async def uuid(name: str) -> UUID:
    """``zart.uuid``, awaitable."""
    return await _off_loop(values.uuid, name)


@overload
async def capture(
    name: str, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
) -> T: ...
@overload
async def capture(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...
async def capture(name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``zart.capture``, awaitable: ``fn`` may be an ``async def`` function (run on the loop)."""
    return await _off_loop(values.capture, name, _blocking(fn), *args, **kwargs)


async def transactional_step(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``zart.transactional_step``, awaitable.

    ``fn`` is a plain ``def`` of a synchronous psycopg connection: it runs in
    the helper thread, off the loop.
    """
    return await _off_loop(transactional.transactional_step, name, fn, *args, **kwargs)


async def patched(change_id: str) -> bool:
    """``zart.patched``, awaitable."""
    return await _off_loop(versioning.patched, change_id)


async def deprecate_patch(change_id: str) -> None:
    """``zart.deprecate_patch``, awaitable."""
    await _off_loop(versioning.deprecate_patch, change_id)


async def continue_as_new(*args: Any, **kwargs: Any) -> NoReturn:
    """``zart.continue_as_new``, awaitable: it ends the run."""
    await _off_loop(generations.continue_as_new, *args, **kwargs)
    raise AssertionError("zart.continue_as_new returned")  # it always raises


async def parallel(*calls: Call, mode: Mode = "all", name: str = "parallel") -> Any:
    """``zart.parallel``, awaitable; its branches are ``zart.aio.call(...)`` (``zart.call``)."""
    return await _off_loop(fanout.parallel, *calls, mode=mode, name=name)


@overload
async def map(
    name: str,
    fn: Callable[..., Awaitable[T]],
    items: Iterable[Any],
    max_concurrency: int | None = None,
    retry: Retry | None = None,
) -> list[T]: ...
@overload
async def map(
    name: str,
    fn: Callable[..., T],
    items: Iterable[Any],
    max_concurrency: int | None = None,
    retry: Retry | None = None,
) -> list[T]: ...
async def map(
    name: str,
    fn: Callable[..., Any],
    items: Iterable[Any],
    max_concurrency: int | None = None,
    retry: Retry | None = None,
) -> list[Any]:
    """``zart.map``, awaitable: ``fn`` may be an ``async def`` function (run on the loop)."""
    return await _off_loop(fanout.map, name, fn, items, max_concurrency, retry)


class ChildHandle:
    """A child execution seen from an async parent's body: ``await handle.result()``."""

    def __init__(self, handle: children.ChildHandle) -> None:
        self._handle = handle

    @property
    def execution_id(self) -> str:
        return self._handle.execution_id

    def __repr__(self) -> str:
        return f"zart.aio.ChildHandle({self.execution_id!r})"

    async def result(self) -> Any:
        """``ChildHandle.result``, awaitable: the parent pauses until the child ends."""
        return await _off_loop(self._handle.result)


async def start_child(
    actor: DurableActor,
    *args: Any,
    execution_id: str | None = None,
    detached: bool = False,
    **kwargs: Any,
) -> ChildHandle:
    """``zart.start_child``, awaitable."""
    handle = await _off_loop(
        children.start_child,
        actor,
        *args,
        execution_id=execution_id,
        detached=detached,
        **kwargs,
    )
    return ChildHandle(handle)


# -- Off the loop, one call of a body at a time ------------------------------------

#: Set while a zart call of the body runs: zart calls made inside it (by its
#: step function) are part of it, and do not wait for it to end.
_in_call: contextvars.ContextVar[bool] = contextvars.ContextVar("zart_aio_in_call", default=False)

#: The lock of each run whose async body makes zart calls, while one is made.
_locks: weakref.WeakValueDictionary[tuple[str, int], asyncio.Lock] = weakref.WeakValueDictionary()


async def _off_loop(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a helper thread, in this context, when the body's turn comes."""
    loop = asyncio.get_running_loop()
    run = active_run()
    if run is None or _in_call.get():
        # Outside a body, the call raises NotInExecution, as it would on its own.
        return await _in_helper_thread(loop, fn, args, kwargs)
    key = (run.execution_id, run.token)
    lock = _locks.get(key)
    if lock is None:
        lock = _locks[key] = asyncio.Lock()
    async with lock:
        token = _in_call.set(True)
        try:
            return await _in_helper_thread(loop, fn, args, kwargs)
        finally:
            _in_call.reset(token)


def _in_helper_thread(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> asyncio.Future[T]:
    context = contextvars.copy_context()  # the run, and whether a call is in progress
    return loop.run_in_executor(_helpers(), functools.partial(context.run, fn, *args, **kwargs))


def _blocking(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as the blocking call a helper thread makes: an ``async def`` one runs on this loop.

    Wrapped with its identity (``__wrapped__``, annotations), so that the step
    is recorded under ``fn``'s name and its result typed by ``fn``'s return
    annotation: that of ``async def f() -> int`` is ``int``.
    """
    if not inspect.iscoroutinefunction(fn):
        return fn
    loop = asyncio.get_running_loop()

    @functools.wraps(fn)
    def on_loop(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop).result()

    return on_loop


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """This process's helper threads.

    Not the loop's default executor: a step function's own ``asyncio.to_thread``
    calls use that one, and helpers blocked on such step functions would starve
    them. It never makes a call wait for a thread (an idle one is reused, else
    one is added), so a step function's nested zart calls cannot starve it either.
    """
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child has no threads
            _pool = ThreadPoolExecutor(max_workers=sys.maxsize, thread_name_prefix="zart-aio")
            _pool_pid = os.getpid()
        return _pool
