"""A model group of real node processes over loopback (issue 5, section 6).

Four ``python -m dropbear node`` processes under :class:`dropbear.launcher.GroupProcesses`,
spoken to by the real :class:`dropbear.client.Client` (and, for the abuse tests, by raw
sockets). One group is shared by the tests that leave it serving (digits requests, abuse,
forged signatures, a model update); killing the primary and the CLI get groups of their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from dropbear import _core, control
from dropbear.certificate import CertificateError, verify
from dropbear.client import Client, Result
from dropbear.deploy import MANIFEST_FILE, init_group
from dropbear.inference import LoadedModel, ModelRepository
from dropbear.inference.train import load_digits_split
from dropbear.limits import NET_HANDSHAKE_TIMEOUT_S, NET_MAX_FRAME_BYTES
from dropbear.manifest import Manifest
from dropbear.net import FramedStream, LocalIdentity, Role, handshake
from dropbear.node import split_address
from dropbear.wire import (
    Certificate,
    ModelUpdate,
    Request,
    RequestHeader,
    Vote,
    Votes,
    Writer,
)
from group_fixtures import RawClient, RunningGroup, log_tails

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
UPDATED_NODE = 1
"""The node whose owner pushes a model update (a digits-mlp node: quick to perturb)."""

pytestmark = pytest.mark.skipif(not (MODELS / "digits-mlp").is_dir(),
                                reason="the trained digit models are not in models/")


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.fixture(scope="module")
def models_copy(tmp_path_factory) -> Path:
    """A copy of the model repository that the update test may add a version to."""
    target = tmp_path_factory.mktemp("repository") / "models"
    shutil.copytree(MODELS, target)
    return target


@pytest.fixture(scope="module")
def group(tmp_path_factory, models_copy):
    """Four node processes shared by the tests that leave the group serving."""
    group_dir = tmp_path_factory.mktemp("group")
    init_group(group_dir, base_port=0, models_dir=models_copy)
    running = RunningGroup(group_dir, models_dir=models_copy).start()
    yield running
    codes = running.stop()
    assert codes == {i: [0] for i in range(4)}, (
        f"nodes did not stop cleanly on SIGTERM: {codes}\n{log_tails(group_dir)}")


# --- helpers ---------------------------------------------------------------------------------


async def infer_many(client: Client, xs: np.ndarray, concurrency: int = 8,
                     on_start=None, on_result=None) -> list[Result]:
    """Certified results of every input, in input order, ``concurrency`` at a time."""
    results: list[Result | None] = [None] * len(xs)
    limiter = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            if on_start is not None:
                on_start(i)
            results[i] = await client.infer(xs[i])
            if on_result is not None:
                on_result(i, results[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(xs)):
            nursery.start_soon(one, i)
    return results  # type: ignore[return-value]


def check_certificates(results: list[Result], manifest: Manifest, client_key: bytes) -> None:
    """Every certificate verifies with the manifest alone, from its bytes, and is ours."""
    request_ids = set()
    for result in results:
        cert = Certificate.decode(result.certificate.encoded)  # what a third party receives
        verify(cert, manifest)
        assert cert.entry.client == client_key
        assert len(cert.entry.votes) >= manifest.quorum
        assert result.label == cert.entry.label
        request_ids.add(cert.entry.request_id)
    assert len(request_ids) == len(results), "two results carry the same request"


async def wait_status(client: Client, node: int, condition, timeout: float = 20.0) -> dict:
    """Polls node's status until ``condition(status)``; the last status on timeout (failing)."""
    status: dict = {}
    with trio.move_on_after(timeout):
        while True:
            status = await client.status(node)
            if condition(status):
                return status
            await trio.sleep(0.1)
    raise AssertionError(f"node {node} never reached the expected state: {status}")


# --- 1. four node processes answer digits requests -------------------------------------------


