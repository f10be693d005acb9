"""dropbear._core keys and signatures: RFC 8032 vectors, strictness, batch verification."""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from dropbear import _core
from hypothesis import given, settings
from hypothesis import strategies as st

# RFC 8032 §7.1 Ed25519 test vectors: (secret key, public key, message, signature).
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


@pytest.mark.parametrize("secret,public,message,signature", RFC8032_VECTORS)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    key = _core.SigningKey.from_seed(bytes.fromhex(secret))
    assert key.public_key.hex() == public
    assert key.seed().hex() == secret
    assert key.sign(bytes.fromhex(message)).hex() == signature
    assert _core.verify(bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature))
    assert _core.VerifyingKey(bytes.fromhex(public)).verify(
        bytes.fromhex(message), bytes.fromhex(signature)
    )
    assert not _core.verify(bytes.fromhex(public), b"other" + bytes.fromhex(message),
                            bytes.fromhex(signature))


def test_generated_keys_are_fresh_and_agree_with_pynacl() -> None:
    a, b = _core.SigningKey.generate(), _core.SigningKey.generate()
    assert a.public_key != b.public_key
    signature = a.sign(b"hello")
    nacl.signing.VerifyKey(a.public_key).verify(b"hello", signature)


def test_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="seed must be 32 bytes, got 31"):
        _core.SigningKey.from_seed(bytes(31))
    with pytest.raises(ValueError, match="public key must be 32 bytes, got 33"):
        _core.VerifyingKey(bytes(33))
    key = _core.SigningKey.generate()
    with pytest.raises(ValueError, match="signature must be 64 bytes, got 63"):
        _core.verify(key.public_key, b"m", bytes(63))


# Small-order points (the identity, a point of order 2 and one of order 4): weak keys.
WEAK_KEYS = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
]


@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_weak_public_keys_are_refused(weak: str) -> None:
    with pytest.raises(ValueError, match="weak"):
        _core.VerifyingKey(bytes.fromhex(weak))


def test_strict_verify_refuses_forgery_by_weak_key() -> None:
    # With the identity as public key and R = identity, S = 0 "verifies" non-strictly.
    identity = bytes.fromhex(WEAK_KEYS[0])
    forged = identity + bytes(32)
    assert _core.batch_verify([(b"anything", forged, identity)]) == [0]


KEYS = [_core.SigningKey.from_seed(bytes([i]) * 32) for i in range(8)]
KINDS = ["good", "flipped", "wrong_message", "wrong_key", "short", "weak_key"]


def make_item(kind: str, i: int) -> tuple[bytes, bytes, bytes]:
    key = KEYS[i % len(KEYS)]
    message = f"message {i}".encode()
    signature = key.sign(message)
    if kind == "flipped":
        pos = (i * 7) % 64
        signature = signature[:pos] + bytes([signature[pos] ^ 0x10]) + signature[pos + 1 :]
    elif kind == "wrong_message":
        message += b"!"
    elif kind == "wrong_key":
        return message, signature, KEYS[(i + 1) % len(KEYS)].public_key
    elif kind == "short":
        signature = signature[:40]
    elif kind == "weak_key":
        return message, signature, bytes.fromhex(WEAK_KEYS[0])
    return message, signature, key.public_key


def verify_one(item: tuple[bytes, bytes, bytes]) -> bool:
    message, signature, public_key = item
    try:
        return _core.verify(public_key, message, signature)
    except ValueError:
        return False


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(KINDS), max_size=300))
def test_batch_verify_agrees_with_one_by_one(kinds: list[str]) -> None:
    items = [make_item(kind, i) for i, kind in enumerate(kinds)]
    expected = [i for i, item in enumerate(items) if not verify_one(item)]
    assert _core.batch_verify(items) == expected
    # The good ones are exactly the "good" kind (a flipped bit never slips through).
    assert expected == [i for i, k in enumerate(kinds) if k != "good"]


def test_batch_verify_names_one_forgery_among_many() -> None:
    items = [make_item("good", i) for i in range(1000)]
    items[617] = make_item("flipped", 617)
    assert _core.batch_verify(items) == [617]


