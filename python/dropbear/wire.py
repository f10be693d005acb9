"""Every Dropbear message and its one canonical byte encoding (docs/certificates.md).

Each message starts with the version byte ``0x01``, a kind byte and the 32-byte group id;
integers are big-endian, floats IEEE 754 binary64, texts UTF-8 behind a length. A signed
message is ``body || signature`` where the 64-byte Ed25519 signature covers ``body``.
Decoding is strict: ``encode(decode(b)) == b`` for every accepted ``b``, and any other
input (truncated, oversized, trailing bytes, unknown version or kind, NaN scores, ...)
raises :class:`WireError` and nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple, Self, TypeVar

from dropbear import _core
from dropbear.cached import cached_property
from dropbear.limits import (
    DECODE_MEMO_BYTES,
    DECODE_MEMO_ENTRIES,
    MAX_BATCH_ENTRIES,
    MAX_BATCH_UPDATES,
    MAX_BATCH_VOTE_MESSAGES,
    MAX_CATCHUP_BATCHES,
    MAX_INPUT_RANK,
    MAX_LABEL,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    MAX_NODES,
    MAX_REQUEST_BYTES,
    MAX_VOTES_PER_MESSAGE,
    SEQ_WINDOW,
)

VERSION = 1
SIGNATURE_BYTES = 64
DIGEST_BYTES = 32
KEY_BYTES = 32
MAX_PROOF_HASHES = 64
DTYPES: dict[str, int] = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
}
"""Model input dtypes a REQUEST may name, with their item sizes in bytes."""


class WireError(ValueError):
    """Bytes that are not a canonical Dropbear message; the message says what and where."""


class Kind(IntEnum):
    """The kind byte, second byte of every encoding."""

    REQUEST = 0x01
    VOTES = 0x02
    MODEL_UPDATE = 0x03
    PRE_PREPARE = 0x04
    PREPARE = 0x05
    COMMIT = 0x06
    CHECKPOINT = 0x07
    VIEW_CHANGE = 0x08
    NEW_VIEW = 0x09
    CATCHUP_REQUEST = 0x0A
    CATCHUP_RESPONSE = 0x0B
    REPLY = 0x0C
    MANIFEST = 0x20
    REQUEST_ENTRY = 0x21
    UPDATE_ENTRY = 0x22
    CERTIFICATE = 0x30
    STATE_SNAPSHOT = 0x40


# --- byte reader and writer -----------------------------------------------------------------


class Writer:
    """Appends canonical fields to a byte buffer."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def _pack(self, fmt: str, value: int) -> None:
        try:
            self._parts.append(struct.pack(fmt, value))
        except struct.error:
            raise WireError(f"integer {value!r} does not fit the {fmt[1:]} field") from None

    def u8(self, value: int) -> None:
        self._pack(">B", value)

    def u16(self, value: int) -> None:
        self._pack(">H", value)

    def u32(self, value: int) -> None:
        self._pack(">I", value)

    def u64(self, value: int) -> None:
        self._pack(">Q", value)

    def f64(self, value: float) -> None:
        self._parts.append(struct.pack(">d", _finite(value)))

    def fixed(self, data: bytes, size: int, what: str) -> None:
        self._parts.append(bytes(_sized(data, size, what)))

    def fixed_many(self, items: Sequence[bytes], size: int, what: str) -> None:
        """Fields of ``size`` bytes each, back to back (one append for all of them)."""
        for data in items:
            if len(data) != size:
                raise WireError(f"{what} is {len(data)} bytes, expected {size}")
        self._parts.append(b"".join(items))

    def record(self, fmt: struct.Struct, what: str, *values: Any) -> None:
        """Several fixed-width fields at once. ``fmt`` pads short byte strings, so callers
        check their lengths first (:func:`_sized`)."""
        try:
            self._parts.append(fmt.pack(*values))
        except struct.error as error:
            raise WireError(f"{what} does not fit its fields: {error}") from None

    def blob(self, data: bytes) -> None:
        self.u32(len(data))
        self._parts.append(bytes(data))

    def text(self, value: str, limit: int = MAX_NAME_BYTES) -> None:
        data = value.encode()
        if len(data) > limit:
            raise WireError(f"text {value[:32]!r} is {len(data)} bytes, limit {limit}")
        self.u16(len(data))
        self._parts.append(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


_U8, _U16, _U32, _U64, _F64 = (struct.Struct(f) for f in (">B", ">H", ">I", ">Q", ">d"))


def _sized(data: bytes, size: int, what: str) -> bytes:
    """``data`` if it is ``size`` bytes long (before a struct would pad or cut it)."""
    if len(data) != size:
        raise WireError(f"{what} is {len(data)} bytes, expected {size}")
    return data


def _finite(value: float, what: str = "score") -> float:
    if not math.isfinite(value):
        raise WireError(f"{what} {value!r} is not a finite number")
    return value


class Reader:
    """Reads canonical fields; every failure is a :class:`WireError` naming the field."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def _take(self, size: int, what: str) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise WireError(f"truncated {what}: need {size} bytes at offset {self._pos}")
        out = bytes(self._data[self._pos : end])
        self._pos = end
        return out

    def u8(self, what: str) -> int:
        return self.record(_U8, what)[0]  # type: ignore[no-any-return]

    def u16(self, what: str) -> int:
        return self.record(_U16, what)[0]  # type: ignore[no-any-return]

    def u32(self, what: str) -> int:
        return self.record(_U32, what)[0]  # type: ignore[no-any-return]

    def u64(self, what: str) -> int:
        return self.record(_U64, what)[0]  # type: ignore[no-any-return]

    def f64(self, what: str) -> float:
        return _finite(self.record(_F64, what)[0], what)

    def fixed(self, size: int, what: str) -> bytes:
        return self._take(size, what)

    def record(self, fmt: struct.Struct, what: str) -> tuple[Any, ...]:
        """Several fixed-width fields at once (``fmt``'s byte strings come out as bytes)."""
        end = self._pos + fmt.size
        if end > len(self._data):
            raise WireError(f"truncated {what}: need {fmt.size} bytes at offset {self._pos}")
        values = fmt.unpack_from(self._data, self._pos)
        self._pos = end
        return values

    def blob(self, what: str, limit: int = MAX_MESSAGE_BYTES) -> bytes:
        size = self.u32(f"{what} length")
        if size > limit:
            raise WireError(f"{what} is {size} bytes, limit {limit}")
        return self._take(size, what)

    def text(self, what: str, limit: int = MAX_NAME_BYTES) -> str:
        size = self.u16(f"{what} length")
        if size > limit:
            raise WireError(f"{what} is {size} bytes, limit {limit}")
        try:
            return self._take(size, what).decode()
        except UnicodeDecodeError as error:
            raise WireError(f"{what} is not UTF-8: {error}") from None

    def count(self, what: str, limit: int, width: int = 4) -> int:
        value = self.u32(what) if width == 4 else self.u16(what) if width == 2 else self.u8(what)
        if value > limit:
            raise WireError(f"{what} {value} exceeds the limit {limit}")
        return value

    @property
    def offset(self) -> int:
        return self._pos

    def peek(self, fmt: struct.Struct, at: int, what: str) -> Any:
        """The value ``at`` bytes past the offset, without moving it."""
        start = self._pos + at
        if start + fmt.size > len(self._data):
            raise WireError(f"truncated {what}: need {fmt.size} bytes at offset {start}")
        return fmt.unpack_from(self._data, start)[0]

    def since(self, start: int) -> bytes:
        """The bytes read from offset ``start`` up to the current offset."""
        return bytes(self._data[start : self._pos])

    def end(self, what: str) -> None:
        if self._pos != len(self._data):
            raise WireError(f"{len(self._data) - self._pos} trailing bytes after {what}")


def header(w: Writer, kind: Kind, group_id: bytes) -> None:
    """Writes the version byte, the kind byte and the group id."""
    w.u8(VERSION)
    w.u8(kind)
    w.fixed(group_id, DIGEST_BYTES, "group id")


def read_header(r: Reader, kind: Kind) -> bytes:
    """Reads and checks the version and kind bytes; returns the group id."""
    version, got, group_id = r.record(_HEADER, "header (version, kind, group id)")
    if version != VERSION:
        raise WireError(f"unknown version {version}, expected {VERSION}")
    if got != kind:
        raise WireError(f"kind {got:#04x}, expected {kind.name} ({kind:#04x})")
    return group_id  # type: ignore[no-any-return]


_HEADER = struct.Struct(">BB32s")


def _node(r: Reader, what: str = "node") -> int:
    value = r.u16(what)
    if value >= MAX_NODES:
        raise WireError(f"{what} {value} exceeds the limit {MAX_NODES - 1}")
    return value


# --- messages --------------------------------------------------------------------------------

M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message:
    """A signed message: ``body || signature``. Subclasses define the body's fields."""

    KIND: ClassVar[Kind]

    def _write_body(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        raise NotImplementedError

    @cached_property
    def body(self) -> bytes:
        """The signed bytes: everything before the signature."""
        w = Writer()
        self._write_body(w)
        return w.getvalue()

    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding, ``body || signature``."""
        signature: bytes = self.signature  # type: ignore[attr-defined]
        if len(signature) != SIGNATURE_BYTES:
            raise WireError(f"signature is {len(signature)} bytes, expected {SIGNATURE_BYTES}")
        return self.body + signature + self._tail()

    def _tail(self) -> bytes:
        return b""

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the signed body: the message's identity."""
        return _core.sha256(self.body)

    def _signed_bytes(self) -> bytes:
        """What the signature signs: the body (a REPLY signs a context and its digest)."""
        return self.body

    def signed(self, key: _core.SigningKey) -> Self:
        """A copy signed with ``key``: the same fields (checked when this one was made; no
        ``__post_init__`` looks at the signature, so none runs again) and the same body."""
        body = self.body
        fields = {name: self.__dict__[name] for name in _field_names(type(self))}
        fields["signature"] = key.sign(self._signed_bytes())
        if isinstance(getattr(type(self), "body", None), cached_property):
            fields["body"] = body
        return _trusted(type(self), fields)

    def verify(self, public_key: bytes) -> bool:
        """Whether the signature verifies under ``public_key`` (False for malformed keys)."""
        try:
            return _core.verify(public_key, self._signed_bytes(),
                                self.signature)  # type: ignore[attr-defined]
        except ValueError:
            return False

    def check_item(self, public_key: bytes) -> tuple[bytes, bytes, bytes]:
        """The ``(message, signature, public key)`` triple for :func:`_core.batch_verify`
        (node and owner signatures) or :func:`_core.verify_requests` (client requests)."""
        return (self._signed_bytes(), self.signature, public_key)  # type: ignore[attr-defined]

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decodes exactly one message of this class; WireError otherwise."""
        if len(data) > MAX_MESSAGE_BYTES:
            raise WireError(f"message is {len(data)} bytes, limit {MAX_MESSAGE_BYTES}")
        r = Reader(data)
        message = cls._read(r)
        r.end(cls.KIND.name)
        return message

    @classmethod
    def _read(cls, r: Reader) -> Self:
        start = r.offset
        group_id = read_header(r, cls.KIND)
        fields = cls._read_body(r, group_id)
        body = r.since(start)
        fields["signature"] = r.fixed(SIGNATURE_BYTES, "signature")
        fields.update(cls._read_tail(r))
        try:
            message = cls(**fields)
        except (TypeError, ValueError) as error:
            raise WireError(f"invalid {cls.KIND.name}: {error}") from None
        # Decoding is canonical (the one encoding of these fields; tests/test_wire.py
        # re-encodes whatever decodes): the body read is the body, not encoded again.
        message.__dict__["body"] = body
        return message

    @classmethod
    def _read_tail(cls, r: Reader) -> dict[str, Any]:
        return {}


def _nested(r: Reader, cls: type[M], what: str) -> M:
    return cls.decode(r.blob(what))


def _memo_cost(data: bytes) -> int:
    """Memory an entry holds: its bytes, and the decoded objects, about 4x as much (a VOTES
    message of 1,024 votes is 45 KB encoded and about 200 KB decoded)."""
    return 5 * len(data)


class DecodeMemo:
    """Decoded messages by their exact bytes: a bounded FIFO map (``limit`` entries).

    A PRE-PREPARE repeats the REQUEST headers and VOTES messages a node has, for the most
    part, decoded already when they reached it directly; decoding is a pure function of the
    bytes, so identical bytes may share one decoded (immutable) object, and its cached
    digest. Used for the kinds that repeat: REQUEST headers and VOTES.
    """

    def __init__(self, limit: int = DECODE_MEMO_ENTRIES,
                 limit_bytes: int = DECODE_MEMO_BYTES) -> None:
        """At most ``limit`` entries and ``limit_bytes`` of memory (see :func:`_memo_cost`)."""
        self.limit = limit
        self.limit_bytes = limit_bytes
        # An OrderedDict: evicting its oldest entry is O(1); a dict's ``next(iter(d))``
        # scans past every slot deleted since its last resize (9 us a put at 16,384).
        self._items: OrderedDict[bytes, Message] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    def decode(self, cls: type[M], data: bytes) -> M:
        hit = self.get(cls, data)
        if hit is not None:
            return hit
        message = cls.decode(data)
        self.put(data, message)
        return message

    def get(self, cls: type[M], data: bytes) -> M | None:
        """The ``cls`` message decoded from exactly ``data`` before, if it is still held."""
        hit = self._items.get(data)
        if hit is not None and type(hit) is cls:
            self.hits += 1
            return hit  # type: ignore[return-value]
        return None

    def put(self, data: bytes, message: Message) -> None:
        cost = _memo_cost(data)
        if cost > self.limit_bytes or data in self._items:
            return
        while self._items and (len(self._items) >= self.limit
                               or self._bytes + cost > self.limit_bytes):
            oldest, _ = self._items.popitem(last=False)
            self._bytes -= _memo_cost(oldest)
        self._items[data] = message
        self._bytes += cost

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


MEMO = DecodeMemo()
"""The process's memo for REQUEST headers and VOTES (see :class:`DecodeMemo`)."""


@dataclass(frozen=True)
class RequestHeader(Message):
    """A client's signed request without the input bytes; the input is bound by its digest.

    This is what the ordering protocol carries; ``digest`` is the request digest.
    """

    KIND = Kind.REQUEST
    group_id: bytes
    client: bytes
    request_id: int
    dtype: str
    shape: tuple[int, ...]
    input_digest: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise WireError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if len(self.shape) > MAX_INPUT_RANK:
            raise WireError(f"rank {len(self.shape)} > {MAX_INPUT_RANK}")
        if not all(0 <= d < 2**32 for d in self.shape):
            raise WireError(f"bad shape {self.shape}")
        if not 0 <= self.request_id < 2**64:
            raise WireError(f"request id {self.request_id} out of range")

    @staticmethod
    def size_at(r: Reader) -> int:
        """The length of the encoded header (signature included) at ``r``'s offset, from its
        dtype length and rank bytes; WireError if they are cut off."""
        dtype_at = 2 + DIGEST_BYTES + KEY_BYTES + 8
        dtype_len = r.peek(_U16, dtype_at, "dtype length")
        rank = r.peek(_U8, dtype_at + 2 + dtype_len, "rank")
        return dtype_at + 2 + dtype_len + 1 + 4 * rank + DIGEST_BYTES + SIGNATURE_BYTES

    @property
    def input_bytes(self) -> int:
        """The size the input must have: product of the shape times the item size."""
        return math.prod(self.shape) * DTYPES[self.dtype]

    def verify(self, public_key: bytes) -> bool:
        """Whether the client signature verifies under ``public_key``, by the rule every
        node applies to client signatures (ZIP-215: :func:`_core.verify_requests`)."""
        return not _core.verify_requests([(self.body, self.signature, public_key)])

    @cached_property
    def body(self) -> bytes:
        """The signed bytes, packed at once (every client request and every node's intake
        goes through here): the same bytes :meth:`_read_body` reads."""
        return _header_body(_sized(self.group_id, DIGEST_BYTES, "group id"),
                            _sized(self.client, KEY_BYTES, "client key"), self.request_id,
                            self.dtype, self.shape,
                            _sized(self.input_digest, DIGEST_BYTES, "input digest"))

    @classmethod
    def decode(cls, data: bytes) -> RequestHeader:
        fields = _core.read_request_header(data)  # see Request.decode
        if fields is not None:
            return _header_of(fields)
        return super().decode(data)  # the general reader names what is wrong

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        client, request_id = r.record(_CLIENT_AND_ID, "client key and request id")
        dtype = r.text("dtype")
        rank = r.count("rank", MAX_INPUT_RANK, width=1)
        shape = r.record(_SHAPES[rank], "shape")
        input_digest = r.fixed(DIGEST_BYTES, "input digest")
        return dict(
            group_id=group_id,
            client=client,
            request_id=request_id,
            dtype=dtype,
            shape=shape,
            input_digest=input_digest,
        )


_CLIENT_AND_ID = struct.Struct(f">{KEY_BYTES}sQ")
_SHAPES = [struct.Struct(f">{rank}I") for rank in range(MAX_INPUT_RANK + 1)]
_REQUEST_FIXED = struct.Struct(f">BB{DIGEST_BYTES}s{KEY_BYTES}sQH")
"""A REQUEST header up to its dtype: version, kind, group id, client key, request id, dtype
length."""


def _header_body(group_id: bytes, client: bytes, request_id: int, dtype: str,
                 shape: Sequence[int], input_digest: bytes) -> bytes:
    """A REQUEST header's signed bytes, packed at once. The caller checks the byte fields'
    lengths (a struct pads short ones); struct.error for a request id or dimension out of
    its field's range."""
    name = dtype.encode()
    return b"".join((
        _REQUEST_FIXED.pack(VERSION, Kind.REQUEST, group_id, client, request_id, len(name)),
        name, _U8.pack(len(shape)), _SHAPES[len(shape)].pack(*shape), input_digest,
    ))


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass ``cls``'s field names (looked up once per class)."""
    return tuple(f.name for f in dataclasses.fields(cls))


def _trusted(cls: type[M], fields: dict[str, Any]) -> M:
    """An instance of the frozen dataclass ``cls`` with ``fields`` the caller has checked as
    its ``__init__`` and ``__post_init__`` would (both skipped: they are most of the cost of
    decoding a REQUEST)."""
    message = object.__new__(cls)
    message.__dict__.update(fields)
    return message


_DTYPE_BY_INDEX: tuple[str, ...] = _core.REQUEST_DTYPES
"""The dtype names in the Rust core's order (``_core.read_request`` gives an index); the same
names as DTYPES (tests/test_wire.py)."""


def _header_of(fields: tuple) -> RequestHeader:
    """The RequestHeader of the fields ``_core.read_request`` read, checked there as
    ``RequestHeader.__post_init__`` checks them: a known dtype, a rank within MAX_INPUT_RANK,
    the request id and the dimensions within their fields' widths."""
    group_id, client, request_id, dtype, shape, input_digest, signature, body = fields[:8]
    return _trusted(RequestHeader, {
        "group_id": group_id, "client": client, "request_id": request_id,
        "dtype": _DTYPE_BY_INDEX[dtype], "shape": shape, "input_digest": input_digest,
        "signature": signature, "body": body,
    })


@dataclass(frozen=True)
class Request(Message):
    """REQUEST: a client's signed model input, sent to every node.

    Encoding: the :class:`RequestHeader` (signed, binds the input by its SHA-256), then the
    input bytes behind a 4-byte length. The request digest is the header's digest.
    """

    KIND = Kind.REQUEST
    header: RequestHeader
    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) > MAX_REQUEST_BYTES:
            raise WireError(f"input is {len(self.data)} bytes, limit {MAX_REQUEST_BYTES}")
        if len(self.data) != self.header.input_bytes:
            raise WireError(f"input is {len(self.data)} bytes, shape {self.header.shape} "
                            f"of {self.header.dtype} needs {self.header.input_bytes}")

    @staticmethod
    def create(
        key: _core.SigningKey,
        group_id: bytes,
        request_id: int,
        dtype: str,
        shape: Sequence[int],
        data: bytes,
    ) -> Request:
        """A request signed by the client ``key``. The header's bytes are packed at once (a
        client makes one per request); anything :class:`RequestHeader` or :class:`Request`
        would refuse goes through them, and they name the fault."""
        input_digest = _core.sha256(data)  # (TypeError for anything but bytes-like data)
        shape, data = tuple(shape), bytes(data)
        client, item = key.public_key, DTYPES.get(dtype)
        try:
            if item is None or len(shape) > MAX_INPUT_RANK or len(group_id) != DIGEST_BYTES:
                raise ValueError
            body = _header_body(group_id, client, request_id, dtype, shape, input_digest)
            if len(data) > MAX_REQUEST_BYTES or len(data) != math.prod(shape) * item:
                raise ValueError
        except (ValueError, TypeError, struct.error):
            head = RequestHeader(group_id, client, request_id, dtype, shape, input_digest)
            return Request(head.signed(key), data)
        head = _trusted(RequestHeader, {
            "group_id": group_id, "client": client, "request_id": request_id, "dtype": dtype,
            "shape": shape, "input_digest": input_digest, "signature": key.sign(body),
            "body": body,
        })
        return _trusted(Request, {"header": head, "data": data})

    def verify(self, public_key: bytes) -> bool:
        """Whether the client signature verifies (see :meth:`RequestHeader.verify`)."""
        return self.header.verify(public_key)

    @property
    def signature(self) -> bytes:
        return self.header.signature

    @property
    def body(self) -> bytes:  # type: ignore[override]
        return self.header.body

    @cached_property
    def digest(self) -> bytes:
        """The request digest: the header's (cached here too: a node asks for it about six
        times per request, and a later access is then a plain attribute read)."""
        return self.header.digest

    @cached_property
    def encoded(self) -> bytes:
        """The header, then the input behind its 4-byte length (the frame a client sends to
        every node, and again on each re-send)."""
        return b"".join((self.header.encoded, _U32.pack(len(self.data)), self.data))

    def data_matches(self) -> bool:
        """Whether the input bytes hash to the signed input digest."""
        return _core.sha256(self.data) == self.header.input_digest

    @classmethod
    def decode(cls, data: bytes) -> Request:
        """Well-formed requests (every one an honest client sends) are read at fixed
        offsets, in one pass, by the Rust core (``_core.read_request``); anything else goes
        to the general reader, which names the fault. Both accept exactly the same bytes
        (tests/test_wire.py)."""
        fields = _core.read_request(data)
        if fields is None:
            return super().decode(data)
        # A PRE-PREPARE carries these header bytes again: share the object.
        header_bytes = fields[8]
        head = MEMO.get(RequestHeader, header_bytes)
        if head is None:
            head = _header_of(fields)
            MEMO.put(header_bytes, head)
        return _trusted(Request, {"header": head, "data": fields[9]})

    @classmethod
    def _read(cls, r: Reader) -> Request:
        # The header's bytes are what a PRE-PREPARE carries for this request: decode them
        # through the memo, whichever of the two reaches this node first.
        head = MEMO.decode(RequestHeader, r.fixed(RequestHeader.size_at(r), "request header"))
        data = r.blob("input", MAX_REQUEST_BYTES)
        try:
            return cls(head, data)
        except ValueError as error:
            raise WireError(str(error)) from None


class Vote(NamedTuple):
    """One node's output for one request: the label its model chose and the score.

    A named tuple, not a dataclass: a VOTES message carries one per request of an inference
    batch, and every node decodes them (a tuple is made in a third of the time)."""

    request: bytes
    label: int
    score: float


_VOTE = struct.Struct(">32sId")
"""A vote in a VOTES message: request digest, label, score."""


@dataclass(frozen=True)
class Votes(Message):
    """VOTES: one node's signed outputs for one inference batch, all from one model version."""

    KIND = Kind.VOTES
    group_id: bytes
    node: int
    model_version: bytes
    votes: tuple[Vote, ...]
    signature: bytes = b""

    def _write_body(self, w: Writer) -> None:
        header(w, Kind.VOTES, self.group_id)
        w.u16(self.node)
        w.fixed(self.model_version, DIGEST_BYTES, "model version")
        if len(self.votes) > MAX_VOTES_PER_MESSAGE:
            raise WireError(f"{len(self.votes)} votes, limit {MAX_VOTES_PER_MESSAGE}")
        w.u32(len(self.votes))
        for vote in self.votes:
            if not 0 <= vote.label <= MAX_LABEL:
                raise WireError(f"label {vote.label} out of range")
            w.record(_VOTE, "vote", _sized(vote.request, DIGEST_BYTES, "request digest"),
                     vote.label, _finite(vote.score))

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        node = _node(r)
        version = r.fixed(DIGEST_BYTES, "model version")
        count = r.count("vote count", MAX_VOTES_PER_MESSAGE)
        votes = tuple(map(Vote._make, _VOTE.iter_unpack(r.fixed(count * _VOTE.size, "votes"))))
        for vote in votes:
            if vote.label > MAX_LABEL:
                raise WireError(f"label {vote.label} exceeds {MAX_LABEL}")
            _finite(vote.score)
        return dict(group_id=group_id, node=node, model_version=version, votes=votes)


@dataclass(frozen=True)
class ModelUpdate(Message):
    """MODEL-UPDATE: node ``node`` switches to ``model_version``; signed by its owner key.

    ``counter`` increases with every update of the node (replay protection).
    """

    KIND = Kind.MODEL_UPDATE
    group_id: bytes
    node: int
    model_version: bytes
    counter: int
    signature: bytes = b""

    def _write_body(self, w: Writer) -> None:
        header(w, Kind.MODEL_UPDATE, self.group_id)
        w.u16(self.node)
        w.fixed(self.model_version, DIGEST_BYTES, "model version")
        w.u64(self.counter)

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        return dict(
            group_id=group_id,
            node=_node(r),
            model_version=r.fixed(DIGEST_BYTES, "model version"),
            counter=r.u64("counter"),
        )


@dataclass(frozen=True)
class Statement:
    """The fixed 88-byte statement that PRE-PREPARE, PREPARE, COMMIT and CHECKPOINT sign.

    ``01 | kind | group id (32) | node u16 | view u64 | seq u64 | size u32 | digest (32)``.
    For a CHECKPOINT, view and size are 0 and digest is the state digest; otherwise digest
    is the batch's Merkle root and size its number of leaves. The COMMIT statement is the
    one inference certificates carry.
    """

    kind: Kind
    group_id: bytes
    node: int
    view: int
    seq: int
    size: int
    digest: bytes

    SIZE: ClassVar[int] = 88

    @cached_property
    def encoded(self) -> bytes:
        w = Writer()
        header(w, self.kind, self.group_id)
        w.u16(self.node)
        w.u64(self.view)
        w.u64(self.seq)
        w.u32(self.size)
        w.fixed(self.digest, DIGEST_BYTES, "statement digest")
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader, kind: Kind) -> Statement:
        start = r.offset
        group_id = read_header(r, kind)
        statement = cls(
            kind,
            group_id,
            _node(r),
            r.u64("view"),
            r.u64("seq"),
            r.u32("size"),
            r.fixed(DIGEST_BYTES, "statement digest"),
        )
        statement.__dict__["encoded"] = r.since(start)  # canonical: as in Message._read
        return statement

    @classmethod
    def decode(cls, data: bytes) -> Statement:
        """Decodes a statement of any of the four statement kinds."""
        if len(data) != cls.SIZE:
            raise WireError(f"statement is {len(data)} bytes, expected {cls.SIZE}")
        r = Reader(data)
        if data[0] != VERSION:
            raise WireError(f"unknown version {data[0]}")
        try:
            kind = Kind(data[1])
        except ValueError:
            raise WireError(f"unknown statement kind {data[1]:#04x}") from None
        if kind not in STATEMENT_KINDS:
            raise WireError(f"{kind.name} is not a statement kind")
        return cls.read(r, kind)

    @property
    def slot(self) -> tuple[int, int]:
        return (self.view, self.seq)


STATEMENT_KINDS = (Kind.PRE_PREPARE, Kind.PREPARE, Kind.COMMIT, Kind.CHECKPOINT)


@dataclass(frozen=True)
class StatementMessage(Message):
    """A message whose body is a :class:`Statement`."""

    statement: Statement
    signature: bytes = b""

    def __post_init__(self) -> None:
        if self.statement.kind != self.KIND:
            raise WireError(f"{self.statement.kind.name} statement in a {self.KIND.name}")

    @property
    def body(self) -> bytes:  # type: ignore[override]
        return self.statement.encoded

    @property
    def node(self) -> int:
        return self.statement.node

    @property
    def view(self) -> int:
        return self.statement.view

    @property
    def seq(self) -> int:
        return self.statement.seq

    @property
    def root(self) -> bytes:
        return self.statement.digest

    @classmethod
    def _read(cls, r: Reader) -> Self:
        statement = Statement.read(r, cls.KIND)
        fields: dict[str, Any] = {"statement": statement}
        fields["signature"] = r.fixed(SIGNATURE_BYTES, "signature")
        fields.update(cls._read_tail(r))
        try:
            return cls(**fields)
        except (TypeError, ValueError) as error:
            raise WireError(f"invalid {cls.KIND.name}: {error}") from None


@dataclass(frozen=True)
class Batch:
    """What a PRE-PREPARE orders: requests (headers), the VOTES used, and model updates.

    The entries (Merkle leaves) are derived from it deterministically by the replica.
    """

    requests: tuple[RequestHeader, ...] = ()
    votes: tuple[Votes, ...] = ()
    updates: tuple[ModelUpdate, ...] = ()

    @cached_property
    def encoded(self) -> bytes:
        w = Writer()
        if len(self.requests) > MAX_BATCH_ENTRIES:
            raise WireError(f"{len(self.requests)} requests")
        if len(self.votes) > MAX_BATCH_VOTE_MESSAGES:
            raise WireError(f"{len(self.votes)} VOTES")
        if len(self.updates) > MAX_BATCH_UPDATES:
            raise WireError(f"{len(self.updates)} updates")
        for items in (self.requests, self.votes, self.updates):
            w.u32(len(items))
            for item in items:
                w.blob(item.encoded)
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> Batch:
        requests = tuple(
            MEMO.decode(RequestHeader, r.blob("request header"))
            for _ in range(r.count("request count", MAX_BATCH_ENTRIES))
        )
        votes = tuple(
            MEMO.decode(Votes, r.blob("VOTES"))
            for _ in range(r.count("VOTES count", MAX_BATCH_VOTE_MESSAGES))
        )
        updates = tuple(
            _nested(r, ModelUpdate, "model update")
            for _ in range(r.count("update count", MAX_BATCH_UPDATES))
        )
        return cls(requests, votes, updates)

    @property
    def is_null(self) -> bool:
        return not (self.requests or self.votes or self.updates)


@dataclass(frozen=True)
class PrePrepare(StatementMessage):
    """PRE-PREPARE: the primary's signed proposal statement followed by the batch."""

    KIND = Kind.PRE_PREPARE
    batch: Batch = Batch()

    def _tail(self) -> bytes:
        return self.batch.encoded

    @classmethod
    def _read_tail(cls, r: Reader) -> dict[str, Any]:
        return {"batch": Batch.read(r)}


@dataclass(frozen=True)
class Prepare(StatementMessage):
    """PREPARE: a node's signed statement, plus the primary's proposal signature it saw.

    The primary's signature lets anyone holding two PREPAREs with different roots for one
    (view, seq) prove that the primary equivocated.
    """

    KIND = Kind.PREPARE
    proposal_signature: bytes = bytes(SIGNATURE_BYTES)

    def _tail(self) -> bytes:
        if len(self.proposal_signature) != SIGNATURE_BYTES:
            raise WireError("bad proposal signature")
        return self.proposal_signature

    @classmethod
    def _read_tail(cls, r: Reader) -> dict[str, Any]:
        return {"proposal_signature": r.fixed(SIGNATURE_BYTES, "proposal signature")}

    def proposal(self, primary: int) -> Statement:
        """The PRE-PREPARE statement of ``primary`` that the proposal signature covers."""
        s = self.statement
        return Statement(Kind.PRE_PREPARE, s.group_id, primary, s.view, s.seq, s.size, s.digest)


@dataclass(frozen=True)
class Commit(StatementMessage):
    """COMMIT: a node's signed commit statement (the one certificates carry)."""

    KIND = Kind.COMMIT


@dataclass(frozen=True)
class Checkpoint(StatementMessage):
    """CHECKPOINT: a node's signed state digest after executing ``seq``."""

    KIND = Kind.CHECKPOINT


def _statement_list(r: Reader, cls: type[M], what: str, limit: int) -> tuple[M, ...]:
    return tuple(_nested(r, cls, what) for _ in range(r.count(f"{what} count", limit)))


def _write_list(w: Writer, items: Sequence[Message]) -> None:
    w.u32(len(items))
    for item in items:
        w.blob(item.encoded)


@dataclass(frozen=True)
class PreparedProof:
    """A batch prepared at (view, seq): the batch and 2f+1 matching PREPAREs."""

    view: int
    seq: int
    batch: Batch
    prepares: tuple[Prepare, ...]

    def write(self, w: Writer) -> None:
        w.u64(self.view)
        w.u64(self.seq)
        w.blob(self.batch.encoded)
        _write_list(w, self.prepares)

    @classmethod
    def read(cls, r: Reader) -> PreparedProof:
        view, seq = r.u64("view"), r.u64("seq")
        batch_reader = Reader(r.blob("batch"))
        batch = Batch.read(batch_reader)
        batch_reader.end("batch")
        return cls(view, seq, batch, _statement_list(r, Prepare, "PREPARE", MAX_NODES))


@dataclass(frozen=True)
class CommittedBatch:
    """A batch committed at (view, seq): the batch and 2f+1 matching COMMITs."""

    view: int
    seq: int
    batch: Batch
    commits: tuple[Commit, ...]

    @cached_property
    def encoded(self) -> bytes:
        w = Writer()
        w.u64(self.view)
        w.u64(self.seq)
        w.blob(self.batch.encoded)
        _write_list(w, self.commits)
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> CommittedBatch:
        view, seq = r.u64("view"), r.u64("seq")
        batch_reader = Reader(r.blob("batch"))
        batch = Batch.read(batch_reader)
        batch_reader.end("batch")
        return cls(view, seq, batch, _statement_list(r, Commit, "COMMIT", MAX_NODES))

    @classmethod
    def decode(cls, data: bytes) -> CommittedBatch:
        r = Reader(data)
        out = cls.read(r)
        r.end("committed batch")
        return out


@dataclass(frozen=True)
class ViewChange(Message):
    """VIEW-CHANGE: node ``node`` moves to ``new_view``; carries its stable checkpoint
    (with 2f+1 CHECKPOINTs) and its prepared batches above it."""

    KIND = Kind.VIEW_CHANGE
    group_id: bytes
    node: int
    new_view: int
    stable_seq: int
    checkpoint_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedProof, ...]
    signature: bytes = b""

    def _write_body(self, w: Writer) -> None:
        header(w, Kind.VIEW_CHANGE, self.group_id)
        w.u16(self.node)
        w.u64(self.new_view)
        w.u64(self.stable_seq)
        _write_list(w, self.checkpoint_proof)
        if len(self.prepared) > SEQ_WINDOW:
            raise WireError(f"{len(self.prepared)} prepared proofs")
        w.u32(len(self.prepared))
        for proof in self.prepared:
            proof.write(w)

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        node, new_view, stable_seq = _node(r), r.u64("new view"), r.u64("stable seq")
        proof = _statement_list(r, Checkpoint, "CHECKPOINT", MAX_NODES)
        prepared = tuple(
            PreparedProof.read(r) for _ in range(r.count("prepared count", SEQ_WINDOW))
        )
        return dict(
            group_id=group_id,
            node=node,
            new_view=new_view,
            stable_seq=stable_seq,
            checkpoint_proof=proof,
            prepared=prepared,
        )


