"""Control frames between a node and the tools that talk to it (client, CLI).

These ride the same authenticated connections as wire messages but are not part of the
ordering protocol and are never signed on their own: the connection's handshake already
proved who sent them. A control frame is ``0xC0 | kind (1 byte) | JSON object (UTF-8)``;
wire messages start with their version byte ``0x01``, so the two never collide.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

MAGIC = 0xC0
MAX_CONTROL_BYTES = 64 * 1024
"""Bytes of one control frame."""


class ControlError(ValueError):
    """Bytes that are not a well-formed control frame."""


class Control(IntEnum):
    STATUS_QUERY = 1
    """Client -> node: report your state."""
    STATUS = 2
    """Node -> client: view, sequence numbers, model version, queue depths."""
    REJECT = 3
    """Node -> client: a request was refused, and why (``request_id``, ``reason``)."""
    UPDATE = 4
    """Owner tool -> node: load ``model`` and submit the owner-signed ``update`` (hex)."""
    FAULT = 5
    """Demo/test tool -> node started with fault injection: behave as ``mode``."""
    ACK = 6
    """Node -> tool: the outcome of UPDATE or FAULT (``ok``, ``message``)."""
    CERTIFICATE_QUERY = 7
    """Client -> node: the certificate of (``client`` hex key, ``request_id``) from the ledger."""
    CERTIFICATE = 8
    """Node -> client: ``certificate`` (its JSON object, or null when unknown), ``node``."""


ANSWERS = {
    Control.STATUS_QUERY: Control.STATUS,
    Control.UPDATE: Control.ACK,
    Control.FAULT: Control.ACK,
    Control.CERTIFICATE_QUERY: Control.CERTIFICATE,
}
"""The kind of frame a node answers each query with."""


def is_control(frame: bytes) -> bool:
    return bool(frame) and frame[0] == MAGIC


def encode(kind: Control, body: dict[str, Any]) -> bytes:
    frame = bytes([MAGIC, kind]) + json.dumps(body, separators=(",", ":")).encode()
    if len(frame) > MAX_CONTROL_BYTES:
        raise ControlError(f"control frame of {len(frame)} bytes, limit {MAX_CONTROL_BYTES}")
    return frame


def decode(frame: bytes) -> tuple[Control, dict[str, Any]]:
    if len(frame) > MAX_CONTROL_BYTES:
        raise ControlError(f"control frame of {len(frame)} bytes, limit {MAX_CONTROL_BYTES}")
    if len(frame) < 2 or frame[0] != MAGIC:
        raise ControlError("not a control frame (first byte must be 0xc0)")
    try:
        kind = Control(frame[1])
    except ValueError:
        raise ControlError(f"unknown control kind {frame[1]}") from None
    try:
        body = json.loads(frame[2:].decode())
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, or nested too deep
        raise ControlError(f"control {kind.name} body is not JSON: {error!r}"[:500]) from None
    if not isinstance(body, dict):
        raise ControlError(f"control {kind.name} body must be a JSON object")
    return kind, body
