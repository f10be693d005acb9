"""The unreplicated baseline: one digit model behind the same batched executor, no consensus.

    python benches/plain_server.py --model digits-cnn --port 7600

It speaks dropbear.net (the same authenticated handshake and length-prefixed frames as a
node) with a minimal payload and no signatures per message:

    request  = request id (u64 BE) || little-endian input bytes (the model's dtype and shape)
    answer   = request id (u64 BE) || label (u32 BE) || probability (f32 BE)

Every request is decoded with the node's own ``decode_input`` and submitted to an
:class:`~dropbear.inference.Executor` built with the node's batching settings
(``--max-batch-size``, ``--max-queue-delay``), so the inference work and batching are the
node's; only ordering, votes, signatures and certificates are missing. :class:`PlainClient`
sends each request to every server (the same inference work as a group, where every node
runs every request) and returns once ``answers`` of them replied.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import signal
import struct
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import trio
from dropbear import _core, heap
from dropbear.net import Listener, LocalIdentity, PassFlush, PeerIdentity, PeerLink, Role, Sender

PLAIN_GROUP_ID = hashlib.sha256(b"dropbear/benches/plain-server").digest()
_REQUEST_HEAD = struct.Struct(">Q")
_ANSWER = struct.Struct(">QIf")


def _anyone(peer: PeerIdentity) -> bool:
    return True


class PlainServer:
    """One model, the node's executor and batching, answering frames at once."""

    def __init__(self, executor) -> None:
        self.executor = executor
        self.listener = Listener(PLAIN_GROUP_ID, LocalIdentity(_core.SigningKey.generate(),
                                                               Role.NODE, 0),
                                 _anyone, self._on_frame)
        self._nursery: trio.Nursery | None = None
        self.answered = 0
        self._flush = PassFlush()
        """Answers leave once per scheduler pass, one write per client (as a node's
        replies do: one REPLY per client and batch)."""

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.executor.start(nursery)
            nursery.start_soon(self._flush.run)
            port = await nursery.start(self.listener.serve, host, port)
            task_status.started(port)

    async def _on_frame(self, peer: PeerIdentity, frame: bytes, sender: Sender) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._answer, frame, sender)

    async def _answer(self, frame: bytes, sender: Sender) -> None:
        from dropbear.inference import InferenceError, decode_input

        (request_id,) = _REQUEST_HEAD.unpack_from(frame)
        config = self.executor.config
        try:
            x = decode_input(config, config.input_dtype, config.input_shape,
                             frame[_REQUEST_HEAD.size:])
            prediction = await self.executor.submit(x)
        except InferenceError:
            self._flush.put(sender.outbox,  # type: ignore[attr-defined]
                            _ANSWER.pack(request_id, 0xFFFFFFFF, 0.0))
            return
        self._flush.put(sender.outbox,  # type: ignore[attr-defined]
                        _ANSWER.pack(request_id, prediction.class_index, prediction.probability))
        self.answered += 1


class PlainClient:
    """Sends each input to every plain server; ``infer`` returns when ``answers`` replied."""

    def __init__(self, addresses: Sequence[tuple[str, int]], answers: int | None = None) -> None:
        me = LocalIdentity(_core.SigningKey.generate(), Role.CLIENT)
        self.links = [PeerLink(address, PLAIN_GROUP_ID, me, _anyone, self._on_frame)
                      for address in addresses]
        self.answers = answers or len(self.links)
        self._next_id = 0
        self._pending: dict[int, tuple[trio.Event, list[int]]] = {}
        self._flush = PassFlush()  # requests leave once per pass, as the Dropbear client's

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, addresses: Sequence[tuple[str, int]], answers: int | None = None,
                      timeout: float = 30.0) -> AsyncIterator[PlainClient]:
        client = cls(addresses, answers)
        async with trio.open_nursery() as nursery:
            for link in client.links:
                nursery.start_soon(link.run)
            nursery.start_soon(client._flush.run)
            with trio.fail_after(timeout):
                while not all(link.connected for link in client.links):
                    await trio.sleep(0.05)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()

    async def infer(self, x: np.ndarray) -> list[int]:
        request_id = self._next_id
        self._next_id += 1
        done, labels = trio.Event(), []
        self._pending[request_id] = (done, labels)
        frame = _REQUEST_HEAD.pack(request_id) + np.ascontiguousarray(
            x, dtype=x.dtype.newbyteorder("<")).tobytes()
        try:
            for link in self.links:
                if not self._flush.put(link.outbox, frame):
                    raise RuntimeError(f"request {request_id}: a server's send queue is full "
                                       f"(NET_PEER_SEND_QUEUE); keep fewer requests in flight")
            await done.wait()
        finally:
            del self._pending[request_id]
        return labels

    async def _on_frame(self, peer: PeerIdentity, frame: bytes, sender: Sender) -> None:
        request_id, label, _ = _ANSWER.unpack(frame)
        pending = self._pending.get(request_id)
        if pending is not None:
            done, labels = pending
            labels.append(label)
            if len(labels) >= self.answers:
                done.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model name in the repository")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay", type=float, default=0.0,
                        help="seconds an input may wait for others to join its batch; 0 (the "
                        "default) runs a batch as soon as the model is free, and what queues "
                        "while it runs forms the next batch")
    parser.add_argument("--null-model", action="store_true",
                        help="answer at once without the model (dropbear's NullExecutor)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from dropbear.inference import Executor, ModelRepository
    from dropbear.inference.null import NullExecutor

    repository = ModelRepository(args.models_dir)
    if args.null_model:
        config = repository.config(args.model)
        executor = NullExecutor(config, config.current_version)
    else:
        executor = Executor(repository.load(args.model), max_batch_size=args.max_batch_size,
                            max_queue_delay=args.max_queue_delay)
    server = PlainServer(executor)
    heap.settle()  # the same collector settings as a node's

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, args.host, args.port)
            print(f"PORT {port}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