@dataclass(frozen=True)
class Proposal:
    """The new primary's signature over the PRE-PREPARE statement of a re-proposed slot."""

    seq: int
    size: int
    root: bytes
    signature: bytes


@dataclass(frozen=True)
class NewView(Message):
    """NEW-VIEW: the new primary's 2f+1 VIEW-CHANGEs and its signed re-proposals.

    Every replica recomputes the re-proposed batches from the VIEW-CHANGEs; the proposals
    carry the primary's PRE-PREPARE signatures for them.
    """

    KIND = Kind.NEW_VIEW
    group_id: bytes
    node: int
    view: int
    view_changes: tuple[ViewChange, ...]
    proposals: tuple[Proposal, ...]
    signature: bytes = b""

    def _write_body(self, w: Writer) -> None:
        header(w, Kind.NEW_VIEW, self.group_id)
        w.u16(self.node)
        w.u64(self.view)
        _write_list(w, self.view_changes)
        if len(self.proposals) > SEQ_WINDOW:
            raise WireError(f"{len(self.proposals)} proposals")
        w.u32(len(self.proposals))
        for p in self.proposals:
            w.u64(p.seq)
            w.u32(p.size)
            w.fixed(p.root, DIGEST_BYTES, "root")
            w.fixed(p.signature, SIGNATURE_BYTES, "proposal signature")

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        node, view = _node(r), r.u64("view")
        changes = _statement_list(r, ViewChange, "VIEW-CHANGE", MAX_NODES)
        proposals = tuple(
            Proposal(
                r.u64("seq"),
                r.u32("size"),
                r.fixed(DIGEST_BYTES, "root"),
                r.fixed(SIGNATURE_BYTES, "proposal signature"),
            )
            for _ in range(r.count("proposal count", SEQ_WINDOW))
        )
        return dict(
            group_id=group_id, node=node, view=view, view_changes=changes, proposals=proposals
        )


