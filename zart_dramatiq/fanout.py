"""Parallel steps and durable map: branches run as messages on any worker.

``zart.parallel(zart.call(...), ...)`` and ``zart.map(name, fn, items)`` open
a group in the execution's journal and send one message per branch, on the
actor's own queue, in the transaction that suspends the body: the body holds
no thread while the branches run. Each branch records its outcome with the
group's join counter (``branches``); the one that ends the group wakes the
body, which reads every result, in call order, from its journal.
"""

from __future__ import annotations

import base64
import importlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

import dramatiq
from dramatiq.common import q_name

from .errors import NonDeterminismError
from .joins import wait_for_entry
from .retry_policy import NO_RETRY, Retry
from .run import EXECUTION_ID, Run, current_run
from .serialization import convert_arguments, dump, error_from_json, load, type_hints
from .store import Transaction
from .tracing import TRACE, carrier

T = TypeVar("T")

Mode = Literal["all", "settled", "first"]
MODES: tuple[Mode, ...] = ("all", "settled", "first")

#: Message option of a branch: its group, index, function and retry policy.
BRANCH = "zart_branch"


@dataclass(frozen=True)
class Call:
    """One branch of ``zart.parallel``: ``fn(*args, **kwargs)`` as step ``name``."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retry: Retry = NO_RETRY


class First(NamedTuple):
    """What ``parallel(..., mode="first")`` returns: the winning branch and its result."""

    #: The winner's position among the calls.
    branch: int
    name: str
    value: Any


def call(
    name: str, fn: Callable[..., Any], /, *args: Any, retry: Retry | None = None, **kwargs: Any
) -> Call:
    """A branch for ``zart.parallel``: ``fn(*args, **kwargs)``, run as its own message.

    ``fn`` must be a module-level function (another worker imports it by name),
    and ``retry`` a ``Retry.fixed`` or ``Retry.exponential`` policy.
    """
    function_name(fn)
    (retry or NO_RETRY).to_json()
    return Call(name, fn, args, kwargs, retry or NO_RETRY)


def parallel(*calls: Call, mode: Mode = "all", name: str = "parallel") -> Any:
    """Run ``calls`` concurrently, each as a message on any worker; join their results.

    ``mode="all"`` returns the results in call order, or raises the error of the
    first branch to fail (the branches not started yet never start);
    ``"settled"`` returns results and errors (as exception instances) side by
    side; ``"first"`` returns ``First(branch, name, value)`` for the first
    branch to complete, and raises only if every branch failed.
    """
    run = current_run()
    if mode not in MODES:
        raise run.final(ValueError(f"zart.parallel mode must be one of {MODES}, not {mode!r}"))
    if not calls or not all(isinstance(c, Call) for c in calls):
        raise run.final(
            TypeError("zart.parallel takes one or more zart.call(name, fn, *args) branches")
        )
    names = [c.name for c in calls]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise run.final(
            ValueError(
                f"zart.parallel {name!r} has two branches named {duplicates[0]!r}; "
                "give each branch of a group its own name"
            )
        )
    return _join(run, run.key("group", name), name, calls, mode, None)


def map(
    name: str,
    fn: Callable[..., T],
    items: Iterable[Any],
    max_concurrency: int | None = None,
    retry: Retry | None = None,
) -> list[T]:
    """``fn(item)`` for each item, each as its own message; results in input order.

    At most ``max_concurrency`` items run at once: the next one starts as one
    ends. Each item's result is checkpointed, so a crash re-runs only the
    items in flight. The first item to fail fails the map with its error.
    """
    run = current_run()
    if max_concurrency is not None and (
        not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
        raise run.final(
            ValueError(
                f"zart.map max_concurrency must be a positive int or None, not {max_concurrency!r}"
            )
        )
    try:
        calls = [call(f"{name}[{i}]", fn, item, retry=retry) for i, item in enumerate(items)]
    except (TypeError, ValueError) as error:
        raise run.final(error) from None
    if not calls:
        return []
    return _join(run, run.key("group", name), name, calls, "all", max_concurrency)  # type: ignore[no-any-return]


def _join(
    run: Run, key: str, name: str, calls: Sequence[Call], mode: Mode, window: int | None
) -> Any:
    signature = f"{mode}/{len(calls)}"
    recorded = run.journal.get(key)
    if recorded is not None and recorded.get("fn") not in (None, signature):
        raise run.diverge(
            NonDeterminismError(
                f"group {name!r} ({key}) was recorded as {recorded['fn']} (mode/branches) but "
                f"is now {signature}: the workflow's code changed under a running execution",
                step=key,
                kind="changed",
            )
        )

    def open_group(tx: Transaction) -> None:
        if run.journal.get(key) is None:
            _open(run, tx, key, name, calls, mode, window, signature)

    entry = wait_for_entry(run, key, open_group)
    return _outcome(run, name, entry, calls, mode)


def _open(
    run: Run,
    tx: Transaction,
    key: str,
    name: str,
    calls: Sequence[Call],
    mode: Mode,
    window: int | None,
    signature: str,
) -> None:
    """Create the group (or set a forgotten one going again) and send its first branches."""
    store = run.store
    branches = [
        {
            "name": c.name,
            "fn": function_name(c.fn),
            "message": base64.b64encode(_message(run, key, index, c).encode()).decode(),
        }
        for index, c in enumerate(calls)
    ]
    where = {"id": run.execution_id, "key": key}
    opened = store.run(
        tx,
        "open_group",
        mode=mode,
        size=len(calls),
        max_concurrency=window,
        branches=branches,
        **where,
    )
    assert opened is not None
    if not opened[0]:
        # A retry forgot the entry of the group whose failure failed the execution.
        store.run(tx, "reopen_group", branches=branches, **where)
    store.run(
        tx,
        "open_group_entry",
        name=name,
        fn=signature,
        position=run.timeline.positions.get(key),
        **where,
    )
    queued = store.run_all(tx, "queue_branches", start=0, count=window or len(calls), **where)
    run.transport.send_many(tx, [dramatiq.Message.decode(payload) for _, payload in queued])


def _message(run: Run, key: str, index: int, c: Call) -> dramatiq.Message[Any]:
    args, kwargs = convert_arguments(c.fn, c.args, c.kwargs, dump, owner=c.name)
    delivery = run.delivery
    return dramatiq.Message(
        queue_name=q_name(delivery.queue_name),
        actor_name=delivery.actor_name,
        args=args,
        kwargs=kwargs,
        options={
            EXECUTION_ID: run.execution_id,
            TRACE: carrier(),
            BRANCH: {
                "group": key,
                "index": index,
                "fn": function_name(c.fn),
                "retry": c.retry.to_json(),
            },
        },
    )


def _outcome(run: Run, name: str, entry: dict[str, Any], calls: Sequence[Call], mode: Mode) -> Any:
    outcome = entry["result"] or {}
    branches = outcome.get("branches") or []
    if len(branches) != len(calls):
        raise run.diverge(
            NonDeterminismError(
                f"group {name!r} was recorded with {len(branches)} branches but is now called "
                f"with {len(calls)}: the workflow's code changed under a running execution",
                step=entry.get("key"),
                kind="changed",
            )
        )
    if entry["status"] == "failed":
        raise run.final(error_from_json(entry["error"], step=name))

    def value(index: int) -> Any:
        c = calls[index]
        annotation = type_hints(c.fn).get("return", Any)
        return load(branches[index]["result"], annotation, what=f"the result of branch {c.name!r}")

    if mode == "first":
        winner = outcome["winner"]
        return First(winner, calls[winner].name, value(winner))
    if mode == "settled":
        return [
            value(i)
            if b["status"] == "completed"
            else error_from_json(b["error"], step=calls[i].name)
            for i, b in enumerate(branches)
        ]
    return [value(i) for i in range(len(calls))]


def function_name(fn: Callable[..., Any]) -> str:
    """``fn``'s importable name; TypeError for what another worker could not import."""
    target = inspect.unwrap(fn)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not callable(fn) or module is None or qualname is None or "<" in qualname:
        raise TypeError(
            f"{fn!r} cannot run as a branch: branches run as messages on any worker, which "
            "import their function by name. Use a function defined at module level (not a "
            "lambda, a closure, a nested function or a bound method)."
        )
    if resolve(f"{module}:{qualname}", check=False) is not target:
        raise TypeError(
            f"{module}.{qualname} cannot run as a branch: importing it by that name gives "
            "another object (is it decorated without functools.wraps, or redefined?)"
        )
    return f"{module}:{qualname}"


def resolve(name: str, *, check: bool = True) -> Any:
    """The function a branch names (``module:qualname``), imported."""
    module, _, qualname = name.partition(":")
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        if not check:
            return None
        raise TypeError(
            f"branch function {name} cannot be imported on this worker: {error}"
        ) from error
    return inspect.unwrap(target)