async def test_four_node_processes_certify_digits_requests(group, digits) -> None:
    count = 200
    # The verifier's own copy of the manifest, read from disk: all it needs.
    manifest = Manifest.load(group.group_dir / MANIFEST_FILE)
    async with Client.connect(group.manifest, group.client_key) as client:
        before = [await client.status(i) for i in range(4)]
        start = time.monotonic()
        results = await infer_many(client, digits.x_test[:count], concurrency=16)
        elapsed = time.monotonic() - start
        check_certificates(results, manifest, group.client_key.public_key)
        top = max(r.certificate.seq for r in results)
        after = [await wait_status(client, i, lambda s: s["executed_seq"] >= top)
                 for i in range(4)]

    labels = np.array([r.label for r in results])
    truth = digits.y_test[:count]
    accuracy = float(np.mean(labels == truth))
    assert accuracy >= 0.95, f"certified accuracy {accuracy:.3f}"
    assert np.mean([r.reached for r in results]) >= 0.9
    for node in range(4):
        # Every process ran its own model on the requests, voted with the manifest's version
        # and executed every ordered batch.
        # (a slow node skips requests already certified when they reach it: it answers those
        # with the certificate instead; the primary waits only VOTE_WAIT for its vote)
        inferred = after[node]["inference"]["inputs"] - before[node]["inference"]["inputs"]
        assert inferred >= 0.5 * count, f"node {node} ran its model on {inferred} inputs"
        assert after[node]["model"] == manifest.nodes[node].model
        votes = [(v, truth[i]) for i, r in enumerate(results)
                 for v in r.certificate.entry.votes if v.node == node]
        assert len(votes) >= count // 2, f"node {node} voted in {len(votes)} certificates"
        assert {v.model_version for v, _ in votes} <= group.versions[node]
        own = np.mean([v.label == y for v, y in votes])
        assert own >= 0.9, f"node {node}'s own accuracy {own:.3f}"
    assert elapsed < 60, f"{count} requests took {elapsed:.1f}s"


async def test_a_status_tool_beside_a_client_does_not_steal_its_certificates(group,
                                                                              digits) -> None:
    """`dropbear status` / `update` connect with the group's client key while a script
    streams requests under that key: the nodes answer every connection of the key, so the
    script's certificates do not all go to the newest connection (the tool's) -- where,
    re-sends or not, they never reach the script while the tool stays connected."""
    async with Client.connect(group.manifest, group.client_key) as script:
        await infer_many(script, digits.x_test[30:32])
        async with Client.connect(group.manifest, group.client_key) as tool:
            for node in range(4):
                await tool.status(node)  # the tool is connected to every node
            with trio.fail_after(20):
                results = await infer_many(script, digits.x_test[32:48], concurrency=4)
            for node in range(4):
                await tool.status(node)
    check_certificates(results, group.manifest, group.client_key.public_key)


# --- 4. malformed, oversized and garbage frames ----------------------------------------------


async def closed_by_node(stream: trio.SocketStream, timeout: float) -> bool:
    """Reads (and drops) until the node closes the connection; False after ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, OSError):
            pass
        return True
    return False


def hello_frame(group_id: bytes, key: _core.SigningKey) -> bytes:
    from dropbear.net import _hello

    hello = _hello(group_id, LocalIdentity(key, Role.CLIENT), os.urandom(32))
    return struct.pack(">I", len(hello)) + hello


async def authenticated(address: tuple[str, int], manifest: Manifest,
                        me: LocalIdentity) -> tuple[trio.SocketStream, FramedStream]:
    stream = await trio.open_tcp_stream(*address)
    framed = FramedStream(stream)
    peer = await handshake(framed, manifest.group_id, me, lambda p: p.role is Role.NODE)
    assert peer.role is Role.NODE
    return stream, framed


async def next_control(framed: FramedStream, timeout: float = 5.0,
                       kind: control.Control | None = None) -> tuple[control.Control, dict]:
    """The node's next control frame (of ``kind``) on this connection."""
    with trio.fail_after(timeout):
        while True:
            frame = await framed.receive()
            if control.is_control(frame):
                got, body = control.decode(frame)
                if kind is None or got is kind:
                    return got, body