def test_verdicts_hold_while_the_key_cache_fills_and_empties() -> None:
    """More keys than the cache holds, each checked before and after it was emptied: a kept
    key gives the same verdicts as a fresh one, and a refused key is refused every time."""
    keys = [_core.SigningKey.from_seed(i.to_bytes(32, "little"))
            for i in range(_core.KEY_CACHE_ENTRIES + 8)]
    signed = [(k.public_key, k.sign(b"m"), k) for k in keys]
    weak = bytes.fromhex("01" + "00" * 31)
    for _ in range(2):
        for public, signature, _key in signed:
            assert _core.verify(public, b"m", signature)
            assert not _core.verify(public, b"n", signature)
        with pytest.raises(ValueError, match="weak"):
            _core.verify(weak, b"m", signed[0][1])
    assert _core.batch_verify([(b"m", s, p) for p, s, _ in signed[:64]]) == []


# --- client REQUEST signatures: ZIP-215 (_core.verify_requests) ------------------------------

# Canonical encodings of the eight points of small order.
SMALL_ORDER_POINTS = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493


def signer_only_signature(seed: bytes, message: bytes, r: bytes) -> bytes:
    """What only the key's holder can make: R of small order and S = H(R, A, M) a, so
    S B - H A = 0 and R differs from it by a point of small order. RFC 8032's strict rule
    refuses it; ZIP-215's cofactored one accepts it."""
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    public = _core.SigningKey.from_seed(seed).public_key
    k = int.from_bytes(hashlib.sha512(r + public + message).digest(), "little") % GROUP_ORDER
    return r + (k * a % GROUP_ORDER).to_bytes(32, "little")


def make_request_item(kind: str, i: int) -> tuple[bytes, bytes, bytes]:
    if kind != "small_order_r":
        return make_item(kind, i)
    seed = bytes([i % len(KEYS)]) * 32
    message = f"message {i}".encode()
    r = bytes.fromhex(SMALL_ORDER_POINTS[i % len(SMALL_ORDER_POINTS)])
    return message, signer_only_signature(seed, message, r), KEYS[i % len(KEYS)].public_key


@pytest.mark.parametrize("r", SMALL_ORDER_POINTS)
def test_requests_follow_zip215_where_node_signatures_are_strict(r: str) -> None:
    item = make_request_item("small_order_r", SMALL_ORDER_POINTS.index(r))
    assert _core.verify_requests([item]) == []
    assert not verify_one(item)
    assert _core.batch_verify([item]) == [0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([*KINDS, "small_order_r"]), max_size=300))
def test_verify_requests_gives_each_item_its_verdict_alone(kinds: list[str]) -> None:
    items = [make_request_item(kind, i) for i, kind in enumerate(kinds)]
    bad = _core.verify_requests(items)
    assert bad == [i for i, item in enumerate(items) if _core.verify_requests([item])]
    assert bad == [i for i, k in enumerate(kinds) if k not in ("good", "small_order_r")]


def test_verify_requests_names_one_forgery_among_many() -> None:
    items = [make_item("good", i) for i in range(1000)]
    items[433] = make_item("flipped", 433)
    assert _core.verify_requests(items) == [433]
    assert _core.verify_requests([]) == []


def test_a_request_verifies_by_the_client_rule() -> None:
    """Request.verify is what nodes apply to client signatures, so tools agree with them."""
    import dataclasses

    from dropbear.wire import Request

    seed = bytes([5]) * 32
    key = _core.SigningKey.from_seed(seed)
    request = Request.create(key, bytes(32), 7, "uint8", (4,), b"\x01\x02\x03\x04")
    assert request.verify(key.public_key) and not request.verify(KEYS[1].public_key)
    forged = signer_only_signature(seed, request.body, bytes.fromhex(SMALL_ORDER_POINTS[5]))
    request = Request(dataclasses.replace(request.header, signature=forged), request.data)
    assert request.verify(key.public_key) and request.header.verify(key.public_key)
    assert not _core.verify(key.public_key, request.body, request.signature)
    assert not request.verify(bytes(31))