@dataclass(frozen=True)
class CatchupRequest(Message):
    """CATCH-UP request: node ``node`` asks for committed batches from ``from_seq`` on."""

    KIND = Kind.CATCHUP_REQUEST
    group_id: bytes
    node: int
    from_seq: int
    signature: bytes = b""

    def _write_body(self, w: Writer) -> None:
        header(w, Kind.CATCHUP_REQUEST, self.group_id)
        w.u16(self.node)
        w.u64(self.from_seq)

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        return dict(group_id=group_id, node=_node(r), from_seq=r.u64("from seq"))


@dataclass(frozen=True)
class CatchupResponse(Message):
    """CATCH-UP response: consecutive committed batches, each proven by 2f+1 COMMITs, and
    the sender's stable checkpoint (2f+1 CHECKPOINTs, possibly none)."""

    KIND = Kind.CATCHUP_RESPONSE
    group_id: bytes
    node: int
    batches: tuple[CommittedBatch, ...]
    checkpoint_proof: tuple[Checkpoint, ...] = ()
    signature: bytes = b""

    def _write_body(self, w: Writer) -> None:
        header(w, Kind.CATCHUP_RESPONSE, self.group_id)
        w.u16(self.node)
        if len(self.batches) > MAX_CATCHUP_BATCHES:
            raise WireError(f"{len(self.batches)} batches")
        w.u32(len(self.batches))
        for batch in self.batches:
            w.blob(batch.encoded)
        _write_list(w, self.checkpoint_proof)

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        node = _node(r)
        batches = tuple(
            CommittedBatch.decode(r.blob("committed batch"))
            for _ in range(r.count("batch count", MAX_CATCHUP_BATCHES))
        )
        proof = _statement_list(r, Checkpoint, "CHECKPOINT", MAX_NODES)
        return dict(group_id=group_id, node=node, batches=batches, checkpoint_proof=proof)


