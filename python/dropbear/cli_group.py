"""``dropbear init | up | node | infer | verify | update | status``: running a model group.

Registered into :mod:`dropbear.cli`'s subcommand registry on import.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

from dropbear import certificate, control, heap, limits
from dropbear.cli import subcommand
from dropbear.client import Client, ClientError
from dropbear.consensus import ReplicaConfig
from dropbear.deploy import (
    DEFAULT_BASE_PORT,
    DEFAULT_GROUP_DIR,
    MANIFEST_FILE,
    init_group,
    key_path,
    read_key,
)
from dropbear.inference import ModelConfig, ModelRepository
from dropbear.launcher import GroupProcesses
from dropbear.ledger import LedgerError, SqliteLedger
from dropbear.manifest import Manifest, ManifestError
from dropbear.node import Fault, Node, NodeSettings
from dropbear.wire import ModelUpdate


def _group_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=DEFAULT_GROUP_DIR,
                        help=f"the group directory (default: {DEFAULT_GROUP_DIR})")


def _models_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=Path("models"),
                        help="the model repository (default: models)")


def _fail(message: str) -> int:
    print(f"dropbear: {message}", file=sys.stderr)
    return 1


# --- init ------------------------------------------------------------------------------------


def _init_arguments(parser: argparse.ArgumentParser) -> None:
    _group_dir_argument(parser)
    _models_dir_argument(parser)
    parser.add_argument("--f", type=int, default=1, help="faults tolerated (default 1: 4 nodes)")
    parser.add_argument("--nodes", type=int, help="number of nodes (default 3f+1)")
    parser.add_argument("--models", help="comma-separated model names, one per node, cycled "
                                         "(default: every model in the repository)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help=f"node K listens on base-port + K (default {DEFAULT_BASE_PORT}; "
                             "0 picks free ports)")
    parser.add_argument("--threshold", type=int, default=0,
                        help="agreement threshold q (default 2f+1)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing group")


@subcommand("init", "create a model group on loopback: keys, manifest, models", _init_arguments)
def init(args: argparse.Namespace) -> int:
    if (args.dir / MANIFEST_FILE).exists() and not args.force:
        return _fail(f"{args.dir / MANIFEST_FILE} exists; use --force to replace the group")
    try:
        manifest = init_group(
            args.dir, f=args.f, nodes=args.nodes, models_dir=args.models_dir,
            models=args.models.split(",") if args.models else None, host=args.host,
            base_port=args.base_port, threshold=args.threshold)
    except (ValueError, ManifestError, OSError) as error:
        return _fail(str(error))
    print(f"group {manifest.name!r}: n={manifest.n}, f={manifest.f}, "
          f"threshold q={manifest.threshold}, id {manifest.group_id.hex()}")
    for i, info in enumerate(manifest.nodes):
        print(f"  node {i}  {info.address:<21} model {info.model:<16} "
              f"version {info.model_version.hex()[:12]}")
    print(f"manifest: {args.dir / MANIFEST_FILE}; keys: {args.dir / 'keys'} (mode 0600)")
    return 0


# --- node ------------------------------------------------------------------------------------


def _node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", type=int, required=True, help="this node's index in the manifest")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--key", type=Path,
                        help="node key file (default: keys/node-ID.key beside the manifest)")
    _models_dir_argument(parser)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay", type=float, default=0.0,
                        help="seconds an input may wait for others to join its batch; 0 (the "
                        "default) runs a batch as soon as the model is free, and what queues "
                        "while it runs forms the next batch")
    parser.add_argument("--batch-wait", type=float, default=limits.BATCH_WAIT,
                        help="as primary, with batches in flight: seconds a small ordering "
                             f"batch waits for more requests (default {limits.BATCH_WAIT})")
    parser.add_argument("--fault-injection", action="store_true",
                        help="accept FAULT control frames (demos and tests only)")
    parser.add_argument("--fault", choices=[f.value for f in Fault], default="none",
                        help="Byzantine behaviour to play from the start (demos and tests)")
    parser.add_argument("--null-model", action="store_true",
                        help="answer at once without running the model (benchmarks of "
                             "ordering alone; votes are SHA-256(input) mod classes)")
    parser.add_argument("--site-delay", type=float, default=0.0,
                        help="seconds to hold each frame to a node at another site "
                             "(benchmarks: simulated wide-area distance)")
    parser.add_argument("--sites", type=int, default=3,
                        help="with --site-delay: node K is at site K mod SITES (default 3)")
    parser.add_argument("--data-dir", type=Path,
                        help="where the node's ledger lives (default: data/ beside the manifest; "
                             "the file is node-ID.db)")
    parser.add_argument("--ledger-sync", choices=["full", "normal"], default="full",
                        help="full (default): every commit fsyncs, survives power loss; "
                             "normal: survives a process crash (kill -9), not power loss")
    parser.add_argument("--ledger-max-pages", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when the launching process goes away (set by `dropbear up`)")


@subcommand("node", "run one node of a group (one process; for deployments over hosts)",
            _node_arguments)
def node(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s node {args.id} %(levelname)s %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    try:
        manifest = Manifest.load(args.manifest)
        key = read_key(args.key or key_path(args.manifest.parent, "node", args.id))
    except (ManifestError, OSError, ValueError) as error:
        return _fail(str(error))
    try:
        replica_config = ReplicaConfig(batch_wait=args.batch_wait)
    except ValueError as error:
        return _fail(f"--batch-wait: {error}")
    settings = NodeSettings(models_dir=args.models_dir, max_batch_size=args.max_batch_size,
                            max_queue_delay=args.max_queue_delay,
                            fault_injection=args.fault_injection, fault=Fault(args.fault),
                            null_model=args.null_model,
                            replica=replica_config,
                            link_delay=_site_delays(manifest.n, args.id, args.site_delay,
                                                    args.sites))

    data_dir = args.data_dir or args.manifest.parent / "data"
    try:
        ledger = SqliteLedger(data_dir / f"node-{args.id}.db", group_id=manifest.group_id,
                              node=args.id, group_commit=True, max_pages=args.ledger_max_pages,
                              synchronous=args.ledger_sync, deferred_sync=True)
    except LedgerError as error:
        return _fail(f"node {args.id}: {error}")
    logging.info("ledger %s: %d committed batches", ledger.path, ledger.last_seq())

    async def main() -> None:
        # Catch SIGINT/SIGTERM from the start: one that comes while the node loads or right
        # after it says it serves still stops it cleanly (exit 0), never by the default action.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            replica_node = await Node.load(manifest, args.id, key, settings, ledger)
            heap.settle()  # the model is loaded and compiled: what lives now lives long
            async with trio.open_nursery() as nursery:
                await nursery.start(replica_node.run)
                if args.exit_with_parent:
                    nursery.start_soon(_exit_with_parent, nursery.cancel_scope, os.getppid())
                async for signum in signals:
                    logging.info("stopping on %s", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except (ValueError, OSError) as error:
        return _fail(f"node {args.id}: {error}")
    except BaseException as error:
        ledger_error = _find(error, LedgerError)
        if ledger_error is None:
            raise
        logging.critical("ledger failure, stopping: %s", ledger_error)
        return _fail(f"node {args.id}: {ledger_error}")
    finally:
        with contextlib.suppress(LedgerError, sqlite3.Error, OSError):
            ledger.close(commit=False)  # an unsynced group-commit transaction is rolled back
    return 0


def _find(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``error`` or the first ``kind`` inside (nested) exception groups."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _site_delays(n: int, me: int, delay: float, sites: int) -> dict[int, float]:
    """``delay`` to every node at another site than ``me`` (node K is at site K mod sites)."""
    if delay <= 0 or sites < 2:
        return {}
    return {peer: delay for peer in range(n) if peer % sites != me % sites}


async def _exit_with_parent(scope: trio.CancelScope, parent: int) -> None:
    """Cancels ``scope`` once the parent process is gone (the node is re-parented)."""
    while os.getppid() == parent:
        await trio.sleep(1.0)
    logging.warning("launcher %d is gone: stopping", parent)
    scope.cancel()


# --- up --------------------------------------------------------------------------------------


def _up_arguments(parser: argparse.ArgumentParser) -> None:
    _group_dir_argument(parser)
    _models_dir_argument(parser)
    parser.add_argument("--fault-injection", action="store_true",
                        help="let the nodes accept FAULT control frames (demos and tests)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between status lines (0: none)")


@subcommand("up", "start every node of the group as its own process; Ctrl-C stops them",
            _up_arguments)
def up(args: argparse.Namespace) -> int:
    if not (args.dir / MANIFEST_FILE).exists():
        return _fail(f"no group in {args.dir}: run `dropbear init` first")
    extra = ["--fault-injection"] if args.fault_injection else []

    async def main() -> None:
        group = GroupProcesses(args.dir, models_dir=args.models_dir, extra_args=extra)
        client = Client(group.manifest, read_key(key_path(args.dir, "client")))
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        print(f"\n{signal.Signals(signum).name}: stopping every node ...")
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                client.start(nursery)
                await nursery.start(group.run)
                print(f"started {group.manifest.n} node processes; logs in {args.dir / 'logs'}")
                await group.wait_ready(client)
                print("every node is serving; Ctrl-C stops the group")
                while args.interval > 0:
                    print(await _status_line(client, group.manifest), flush=True)
                    await trio.sleep(args.interval)
                await trio.sleep_forever()
        codes = {n.node_id: n.exit_codes for n in group.nodes}
        print(f"every node stopped (exit codes {codes})")

    trio.run(main)
    return 0


async def _status_line(client: Client, manifest: Manifest) -> str:
    parts = []
    for i in range(manifest.n):
        try:
            s = await client.status(i, timeout=1.0)
            parts.append(f"n{i}: v{s['view']} seq {s['executed_seq']} "
                         f"q{s['queues']['intake'] + s['queues']['pending_requests']}")
        except ClientError:
            parts.append(f"n{i}: down")
        except (KeyError, TypeError):  # a node (perhaps a faulty one) sent a bad status
            parts.append(f"n{i}: bad status")
    return time.strftime("%H:%M:%S ") + " | ".join(parts)


# --- status ----------------------------------------------------------------------------------


@subcommand("status", "per node: view, last committed sequence number, model, queue depths",
            _group_dir_argument)
def status(args: argparse.Namespace) -> int:
    try:
        manifest = Manifest.load(args.dir / MANIFEST_FILE)
        key = read_key(key_path(args.dir, "client"))
    except (ManifestError, OSError, ValueError) as error:
        return _fail(str(error))

    async def main() -> list[dict[str, Any] | None]:
        async with Client.connect(manifest, key) as client:
            out: list[dict[str, Any] | None] = []
            for i in range(manifest.n):
                try:
                    out.append(await client.status(i, timeout=3.0))
                except ClientError:
                    out.append(None)
            return out

    rows = trio.run(main)
    print(f"{'node':>4} {'view':>5} {'primary':>7} {'committed':>9} {'stable':>6} "
          f"{'model':<16} {'version':<12} {'intake':>6} {'pending':>7} {'infer':>6}")
    for i, s in enumerate(rows):
        if s is None:
            print(f"{i:>4}  down ({manifest.nodes[i].address})")
            continue
        try:
            q = s["queues"]
            print(f"{i:>4} {s['view']:>5} {s['primary']:>7} {s['executed_seq']:>9} "
                  f"{s['stable_seq']:>6} {s['model']:<16} {s['model_version'][:12]:<12} "
                  f"{q['intake']:>6} {q['pending_requests']:>7} {q['inference_inflight']:>6}")
        except (KeyError, TypeError):
            print(f"{i:>4}  sent a malformed status: {str(s)[:200]}")
    return 0 if all(rows) else 1


# --- infer and verify ----------------------------------------------------------------------


def load_image(path: Path, config: ModelConfig) -> np.ndarray:
    """A model input from a .npy array (used as is) or a PNG (grayscale, resized to the input
    shape, scaled to the digits' 0..16 range, inverted when the background is light)."""
    if path.suffix == ".npy":
        x = np.load(path, allow_pickle=False)
        if x.dtype != np.dtype(config.input_dtype):
            x = x.astype(config.input_dtype)
        return x.reshape(config.input_shape) if x.size == np.prod(config.input_shape) else x
    from PIL import Image

    height, width, channels = config.input_shape
    image = Image.open(path).convert("L" if channels == 1 else "RGB").resize((width, height))
    x = np.asarray(image, dtype=np.float32)
    if x.mean() > 127:
        x = 255.0 - x
    x = x * (16.0 / 255.0)
    return x.reshape(config.input_shape).astype(config.input_dtype)


def _infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG or .npy")
    _group_dir_argument(parser)
    _models_dir_argument(parser)
    parser.add_argument("--out", type=Path,
                        help="directory for the certificates (default: beside each image)")


@subcommand("infer", "certified inference: print the agreed label and votes, save the "
            "certificate", _infer_arguments)
def infer(args: argparse.Namespace) -> int:
    try:
        manifest = Manifest.load(args.dir / MANIFEST_FILE)
        key = read_key(key_path(args.dir, "client"))
        config = ModelRepository(args.models_dir).config(manifest.nodes[0].model)
        inputs = [load_image(p, config) for p in args.images]
    except (ManifestError, OSError, ValueError) as error:
        return _fail(str(error))

    async def main() -> int:
        failures = 0
        async with Client.connect(manifest, key) as client:
            for path, x in zip(args.images, inputs, strict=True):
                try:
                    result = await client.infer(x)
                except ClientError as error:
                    print(f"{path}: {error}", file=sys.stderr)
                    failures += 1
                    continue
                labels = config.labels
                votes = ", ".join(f"node {n}: {labels[lab]}" for n, lab in result.votes.items())
                agreement = "reached" if result.reached else "NOT reached"
                out_dir = args.out or path.parent
                out_dir.mkdir(parents=True, exist_ok=True)
                cert_path = out_dir / f"{path.stem}.cert.json"
                cert_path.write_text(certificate.to_json(result.certificate) + "\n")
                print(f"{path}: label {labels[result.label]} (threshold q={manifest.threshold} "
                      f"{agreement}; votes {votes}) seq {result.certificate.seq} "
                      f"-> {cert_path}")
        return 1 if failures else 0

    return trio.run(main)


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("certificate", type=Path, metavar="CERT")
    parser.add_argument("--manifest", type=Path, required=True)


@subcommand("verify", "verify a certificate offline against a manifest", _verify_arguments)
def verify(args: argparse.Namespace) -> int:
    try:
        manifest = Manifest.load(args.manifest)
        cert = certificate.from_json(args.certificate.read_text())
    except (ManifestError, OSError, ValueError) as error:
        return _fail(f"cannot read: {error}")
    try:
        certificate.verify(cert, manifest)
    except certificate.CertificateError as error:
        print(f"INVALID: {error}")
        return 1
    e = cert.entry
    print(f"VALID: group {cert.group_id.hex()[:16]}, view {cert.view}, seq {cert.seq}, "
          f"request {e.request_id} of client {e.client.hex()[:16]}: label {e.label} "
          f"(threshold {e.threshold} {'reached' if e.reached else 'not reached'}), "
          f"{len(e.votes)} votes, {len(cert.signatures)} commit signatures")
    return 0


# --- update ----------------------------------------------------------------------------------


def _update_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True,
                        help="models/<name>/<version>: the new weights (already on the node)")
    _group_dir_argument(parser)
    parser.add_argument("--owner-key", type=Path,
                        help="the node owner's key (default: keys/owner-NODE.key)")


