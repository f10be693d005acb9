"""DESIGN.md properties 1-4 and 6, checked as the simulation runs (5 at the end)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dropbear.certificate import CertificateError, verify
from dropbear.consensus import Deliver
from dropbear.evidence import Evidence, EvidenceBundle
from dropbear.wire import Certificate

if TYPE_CHECKING:
    from .world import SimNode, World


class InvariantViolation(AssertionError):
    pass


class Checker:
    """Keeps the reference order (first honest delivery per seq) and checks every output."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.roots: dict[int, bytes] = {}
        self.versions: dict[int, list[bytes]] = {0: [n.model_version for n in world.manifest.nodes]}
        self.certificates = 0
        self.evidence: list[tuple[int, Evidence]] = []
        self._pending_certs: list[Certificate] = []

    def fail(self, what: str) -> None:
        raise InvariantViolation(f"seed {self.world.seed} t={self.world.now:.3f}: {what}")

    def after_step(self) -> None:
        still = []
        for cert in self._pending_certs:
            if cert.seq - 1 in self.versions:
                self._check_versions(cert)
            else:
                still.append(cert)
        self._pending_certs = still

    # Property 1: one batch per sequence number among honest nodes, across restarts.
    def on_deliver(self, node: SimNode, deliver: Deliver) -> None:
        if not node.honest:
            return
        if deliver.void:
            # A committed entry that is void at execution would have COMMIT signatures that
            # a faulty node could turn into a certificate for stale votes (property 4).
            self.fail(f"node {node.index} committed {len(deliver.void)} void entries at seq "
                      f"{deliver.seq}: a batch prepared against another predecessor")
        known = self.roots.setdefault(deliver.seq, deliver.root)
        if known != deliver.root:
            self.fail(
                f"node {node.index} committed {deliver.root.hex()[:12]} at seq "
                f"{deliver.seq}, another honest node {known.hex()[:12]}"
            )
        if deliver.seq not in self.versions:
            if deliver.seq - 1 not in self.versions:
                self.fail(f"seq {deliver.seq} delivered before seq {deliver.seq - 1}")
            versions = list(self.versions[deliver.seq - 1])
            for update in deliver.updates:
                versions[update.node] = update.model_version
            self.versions[deliver.seq] = versions

    # Properties 2 and 3: every honest certificate verifies and matches the order.
    def on_reply(self, node: SimNode, cert: Certificate) -> None:
        if not node.honest:
            return
        try:
            verify(cert, self.world.manifest)
        except CertificateError as error:
            self.fail(f"node {node.index} issued a bad certificate: {error}")
        if self.roots.get(cert.seq) != cert.root:
            self.fail(f"certificate root at seq {cert.seq} is not the committed one")
        for vote in cert.entry.votes:
            voter = self.world.nodes[vote.node]
            if voter.honest and vote.label != voter.label(
                vote.node, vote.model_version, cert.entry.request
            ):
                self.fail(f"honest node {vote.node}'s vote was altered")
        self.certificates += 1
        self._pending_certs.append(cert)
        self.after_step()

    # Property 4: every vote from the version current at the certificate's seq.
    def _check_versions(self, cert: Certificate) -> None:
        current = self.versions[cert.seq - 1]
        for vote in cert.entry.votes:
            if vote.model_version != current[vote.node]:
                self.fail(
                    f"seq {cert.seq}: node {vote.node} voted with "
                    f"{vote.model_version.hex()[:12]}, current {current[vote.node].hex()[:12]}"
                )

    # Property 6: evidence verifies alone and never convicts an honest node.
    def on_evidence(self, node: SimNode, evidence: Evidence) -> None:
        if not node.honest:
            return
        manifest = self.world.manifest
        bundle = EvidenceBundle.from_json(EvidenceBundle(manifest.group_id, (evidence,)).to_json())
        culprits = bundle.culprits(manifest)
        for culprit in culprits:
            if self.world.nodes[culprit].honest:
                self.fail(f"evidence convicts honest node {culprit}")
        self.evidence.append((node.index, evidence))