# --- entries (Merkle leaves) and certificates ---------------------------------------------


class EntryVote(NamedTuple):
    """A vote as an entry records it: node, model version, label, score (a named tuple,
    like :class:`Vote`: every node makes n of them per ordered request)."""

    node: int
    model_version: bytes
    label: int
    score: float


_ENTRY_HEAD = struct.Struct(">BB32s32sQH")
"""Version, kind, request digest, client key, request id, vote count."""
_ENTRY_VOTE = struct.Struct(">H32sId")
"""Node, model version, label, score."""
_ENTRY_TAIL = struct.Struct(">IHB")
"""Agreed label, threshold, reached."""
_ENTRY_WHOLE: dict[int, struct.Struct] = {}
"""The whole entry encoding by vote count (head, votes, tail in one pack); filled on use."""


def _entry_struct(votes: int) -> struct.Struct:
    whole = _ENTRY_WHOLE.get(votes)
    if whole is None:
        if not 0 <= votes <= MAX_NODES:
            raise WireError(f"{votes} votes in an entry")
        whole = _ENTRY_WHOLE[votes] = struct.Struct(
            _ENTRY_HEAD.format + _ENTRY_VOTE.format[1:] * votes + _ENTRY_TAIL.format[1:])
    return whole


@dataclass(frozen=True)
class RequestEntry:
    """The leaf of one ordered request: its votes and the agreed result.

    ``01 | 21 | request digest | client key | request id u64 | vote count u16 |
    (node u16 | model version | label u32 | score f64)* | label u32 | threshold u16 |
    reached u8``; votes sorted by strictly increasing node.
    """

    request: bytes
    client: bytes
    request_id: int
    votes: tuple[EntryVote, ...]
    label: int
    threshold: int
    reached: bool

    @cached_property
    def encoded(self) -> bytes:
        _check_vote_order(self.votes)
        if len(self.votes) > MAX_NODES:
            raise WireError(f"{len(self.votes)} votes in an entry")
        fields: list[Any] = []
        for v in self.votes:
            if v.node >= MAX_NODES:
                raise WireError(f"vote node {v.node} exceeds the limit {MAX_NODES - 1}")
            fields += (v.node, _sized(v.model_version, DIGEST_BYTES, "model version"), v.label,
                       _finite(v.score))
        return self.pack(_sized(self.request, DIGEST_BYTES, "request digest"),
                         _sized(self.client, KEY_BYTES, "client key"), self.request_id,
                         len(self.votes), fields, self.label, self.threshold, self.reached)

    @staticmethod
    def pack(request: bytes, client: bytes, request_id: int, count: int, votes: Sequence[Any],
             label: int, threshold: int, reached: bool) -> bytes:
        """The encoding of an entry of ``count`` votes, ``votes`` flat (node, model version,
        label, score for each, nodes increasing). Unchecked but for the integer ranges: the
        caller passes fields of the right sizes (a struct pads short byte strings)."""
        try:
            return _entry_struct(count).pack(VERSION, Kind.REQUEST_ENTRY, request, client,
                                             request_id, count, *votes, label, threshold,
                                             1 if reached else 0)
        except struct.error as error:
            raise WireError(f"entry does not fit its fields: {error}") from None

    @classmethod
    def of(cls, request: bytes, client: bytes, request_id: int, votes: tuple[EntryVote, ...],
           label: int, threshold: int, reached: bool, encoded: bytes) -> RequestEntry:
        """An entry whose canonical ``encoded`` the caller made with :meth:`pack` from these
        same fields (the replica's batch derivation), without the checks of ``__init__``."""
        entry = object.__new__(cls)
        entry.__dict__.update(request=request, client=client, request_id=request_id,
                              votes=votes, label=label, threshold=threshold, reached=reached,
                              encoded=encoded)
        return entry

    @staticmethod
    def request_of(encoded: bytes) -> bytes:
        """The request digest of an entry's canonical encoding, without decoding the rest
        (bytes 2-33: after the version and kind bytes)."""
        return encoded[2 : 2 + DIGEST_BYTES]

    @classmethod
    def decode(cls, data: bytes) -> RequestEntry:
        r = Reader(data)
        version, kind, request, client, request_id, count = r.record(_ENTRY_HEAD, "entry")
        if version != VERSION:
            raise WireError("unknown entry version")
        if kind != Kind.REQUEST_ENTRY:
            raise WireError("not a request entry")
        if count > MAX_NODES:
            raise WireError(f"vote count {count} exceeds the limit {MAX_NODES}")
        votes = []
        for _ in range(count):
            node, model_version, vote_label, score = r.record(_ENTRY_VOTE, "entry vote")
            if node >= MAX_NODES:
                raise WireError(f"node {node} exceeds the limit {MAX_NODES - 1}")
            votes.append(EntryVote(node, model_version, vote_label, _finite(score)))
        label, threshold, reached = r.record(_ENTRY_TAIL, "entry")
        if reached not in (0, 1):
            raise WireError(f"reached byte {reached} is not 0 or 1")
        r.end("entry")
        _check_vote_order(votes)
        entry = cls(request, client, request_id, tuple(votes), label, threshold, reached == 1)
        entry.__dict__["encoded"] = bytes(data)  # canonical: every field read strictly
        return entry