@subcommand("update", "an owner-signed model update of one node, while traffic flows",
            _update_arguments)
def update(args: argparse.Namespace) -> int:
    try:
        manifest = Manifest.load(args.dir / MANIFEST_FILE)
        owner = read_key(args.owner_key or key_path(args.dir, "owner", args.node))
        client_key = read_key(key_path(args.dir, "client"))
        name, version = args.model.parent.name, args.model.name
        model_version = bytes.fromhex(version)
        if len(model_version) != 32:
            raise ValueError(f"{args.model}: the last part must be a 64-hex-digit version")
        if not 0 <= args.node < manifest.n:
            raise ValueError(f"node {args.node} is not in 0..{manifest.n - 1}")
    except (ManifestError, OSError, ValueError) as error:
        return _fail(str(error))
    signed = ModelUpdate(manifest.group_id, args.node, model_version,
                         time.time_ns() // 1000).signed(owner)

    async def main() -> dict[str, Any]:
        async with Client.connect(manifest, client_key) as client:
            return await client.control(args.node, control.Control.UPDATE,
                                        {"model": name, "update": signed.encoded.hex()})

    try:
        ack = trio.run(main)
    except ClientError as error:
        return _fail(str(error))
    print(("ok: " if ack.get("ok") else "refused: ") + str(ack.get("message")))
    return 0 if ack.get("ok") else 1




# --- certificate and audit (the durable ledger) ----------------------------------------------


async def fetch_certificate(client: Client, manifest: Manifest, client_key: bytes,
                            request_id: int, nodes: list[int] | None = None,
                            timeout: float = 3.0) -> tuple[int, certificate.Certificate]:
    """Asks the nodes in turn for a past certificate; returns ``(node, certificate)`` of the
    first answer that verifies against the manifest and is for that client and request."""
    problems = []
    for node_id in nodes if nodes is not None else range(manifest.n):
        try:
            answer = await client.control(node_id, control.Control.CERTIFICATE_QUERY,
                                          {"client": client_key.hex(),
                                           "request_id": request_id}, timeout)
        except ClientError as error:
            problems.append(f"node {node_id}: {error}")
            continue
        data = answer.get("certificate")
        if data is None:
            problems.append(f"node {node_id}: unknown ({answer.get('error', 'not in its ledger')})")
            continue
        try:
            cert = certificate.from_dict(data)
            certificate.verify(cert, manifest)
        except (ValueError, KeyError, TypeError) as error:
            problems.append(f"node {node_id}: its answer does not verify: {error}")
            continue
        if cert.entry.client != client_key or cert.entry.request_id != request_id:
            problems.append(f"node {node_id}: answered with another request's certificate")
            continue
        return node_id, cert
    raise ClientError("no node gave a valid certificate: " + "; ".join(problems))


def _certificate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", help="the client's public key (64 hex digits) or key file "
                                         "(default: the group's keys/client.key)")
    parser.add_argument("--request", type=int, required=True, help="the request id")
    parser.add_argument("--node", type=int, action="append",
                        help="ask only this node (repeatable; default: every node in turn)")
    parser.add_argument("--out", type=Path, help="write the certificate JSON here")
    _group_dir_argument(parser)


