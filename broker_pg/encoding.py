"""Encoding messages for storage, with errors that name the bad argument."""

from __future__ import annotations

from typing import Any

from dramatiq import Message, get_encoder

from .errors import MessageEncodeError


def encode_message(message: Message[Any]) -> bytes:
    """Encode ``message`` with Dramatiq's global encoder, or raise MessageEncodeError."""
    try:
        return message.encode()
    except Exception as e:
        raise MessageEncodeError(
            f"Cannot enqueue a message for actor {message.actor_name!r}: "
            f"{_culprit(message)} cannot be encoded ({e}). "
            "Pass values the encoder accepts (JSON by default: str, int, float, bool, "
            "None, lists and dicts of them). Nothing was enqueued."
        ) from e


def _culprit(message: Message[Any]) -> str:
    encoder = get_encoder()
    candidates: list[tuple[str, Any]] = [
        *((f"argument {i}", value) for i, value in enumerate(message.args)),
        *((f"keyword argument {name!r}", value) for name, value in message.kwargs.items()),
        *((f"option {name!r}", value) for name, value in message.options.items()),
    ]
    for label, value in candidates:
        try:
            encoder.encode(value)
        except Exception:
            return f"{label} ({type(value).__name__} {value!r:.60})"
    return "one of its values"
