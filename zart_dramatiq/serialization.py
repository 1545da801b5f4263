"""JSON for step results, arguments and events, typed by annotations via pydantic."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import SerializationError, StepFailed


@lru_cache(maxsize=512)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def adapter(annotation: Any) -> TypeAdapter[Any]:
    try:
        return _adapter(annotation)
    except TypeError:  # unhashable annotation
        return TypeAdapter(annotation)


@lru_cache(maxsize=1024)
def type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of ``fn`` (unwrapped), or none if they cannot be resolved."""
    try:
        return typing.get_type_hints(inspect.unwrap(fn))
    except Exception:
        return {}


def dump(value: Any, annotation: Any, *, what: str) -> Any:
    """Return ``value`` as JSON-compatible data; ``what`` names it in errors."""
    try:
        return adapter(annotation if annotation is not Any else type(value)).dump_python(
            value, mode="json"
        )
    except Exception as e:
        raise SerializationError(
            f"{what} returned a value of type {type(value).__name__} that cannot be "
            f"serialized to JSON: {e}. "
            "Return JSON-compatible data, a pydantic model or a dataclass."
        ) from e


def load(data: Any, annotation: Any, *, what: str) -> Any:
    """Restore ``data`` to ``annotation`` (a model comes back a model)."""
    if annotation is Any:
        return data
    try:
        return adapter(annotation).validate_python(data)
    except ValidationError as e:
        raise SerializationError(f"{what} does not match {annotation!r}: {e}") from e


def convert_arguments(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    convert: Callable[..., Any],
    *,
    owner: str,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``fn``'s arguments passed through ``convert`` (``dump`` or ``load``) by their annotations."""
    hints = type_hints(fn)
    names = list(inspect.signature(fn).parameters)

    def one(name: str, value: Any) -> Any:
        return convert(value, hints.get(name, Any), what=f"argument {name!r} of {owner}")

    converted = tuple(one(name, value) for name, value in zip(names, args, strict=False))
    return converted + tuple(args[len(names) :]), {k: one(k, v) for k, v in kwargs.items()}


def input_hash(args: Any, kwargs: Any) -> str:
    """A stable digest of an execution's input, to tell a retry from a conflict."""
    canonical = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def error_to_json(error: BaseException) -> dict[str, Any]:
    cls = type(error)
    try:
        args = json.loads(json.dumps(list(error.args)))
    except (TypeError, ValueError):
        args = None
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(error),
        "args": args,
    }


def error_from_json(data: dict[str, Any], *, step: str) -> BaseException:
    """Rebuild a recorded error as its original type when possible, else StepFailed."""
    module_name, _, qualname = data["type"].rpartition(".")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, BaseException) and data["args"] is not None:
            return cls(*data["args"])
    except Exception:
        pass
    return StepFailed(step, data["type"], data["message"])