def _votes_from_encoding(entry: RequestEntry) -> tuple[EntryVote, ...]:
    """The votes of an entry made with its canonical encoding and without them (the batch
    derivation, ``_core.derive_entries``), read from that encoding on first use."""
    encoded = entry.__dict__.get("encoded")
    if encoded is None:
        raise AttributeError("an entry made without its votes holds its encoding")
    return RequestEntry.decode(encoded).votes


_votes_from_encoding.__name__ = "votes"
# Set after the dataclass is made, so that it is no default of the ``votes`` field: an entry
# made by ``__init__`` or ``of`` holds its votes in its ``__dict__``, which comes first.
RequestEntry.votes = cached_property(_votes_from_encoding)  # type: ignore[assignment]


def _check_vote_order(votes: Sequence[EntryVote]) -> None:
    nodes = [v.node for v in votes]
    if nodes != sorted(set(nodes)):
        raise WireError(f"entry votes not in increasing node order {nodes}")


@dataclass(frozen=True)
class UpdateEntry:
    """The leaf of one ordered model update: ``01 | 22 | MODEL-UPDATE encoding``."""

    update: ModelUpdate

    @cached_property
    def encoded(self) -> bytes:
        return bytes([VERSION, Kind.UPDATE_ENTRY]) + self.update.encoded