def oversized_request(key: _core.SigningKey, group_id: bytes) -> bytes:
    """A well-signed REQUEST whose input (8 MiB) is over MAX_REQUEST_BYTES, frame under the
    transport's limit: the wire decoder must refuse it, not the socket."""
    data = bytes(8 << 20)
    head = RequestHeader(group_id, key.public_key, 1, "float32", (2048, 1024),
                         _core.sha256(data)).signed(key)
    w = Writer()
    w.blob(data)
    return head.encoded + w.getvalue()


async def test_garbage_malformed_and_oversized_frames_are_refused(group, digits) -> None:
    manifest = group.manifest
    target = 0  # the primary: the node whose failure would hurt most
    address = split_address(manifest.nodes[target].address)
    key = _core.SigningKey.generate()
    gid = manifest.group_id
    async with Client.connect(manifest, group.client_key) as client:
        before = await client.status(target)

        # Before the handshake: each connection is closed, promptly.
        slow = await trio.open_tcp_stream(*address)
        await slow.send_all(struct.pack(">I", 100) + b"0123456789")  # and never the rest
        other_group = hello_frame(bytes(32), key)
        bad_proof = hello_frame(gid, key) + struct.pack(">I", 64) + os.urandom(64)
        for name, raw in [
            ("HTTP request", b"GET / HTTP/1.1\r\nHost: dropbear\r\n\r\n"),
            ("oversized length", struct.pack(">I", NET_MAX_FRAME_BYTES + 1) + b"x" * 100),
            ("random HELLO", struct.pack(">I", 109) + os.urandom(109)),
            ("short HELLO", struct.pack(">I", 5) + b"hello"),
            ("HELLO of another group", other_group),
            ("HELLO with a forged proof", bad_proof),
        ]:
            stream = await trio.open_tcp_stream(*address)
            await stream.send_all(raw)
            assert await closed_by_node(stream, 3.0), f"{name}: the node kept the connection"
            await stream.aclose()

        # After a client handshake: each bad frame is answered (REJECT or a failed ACK) and
        # the connection stays open for the next one.
        stream, framed = await authenticated(address, manifest, LocalIdentity(key, Role.CLIENT))
        good = Request.create(key, gid, 7, "float32", (8, 8, 1), digits.x_test[0].tobytes())
        votes = Votes(gid, target, bytes(32), (Vote(bytes(32), 1, 0.5),)).signed(key)
        rejected = [
            # (first byte 0xEE: neither the wire version nor the control marker 0xC0, which
            # a random first byte would be once in 256 runs: those have cases of their own)
            ("random bytes", b"\xee" + os.urandom(299)),
            ("wire version byte and junk", b"\x01" + os.urandom(300)),
            ("truncated REQUEST", good.encoded[:-9]),
            ("REQUEST with trailing bytes", good.encoded + b"\x00"),
            ("oversized REQUEST input", oversized_request(key, gid)),
            ("wrong input shape", Request.create(key, gid, 8, "float32", (28, 28, 1),
                                                 bytes(28 * 28 * 4)).encoded),
            ("another group", Request.create(key, bytes(32), 9, "float32", (8, 8, 1),
                                             bytes(256)).encoded),
            ("VOTES from a client", votes.encoded),
            ("NaN in the input", Request.create(
                key, gid, 10, "float32", (8, 8, 1),
                np.where(np.arange(64) % 9 == 0, np.nan, 1.0).astype("<f4").tobytes()).encoded),
        ]
        reasons = {"wrong input shape": "input shape [28, 28, 1] is not the model's [8, 8, 1]",
                   "NaN in the input": "input holds 8 NaN or inf values"}
        for name, frame in rejected:
            await framed.send(frame)
            kind, body = await next_control(framed)
            assert kind is control.Control.REJECT, f"{name}: answered {kind.name} {body}"
            assert body["node"] == target and body["reason"], f"{name}: {body}"
            assert reasons.get(name, "") in body["reason"], f"{name}: {body}"
        acked = [
            ("unknown control kind", bytes([control.MAGIC, 0xEE]) + b"{}"),
            ("control body not JSON", bytes([control.MAGIC, control.Control.STATUS_QUERY])
             + b"\xff{not json"),
            ("control body too large", bytes([control.MAGIC, control.Control.STATUS_QUERY])
             + b'"' + b"a" * (control.MAX_CONTROL_BYTES + 10) + b'"'),
            ("UPDATE with junk", control.encode(control.Control.UPDATE, {"update": "zz"})),
            ("UPDATE that is not a MODEL-UPDATE", control.encode(control.Control.UPDATE, {
                "update": votes.encoded.hex()})),
            ("UPDATE not signed by the owner", control.encode(control.Control.UPDATE, {
                "update": ModelUpdate(gid, target, bytes(32), 1).signed(key).encoded.hex()})),
            ("FAULT without --fault-injection",
             control.encode(control.Control.FAULT, {"mode": "flip-labels"})),
        ]
        for name, frame in acked:
            await framed.send(frame)
            kind, body = await next_control(framed)
            assert kind is control.Control.ACK and body["ok"] is False, f"{name}: {kind} {body}"
        await framed.send(b"")  # a heartbeat is fine
        await framed.send(control.encode(control.Control.STATUS_QUERY, {}))
        kind, status = await next_control(framed)
        assert kind is control.Control.STATUS and status["fault"] == "none"
        # Announcing a frame over the limit ends the connection.
        await stream.send_all(struct.pack(">I", NET_MAX_FRAME_BYTES + 1))
        assert await closed_by_node(stream, 3.0), "oversized frame: the node kept the connection"
        await stream.aclose()

        # From an authenticated peer node (a Byzantine node 3 on a second connection):
        # garbage and mutilated protocol messages are dropped, the connection is kept.
        from dropbear.deploy import key_path, read_key

        node3 = LocalIdentity(read_key(key_path(group.group_dir, "node", 3)), Role.NODE, 3)
        stream, framed = await authenticated(address, manifest, node3)
        rng = np.random.default_rng(5)
        for frame in [os.urandom(500), b"\x01" + os.urandom(64), votes.encoded,
                      good.encoded[:-1], control.encode(control.Control.UPDATE, {})]:
            await framed.send(frame)
        for _ in range(200):  # bit-flipped VOTES and REQUESTs
            frame = bytearray(votes.encoded if rng.random() < 0.5 else good.encoded)
            frame[rng.integers(len(frame))] ^= 1 << int(rng.integers(8))
            await framed.send(bytes(frame))
        await framed.send(control.encode(control.Control.STATUS_QUERY, {}))
        await next_control(framed, kind=control.Control.STATUS)  # the connection was kept
        await stream.aclose()

        # The slow sender was cut off by the handshake deadline while all this was served.
        assert await closed_by_node(slow, NET_HANDSHAKE_TIMEOUT_S + 3), "slow HELLO kept open"
        await slow.aclose()

        # The node keeps serving: it answers, counted the refusals, and still takes part.
        assert group.running() == [0, 1, 2, 3], log_tails(group.group_dir)
        results = await infer_many(client, digits.x_test[10:18])
        check_certificates(results, manifest, group.client_key.public_key)
        top = max(r.certificate.seq for r in results)
        after = await wait_status(client, target, lambda s: s["executed_seq"] >= top)
        assert after["rejected"] - before["rejected"] == len(rejected)
        assert after["view_active"], after
        assert after["peers_connected"] == [1, 2, 3]