@subcommand("certificate", "fetch a past certificate from any node's ledger and verify it",
            _certificate_arguments)
def fetch_certificate_command(args: argparse.Namespace) -> int:
    try:
        manifest = Manifest.load(args.dir / MANIFEST_FILE)
        key = read_key(key_path(args.dir, "client"))
        who = args.client
        if who is None:
            client_key = key.public_key
        elif len(who) == 64 and all(c in "0123456789abcdefABCDEF" for c in who):
            client_key = bytes.fromhex(who)
        else:
            client_key = read_key(Path(who)).public_key
    except (ManifestError, OSError, ValueError) as error:
        return _fail(str(error))

    async def main() -> tuple[int, certificate.Certificate]:
        async with Client.connect(manifest, key) as client:
            return await fetch_certificate(client, manifest, client_key, args.request,
                                           args.node)

    try:
        node_id, cert = trio.run(main)
    except ClientError as error:
        return _fail(str(error))
    text = certificate.to_json(cert)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    e = cert.entry
    print(f"VALID (from node {node_id}): seq {cert.seq}, request {e.request_id} of client "
          f"{e.client.hex()[:16]}: label {e.label} "
          f"({'reached' if e.reached else 'not reached'}){f' -> {args.out}' if args.out else ''}",
          file=sys.stderr)
    return 0