def _write_proof(w: Writer, proof: Sequence[bytes]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise WireError(f"{len(proof)} proof hashes")
    w.u8(len(proof))
    w.fixed_many(proof, DIGEST_BYTES, "proof hash")


def _read_proof(r: Reader) -> tuple[bytes, ...]:
    count = r.count("proof count", MAX_PROOF_HASHES, width=1)
    hashes = r.fixed(count * DIGEST_BYTES, "proof hashes")
    return tuple(hashes[i:i + DIGEST_BYTES] for i in range(0, len(hashes), DIGEST_BYTES))


def _write_commit_signatures(w: Writer, signatures: Sequence[tuple[int, bytes]]) -> None:
    w.u16(len(signatures))
    for node, signature in signatures:
        w.record(_COMMIT_SIGNATURE, "commit signature", node,
                 _sized(signature, SIGNATURE_BYTES, "commit signature"))


_COMMIT_SIGNATURE = struct.Struct(">H64s")


def _commit_signatures_bytes(signatures: Sequence[tuple[int, bytes]]) -> bytes:
    w = Writer()
    _write_commit_signatures(w, signatures)
    return w.getvalue()


def _read_commit_signatures(r: Reader) -> tuple[tuple[int, bytes], ...]:
    return tuple((_node(r), r.fixed(SIGNATURE_BYTES, "commit signature"))
                 for _ in range(r.count("signature count", MAX_NODES, width=2)))


@dataclass(frozen=True)
class Certificate:
    """An inference certificate: the entry, its inclusion proof and 2f+1 COMMIT signatures.

    ``01 | 30 | group id | view u64 | seq u64 | tree size u32 | leaf index u32 | root |
    entry (u32 length + bytes) | proof count u8 | hashes (32 each) | signature count u16 |
    (node u16 | signature 64)*``.
    """

    group_id: bytes
    view: int
    seq: int
    tree_size: int
    leaf_index: int
    root: bytes
    entry: RequestEntry
    proof: tuple[bytes, ...]
    signatures: tuple[tuple[int, bytes], ...]

    @cached_property
    def encoded(self) -> bytes:
        return self._encode(_commit_signatures_bytes(self.signatures))

    @staticmethod
    def encode_all(certificates: Sequence[Certificate]) -> None:
        """Encodes every certificate (as :attr:`encoded` would); the certificates of one
        batch share their commit signatures, which are encoded once for all of them."""
        tails: dict[tuple[tuple[int, bytes], ...], bytes] = {}
        for cert in certificates:
            if "encoded" not in cert.__dict__:
                tail = tails.get(cert.signatures)
                if tail is None:
                    tail = tails[cert.signatures] = _commit_signatures_bytes(cert.signatures)
                cert.__dict__["encoded"] = cert._encode(tail)

    def _encode(self, signatures: bytes) -> bytes:
        w = Writer()
        entry = self.entry.encoded
        w.record(_CERTIFICATE_HEAD, "certificate", VERSION, Kind.CERTIFICATE,
                 _sized(self.group_id, DIGEST_BYTES, "group id"), self.view, self.seq,
                 self.tree_size, self.leaf_index, _sized(self.root, DIGEST_BYTES, "root"),
                 len(entry))
        w.fixed(entry, len(entry), "entry")
        _write_proof(w, self.proof)
        w.fixed(signatures, len(signatures), "commit signatures")
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> Certificate:
        group_id = read_header(r, Kind.CERTIFICATE)
        view, seq, size, index = r.u64("view"), r.u64("seq"), r.u32("size"), r.u32("index")
        root = r.fixed(DIGEST_BYTES, "root")
        entry = RequestEntry.decode(r.blob("entry"))
        proof = _read_proof(r)
        signatures = _read_commit_signatures(r)
        return cls(group_id, view, seq, size, index, root, entry, proof, signatures)

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        if len(data) > MAX_MESSAGE_BYTES:
            raise WireError(f"certificate is {len(data)} bytes")
        r = Reader(data)
        out = cls.read(r)
        r.end("certificate")
        return out

    def statement(self, node: int) -> Statement:
        """The COMMIT statement ``node`` signed for this certificate."""
        return Statement(
            Kind.COMMIT, self.group_id, node, self.view, self.seq, self.tree_size, self.root
        )


_CERTIFICATE_HEAD = struct.Struct(">BB32sQQII32sI")
"""A certificate up to its entry's bytes: version, kind, group id, view, seq, tree size,
leaf index, root, entry length."""

MAX_REPLY_ITEMS = MAX_BATCH_ENTRIES
"""Certificates in one REPLY: at most the entries of one batch."""
REPLY_SIGNING_CONTEXT = b"dropbear reply\x00"
"""What a node's REPLY signature signs before the body's SHA-256 (docs/certificates.md)."""
_REPLY_PEEK = struct.Struct(">BB32sHQQI32sH")
_REPLY_ITEM_HEAD = struct.Struct(">II")
"""A REPLY item up to its entry's bytes: leaf index, entry length."""
_REQUEST_ID_LISTS: dict[int, struct.Struct] = {}


def _request_ids(count: int) -> struct.Struct:
    """``count`` request ids (u64) back to back; cached by count."""
    ids = _REQUEST_ID_LISTS.get(count)
    if ids is None:
        ids = _REQUEST_ID_LISTS[count] = struct.Struct(f">{count}Q")
    return ids


class ReplyItem(NamedTuple):
    """One certificate of a REPLY, less what every certificate of the batch shares."""

    leaf_index: int
    entry: RequestEntry
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class Reply(Message):
    """REPLY: a node's signed delivery, to one client, of that client's certificates from one
    committed batch. The root, the tree size and the 2f+1 commit signatures are the same for
    every certificate of a batch, so they travel once; the request ids come first, so that a
    client can skip a reply that holds nothing it still waits for (:meth:`peek`):

    ``01 | 0c | group id | node u16 | view u64 | seq u64 | tree size u32 | root |
    item count u16 | request id u64 * count | signature count u16 |
    (node u16 | signature 64)* | (leaf index u32 | entry (u32 length + bytes) |
    proof count u8 | hashes)* count | signature``.

    The node's signature is over ``REPLY_SIGNING_CONTEXT || SHA-256(body)`` (:attr:`digest`),
    not the body: a REPLY carries a batch's worth of certificates for one client (tens of KB
    at saturation), and Ed25519 hashes what it signs twice with SHA-512, where SHA-256 once
    costs a sixth. The context keeps those signed bytes apart from any other message's.
    """

    KIND = Kind.REPLY
    group_id: bytes
    node: int
    view: int
    seq: int
    tree_size: int
    root: bytes
    signatures: tuple[tuple[int, bytes], ...]
    items: tuple[ReplyItem, ...]
    signature: bytes = b""

    @classmethod
    def of(cls, node: int, certificates: Sequence[Certificate]) -> Reply:
        """The (unsigned) REPLY carrying ``certificates``, all of one committed batch."""
        if not 0 < len(certificates) <= MAX_REPLY_ITEMS:
            raise WireError(f"{len(certificates)} certificates in one reply")
        first = certificates[0]
        shared = (first.group_id, first.view, first.seq, first.tree_size, first.root,
                  first.signatures)
        for cert in certificates[1:]:
            if (cert.group_id, cert.view, cert.seq, cert.tree_size, cert.root,
                    cert.signatures) != shared:
                raise WireError(f"certificate of batch {cert.seq} in a reply for batch "
                                f"{first.seq}")
        return cls(first.group_id, node, first.view, first.seq, first.tree_size, first.root,
                   first.signatures,
                   tuple(ReplyItem(c.leaf_index, c.entry, c.proof) for c in certificates))

    @property
    def certificates(self) -> tuple[Certificate, ...]:
        """The whole certificate of every item."""
        return tuple(
            Certificate(self.group_id, self.view, self.seq, self.tree_size, item.leaf_index,
                        self.root, item.entry, item.proof, self.signatures)
            for item in self.items
        )

    def _signed_bytes(self) -> bytes:
        return REPLY_SIGNING_CONTEXT + self.digest

    @staticmethod
    def peek(frame: bytes) -> tuple[int, tuple[int, ...]] | None:
        """``(node, request ids)`` of an encoded REPLY, read without decoding the rest; None
        if the frame is not a REPLY that long. Unverified: only for skipping a reply that
        holds nothing the reader still waits for."""
        if len(frame) < _REPLY_PEEK.size or frame[1] != Kind.REPLY:
            return None
        fields = _REPLY_PEEK.unpack_from(frame)
        node, count = fields[3], fields[8]
        if len(frame) < _REPLY_PEEK.size + 8 * count:
            return None
        return node, struct.unpack_from(f">{count}Q", frame, _REPLY_PEEK.size)

    def _write_body(self, w: Writer) -> None:
        header(w, Kind.REPLY, self.group_id)
        w.u16(self.node)
        w.u64(self.view)
        w.u64(self.seq)
        w.u32(self.tree_size)
        w.fixed(self.root, DIGEST_BYTES, "root")
        if len(self.items) > MAX_REPLY_ITEMS:
            raise WireError(f"{len(self.items)} certificates in a reply")
        w.u16(len(self.items))
        w.record(_request_ids(len(self.items)), "request ids",
                 *(item.entry.request_id for item in self.items))
        if len(self.signatures) > MAX_NODES:
            raise WireError(f"{len(self.signatures)} commit signatures")
        _write_commit_signatures(w, self.signatures)
        for item in self.items:
            entry = item.entry.encoded
            w.record(_REPLY_ITEM_HEAD, "reply item", item.leaf_index, len(entry))
            w.fixed(entry, len(entry), "entry")
            _write_proof(w, item.proof)

    @classmethod
    def _read_body(cls, r: Reader, group_id: bytes) -> dict[str, Any]:
        node = _node(r)
        view, seq, size = r.u64("view"), r.u64("seq"), r.u32("size")
        root = r.fixed(DIGEST_BYTES, "root")
        count = r.count("item count", MAX_REPLY_ITEMS, width=2)
        ids = r.record(_request_ids(count), "request ids")
        signatures = _read_commit_signatures(r)
        items = []
        for request_id in ids:
            leaf_index, entry_size = r.record(_REPLY_ITEM_HEAD, "reply item")
            if entry_size > MAX_MESSAGE_BYTES:
                raise WireError(f"entry is {entry_size} bytes, limit {MAX_MESSAGE_BYTES}")
            item = ReplyItem(leaf_index, RequestEntry.decode(r.fixed(entry_size, "entry")),
                             _read_proof(r))
            if item.entry.request_id != request_id:
                raise WireError(f"reply lists request {request_id} but carries "
                                f"{item.entry.request_id}")
            items.append(item)
        return dict(group_id=group_id, node=node, view=view, seq=seq, tree_size=size,
                    root=root, signatures=signatures, items=tuple(items))


# --- dispatch ----------------------------------------------------------------------------------

MESSAGE_TYPES: dict[Kind, type[Message]] = {
    Kind.REQUEST: Request,
    Kind.VOTES: Votes,
    Kind.MODEL_UPDATE: ModelUpdate,
    Kind.PRE_PREPARE: PrePrepare,
    Kind.PREPARE: Prepare,
    Kind.COMMIT: Commit,
    Kind.CHECKPOINT: Checkpoint,
    Kind.VIEW_CHANGE: ViewChange,
    Kind.NEW_VIEW: NewView,
    Kind.CATCHUP_REQUEST: CatchupRequest,
    Kind.CATCHUP_RESPONSE: CatchupResponse,
    Kind.REPLY: Reply,
}


def decode(data: bytes) -> Message:
    """Decodes any message from untrusted bytes; raises only :class:`WireError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message is {len(data)} bytes, limit {MAX_MESSAGE_BYTES}")
    if len(data) < 2:
        raise WireError(f"message of {len(data)} bytes is too short")
    if data[0] != VERSION:
        raise WireError(f"unknown version {data[0]}, expected {VERSION}")
    cls = MESSAGE_TYPES.get(data[1])  # Kind is an IntEnum: its byte finds it (no Kind() call)
    if cls is None:
        raise WireError(f"unknown message kind {data[1]:#04x}")
    try:
        if cls is Votes:
            return MEMO.decode(Votes, data)
        return cls.decode(data)
    except WireError:
        raise
    except (ValueError, TypeError, OverflowError, struct.error, RecursionError) as error:
        raise WireError(f"malformed {cls.KIND.name}: {error}") from None


def encode(message: Message) -> bytes:
    """The canonical encoding of ``message``."""
    return message.encoded