# --- 5. forged client signatures -------------------------------------------------------------


def flipped(request: Request) -> bytes:
    """``request`` with one bit of its signature flipped."""
    signature = bytearray(request.signature)
    signature[17] ^= 0x40
    return Request(dataclasses.replace(request.header, signature=bytes(signature)),
                   request.data).encoded


async def test_forged_client_signatures_are_refused(group, digits) -> None:
    manifest = group.manifest
    gid = manifest.group_id
    honest_key, other_key = _core.SigningKey.generate(), _core.SigningKey.generate()
    x = digits.x_test[20].tobytes()
    base = time.time_ns() // 1000
    honest = Request.create(honest_key, gid, base, "float32", (8, 8, 1), x)
    # Signed by another key than the one it names (and the connection's).
    head = RequestHeader(gid, honest_key.public_key, base + 1, "float32", (8, 8, 1),
                         _core.sha256(x))
    wrong_signer = Request(head.signed(other_key), x)
    # A good signature, but input bytes that are not the signed ones.
    swapped = Request(Request.create(honest_key, gid, base + 2, "float32", (8, 8, 1),
                                     x).header, digits.x_test[21].tobytes())
    # Another client's well-signed request, sent over our connection.
    stolen = Request.create(other_key, gid, base + 3, "float32", (8, 8, 1), x)

    raw = RawClient(manifest, honest_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(raw.run)
        raw.send_all(flipped(honest))  # same id and input as the honest request that follows
        raw.send_all(wrong_signer.encoded)
        raw.send_all(swapped.encoded)
        raw.send_all(stolen.encoded)
        assert await raw.wait_for(lambda: len(raw.rejects()) >= 16, 10), raw.rejects()
        await trio.sleep(1.0)
        raw.send_all(honest.encoded)
        assert await raw.wait_for(lambda: raw.replies(base), 15), (
            "the honest request after a forgery of it got no certificate")
        await trio.sleep(1.5)  # time for any wrongly accepted forgery to be certified
        forgeries = list(raw.rejects())
        # A replay of the certified id with other input: refused, with the reason.
        replay = Request.create(honest_key, gid, base, "float32", (8, 8, 1),
                                digits.x_test[23].tobytes())
        raw.send_all(replay.encoded)
        assert await raw.wait_for(lambda: len(raw.rejects()) >= len(forgeries) + 4, 10)
        replays = raw.rejects()[len(forgeries):]
        assert sorted(node for node, _, _ in replays) == [0, 1, 2, 3]
        assert all(rid == base and "ordered already" in reason for _, rid, reason in replays)
        nursery.cancel_scope.cancel()

    certified = raw.replies()
    assert {c.entry.request_id for r in certified for c in r.certificates} == {base}
    for reply in certified:
        assert reply.verify(manifest.node_key(reply.node))
        for cert in reply.certificates:
            verify(cert, manifest)
            assert cert.entry.request == honest.digest
    # Every node refuses each forgery once, saying what was wrong with it.
    assert sorted((node, rid) for node, rid, _ in forgeries) == [
        (node, base + i) for node in range(4) for i in range(4)]
    expected = {
        base: "the client signature does not verify",
        base + 1: "the client signature does not verify",
        base + 2: "the input bytes do not match the signed input digest",
        base + 3: "another client key",
    }
    for node, rid, reason in forgeries:
        assert expected[rid] in reason, (node, rid, reason)

    # Nothing of the forgeries waits anywhere, and honest traffic flows.
    async with Client.connect(manifest, group.client_key) as client:
        results = await infer_many(client, digits.x_test[22:26])
        check_certificates(results, manifest, group.client_key.public_key)
        for node in range(4):
            await wait_status(client, node, lambda s: s["queues"]["pending_requests"] == 0)


# --- 3. a model update under load ------------------------------------------------------------


def perturbed_version(models_dir: Path, name: str, version: bytes) -> str:
    """Stores a second version of ``name`` (weights scaled by 1.01) beside ``version``."""
    repository = ModelRepository(models_dir)
    old = repository.load(name, version.hex())
    parameters = {k: (v * np.float32(1.01)).astype(np.float32) for k, v in old.parameters.items()}
    new = LoadedModel.from_parameters(old.config, parameters)
    assert new.version != old.version
    return str(repository.save(new, make_current=False))


async def test_model_update_under_load(group, digits, models_copy) -> None:
    manifest = group.manifest
    k = UPDATED_NODE
    name = manifest.nodes[k].model
    old = manifest.nodes[k].model_version
    new_hex = await trio.to_thread.run_sync(perturbed_version, models_copy, name, old)
    new = bytes.fromhex(new_hex)
    group.versions[k].add(new)

    done: list[tuple[float, float, Result]] = []  # (sent, certified, result)
    switched_at: list[float] = []
    update_window: list[float] = []

    async with Client.connect(manifest, group.client_key) as client:

        async def stream(stop: trio.Event) -> None:
            limiter = trio.Semaphore(6)
            i = 0
            async with trio.open_nursery() as nursery:
                while not stop.is_set():
                    await limiter.acquire()

                    async def one(i: int = i) -> None:
                        try:
                            sent = trio.current_time()
                            result = await client.infer(digits.x_test[i % len(digits.x_test)])
                            done.append((sent, trio.current_time(), result))
                        finally:
                            limiter.release()

                    nursery.start_soon(one)
                    i += 1

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, stop)
            while len(done) < 30:
                await trio.sleep(0.05)
            update_window.append(trio.current_time())
            command = [sys.executable, "-m", "dropbear", "update", "--dir", str(group.group_dir),
                       "--node", str(k), "--model", str(models_copy / name / new_hex)]
            out = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                         check=False, cwd=REPO)
            update_window.append(trio.current_time())
            assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
            assert out.stdout.decode().startswith("ok: "), out.stdout.decode()
            status = await wait_status(client, k, lambda s: s["model_version"] == new_hex)
            switched_at.append(trio.current_time())
            while sum(1 for sent, _, _ in done if sent > switched_at[0]) < 30:
                await trio.sleep(0.05)
            stop.set()

    check_certificates([r for _, _, r in done], manifest, group.client_key.public_key)
    assert status["model"] == name
    during = [t for _, t, _ in done if update_window[0] <= t <= update_window[1]]
    assert during, "no request was certified while the update was being submitted"

    votes = [(r.certificate, v) for _, _, r in done for v in r.certificate.entry.votes
             if v.node == k]
    versions = {v.model_version for _, v in votes}
    assert versions == {old, new}, f"node {k} voted with {[x.hex()[:12] for x in versions]}"
    # The update's place in the order splits node k's votes: every old vote is in a batch
    # before every new one (an update takes effect after the entries of its own batch).
    last_old = max(c.seq for c, v in votes if v.model_version == old)
    first_new = min(c.seq for c, v in votes if v.model_version == new)
    assert last_old < first_new, (last_old, first_new)
    # Requests sent once node k served the new version carry only new votes of node k.
    after = [r for sent, _, r in done if sent > switched_at[0]]
    after_votes = [v for r in after for v in r.certificate.entry.votes if v.node == k]
    assert len(after_votes) >= len(after) // 2, "node k stopped voting after its update"
    assert {v.model_version for v in after_votes} == {new}
    assert np.mean([r.reached for r in after]) >= 0.8