def _audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--data-dir", type=Path,
                        help="the nodes' ledger directory (default: data/ in the group dir)")
    _group_dir_argument(parser)


@subcommand("audit", "check a node's ledger end to end; list evidence of misbehaving nodes",
            _audit_arguments)
def audit_command(args: argparse.Namespace) -> int:
    from dropbear.ledger import audit

    try:
        manifest = Manifest.load(args.dir / MANIFEST_FILE)
    except (ManifestError, OSError, ValueError) as error:
        return _fail(str(error))
    path = (args.data_dir or args.dir / "data") / f"node-{args.node}.db"
    if not path.exists():
        return _fail(f"no ledger at {path}")
    try:
        ledger = SqliteLedger(path, group_id=manifest.group_id, node=args.node)
    except LedgerError as error:
        print(f"CORRUPT: {error}")
        return 1
    try:
        report = audit(ledger, manifest)
    finally:
        ledger.db.close()
    print(f"ledger {path}: {report.batches} committed batches (hash chain "
          f"{ledger.chain_head().hex()[:16]}), {report.entries} certified entries, "
          f"{report.answers} answers (certificates to rebuild), "
          f"{report.checkpoints} stable checkpoints, "
          f"{report.model_updates} model updates")
    for problem in report.problems or ():
        print(f"PROBLEM: {problem}")
    for culprit, kind, detail in report.evidence or ():
        who = f"node {culprit}" if culprit is not None else "nobody"
        print(f"EVIDENCE against {who}: conflicting {kind} ({detail})")
    if not report.evidence:
        print("no evidence of misbehaving nodes")
    print("OK: every batch, signature and certificate checks out" if report.ok else
          f"BAD: {len(report.problems or ())} problems")
    return 0 if report.ok else 1