# --- 2. kill -9 of the primary -----------------------------------------------------------------


@pytest.fixture
def own_group(tmp_path):
    """A group of its own, for tests that break it."""
    init_group(tmp_path / "group", base_port=0, models_dir=MODELS)
    running = RunningGroup(tmp_path / "group", models_dir=MODELS).start()
    yield running
    codes = running.stop()
    assert running.running() == []
    assert all(codes[i] == [0] for i in (1, 2, 3)), codes


async def test_kill_primary_mid_stream_view_change(own_group, digits) -> None:
    group = own_group
    manifest = group.manifest
    count, kill_after = 150, 30
    killed = trio.Event()
    order: list[int] = []  # indices in the order they were certified
    sent_after_kill: list[int] = []

    async with Client.connect(manifest, group.client_key) as client:
        assert (await client.status(0))["primary"] == 0

        def on_start(i: int) -> None:
            if killed.is_set():
                sent_after_kill.append(i)

        def on_result(i: int, _result: Result) -> None:
            order.append(i)

        async def killer() -> None:
            while len(order) < kill_after:
                await trio.sleep(0.01)
            await group.kill(0, signal.SIGKILL)
            killed.set()

        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            results = await infer_many(client, digits.x_test[:count], concurrency=8,
                                       on_start=on_start, on_result=on_result)
        elapsed = time.monotonic() - start
        assert killed.is_set()
        statuses = [await client.status(i) for i in (1, 2, 3)]

    check_certificates(results, manifest, group.client_key.public_key)
    assert group.processes.nodes[0].exit_codes == [-signal.SIGKILL]
    assert group.running() == [1, 2, 3]
    after_kill = [results[i] for i in sent_after_kill]
    assert len(after_kill) >= count - kill_after - 20, len(after_kill)
    assert after_kill and all(r.certificate.view >= 1 for r in after_kill), (
        sorted({r.certificate.view for r in after_kill}))
    assert all(0 not in {v.node for v in r.certificate.entry.votes} for r in after_kill)
    assert all(0 not in {n for n, _ in r.certificate.signatures} for r in after_kill)
    for status in statuses:
        assert status["view"] >= 1 and status["primary"] != 0, status
        assert status["view_active"], status
    accuracy = np.mean([r.label for r in results] == digits.y_test[:count])
    assert accuracy >= 0.95
    assert elapsed < 60, f"{count} requests around a view change took {elapsed:.1f}s"


# --- the CLI, end to end ---------------------------------------------------------------------


def dropbear(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dropbear", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def processes_mentioning(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_up(group_dir: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`dropbear up` on the group in the background, its output in a log file."""
    up_log = tmp_path / "up.log"
    with open(up_log, "w") as log:
        up = subprocess.Popen([sys.executable, "-m", "dropbear", "up", "--dir", str(group_dir),
                               "--models-dir", str(MODELS), "--interval", "0"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return up, up_log


def wait_serving(up: subprocess.Popen, up_log: Path, group_dir: Path) -> list[int]:
    """Waits until `up` says every node serves; returns the node processes' pids."""
    deadline = time.monotonic() + 150
    while "every node is serving" not in up_log.read_text():
        assert up.poll() is None, up_log.read_text() + log_tails(group_dir)
        assert time.monotonic() < deadline, up_log.read_text() + log_tails(group_dir)
        time.sleep(0.2)
    nodes = children(up.pid)
    assert len(nodes) == 4, nodes
    return nodes


def test_cli_end_to_end(tmp_path, digits) -> None:
    from PIL import Image

    group_dir = tmp_path / "group"
    out = dropbear("init", "--dir", str(group_dir), "--base-port", "0",
                   "--models-dir", str(MODELS))
    assert out.returncode == 0, out.stderr
    manifest = Manifest.load(group_dir / MANIFEST_FILE)
    assert manifest.n == 4 and f"id {manifest.group_id.hex()}" in out.stdout
    assert dropbear("init", "--dir", str(group_dir)).returncode == 1  # no silent overwrite

    up, up_log = start_up(group_dir, tmp_path)
    try:
        nodes = wait_serving(up, up_log, group_dir)

        images = tmp_path / "images"
        images.mkdir()
        np.save(images / "seven.npy", digits.x_test[0])
        pixels = (digits.x_test[1][..., 0] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(images / "digit.png")
        certs = tmp_path / "certs"
        out = dropbear("infer", str(images / "seven.npy"), str(images / "digit.png"),
                       "--dir", str(group_dir), "--models-dir", str(MODELS), "--out", str(certs))
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 2, out.stdout
        assert lines[0].startswith(f"{images / 'seven.npy'}: label {digits.y_test[0]} ")
        assert lines[1].startswith(f"{images / 'digit.png'}: label ")
        assert all("; votes node " in line for line in lines), out.stdout

        for name in ("seven", "digit"):
            cert_path = certs / f"{name}.cert.json"
            out = dropbear("verify", str(cert_path), "--manifest", str(group_dir / MANIFEST_FILE))
            assert out.returncode == 0 and out.stdout.startswith("VALID"), out.stdout + out.stderr
        data = json.loads((certs / "seven.cert.json").read_text())
        assert data["entry"]["label"] == int(digits.y_test[0])
        tampered = json.loads(json.dumps(data))
        tampered["entry"]["votes"][0]["label"] = (tampered["entry"]["votes"][0]["label"] + 1) % 10
        forged_signature = json.loads(json.dumps(data))
        signature = bytearray.fromhex(forged_signature["signatures"][0]["signature"])
        signature[0] ^= 1
        forged_signature["signatures"][0]["signature"] = signature.hex()
        for name, doc, reason in [("tampered", tampered, ""),
                                  ("forged", forged_signature, "bad commit signatures")]:
            path = tmp_path / f"{name}.cert.json"
            path.write_text(json.dumps(doc))
            out = dropbear("verify", str(path), "--manifest", str(group_dir / MANIFEST_FILE))
            assert out.returncode == 1, out.stdout + out.stderr
            assert out.stdout.startswith("INVALID: ") and reason in out.stdout, out.stdout
            assert len(out.stdout.strip()) > len("INVALID: ") + 10, out.stdout
            with pytest.raises(CertificateError):
                from dropbear.certificate import from_json

                verify(from_json(path.read_text()), manifest)

        out = dropbear("status", "--dir", str(group_dir))
        assert out.returncode == 0, out.stdout + out.stderr
        rows = out.stdout.strip().splitlines()[1:]
        assert len(rows) == 4, out.stdout
        for i, row in enumerate(rows):
            fields = row.split()
            assert fields[0] == str(i) and fields[1] == "0" and fields[2] == "0", row
            assert int(fields[3]) >= 1 and fields[5] == manifest.nodes[i].model, row

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0, up_log.read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    text = up_log.read_text()
    assert "SIGINT: stopping every node" in text
    assert "every node stopped (exit codes {0: [0], 1: [0], 2: [0], 3: [0]})" in text, text
    assert not [pid for pid in nodes if alive(pid)], "node processes outlived `dropbear up`"
    assert processes_mentioning(str(group_dir)) == []


def test_nodes_stop_when_up_is_killed(tmp_path) -> None:
    """`dropbear up` killed by SIGKILL (no chance to clean up): its nodes notice and exit."""
    group_dir = tmp_path / "group"
    init_group(group_dir, base_port=0, models_dir=MODELS, models=["digits-mlp"])
    up, up_log = start_up(group_dir, tmp_path)
    try:
        nodes = wait_serving(up, up_log, group_dir)
    finally:
        up.kill()
        up.wait()
    deadline = time.monotonic() + 10
    while [pid for pid in nodes if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in nodes if alive(pid)], "nodes outlived their killed launcher"
    assert "launcher" in log_tails(group_dir) and "is gone: stopping" in log_tails(group_dir)


def test_node_stops_cleanly_on_sigterm_right_after_it_serves(tmp_path) -> None:
    """SIGTERM the moment a node logs that it serves: it still exits 0 (handled, not the
    default action)."""
    manifest = init_group(tmp_path / "group", base_port=0, models_dir=MODELS,
                          models=["digits-mlp"])
    node = subprocess.Popen(
        [sys.executable, "-m", "dropbear", "node", "--id", "0", "--models-dir", str(MODELS),
         "--manifest", str(tmp_path / "group" / MANIFEST_FILE), "--max-batch-size", "1"],
        stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for line in node.stderr:
            if "serving on" in line:
                node.send_signal(signal.SIGTERM)
                break
        assert node.wait(timeout=30) == 0, node.stderr.read()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert manifest.n == 4
