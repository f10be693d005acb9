//! A REPLY as a client reads it: parsed in place, each certificate's entry checked.
//!
//! A node sends each client one REPLY per committed batch, carrying that client's
//! certificates with what they share written once (docs/certificates.md, "How certificates
//! reach the client"). The client checks steps 1-3 of every certificate (the group, the
//! entry's agreement, its inclusion under the root) and steps 4-5 (the COMMIT signatures)
//! once per batch. This module does steps 1-3 for every item without making an object per
//! field: the reference is `dropbear.wire.Reply.decode` with `dropbear.certificate.
//! verify_entry`, and the two must accept and refuse the same bytes.

use crate::entries::{agreed, ENTRY_HEAD_LEN, ENTRY_KIND, ENTRY_VERSION};
use crate::merkle::{self, Hash, Levels};

/// The format version byte, and the REPLY kind byte.
pub const VERSION: u8 = 0x01;
pub const REPLY_KIND: u8 = 0x0c;
/// Limits, as `dropbear.limits` and `dropbear.wire` name them (a test compares them).
pub const MAX_NODES: u16 = 64;
pub const MAX_REPLY_ITEMS: usize = 256;
pub const MAX_PROOF_HASHES: usize = 64;
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// What a node's REPLY signature signs before the SHA-256 of the body
/// (`dropbear.wire.REPLY_SIGNING_CONTEXT`; a test compares them).
pub const SIGNING_CONTEXT: &[u8] = b"dropbear reply\0";
const GROUP_ID_BYTES: usize = 32;
const SIGNATURE_BYTES: usize = 64;

/// A parsed REPLY, borrowing the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<'a> {
    pub group_id: &'a [u8],
    pub node: u16,
    pub view: u64,
    pub seq: u64,
    pub tree_size: u32,
    pub root: &'a [u8],
    /// `(node, signature)`: the COMMIT signatures every certificate of the batch shares.
    pub signatures: Vec<(u16, &'a [u8])>,
    pub items: Vec<Item<'a>>,
    /// The node's signature of the REPLY.
    pub signature: &'a [u8],
}

/// One certificate of a REPLY, less what they share.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    pub leaf_index: u32,
    pub entry: Entry<'a>,
    /// The entry's canonical bytes (its Merkle leaf).
    pub leaf: &'a [u8],
    pub proof: Vec<Hash>,
}

/// A request entry read from its canonical bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<'a> {
    pub request: &'a [u8],
    pub client: &'a [u8],
    pub request_id: u64,
    /// `(node, model version, label, score)`, nodes strictly increasing.
    pub votes: Vec<(u16, &'a [u8], u32, f64)>,
    pub label: u32,
    pub threshold: u16,
    pub reached: bool,
}

/// Reads fields in order; each error names the field that did not fit.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.data.len() - self.at < n {
            return Err(format!("truncated {what}"));
        }
        let bytes = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn node(&mut self, what: &str) -> Result<u16, String> {
        let node = self.u16(what)?;
        if node >= MAX_NODES {
            return Err(format!("{what} {node} exceeds the limit {}", MAX_NODES - 1));
        }
        Ok(node)
    }

    /// Reads the version and kind bytes every encoding starts with; `unknown` or
    /// `other_kind` is the error when they are not `version` and `kind`.
    fn start(
        &mut self,
        version: u8,
        kind: u8,
        what: &str,
        unknown: &str,
        other_kind: &str,
    ) -> Result<(), String> {
        if self.u8(what)? != version {
            return Err(unknown.into());
        }
        if self.u8(what)? != kind {
            return Err(other_kind.into());
        }
        Ok(())
    }

    fn end(&self, what: &str) -> Result<(), String> {
        if self.at != self.data.len() {
            return Err(format!(
                "{} trailing bytes after {what}",
                self.data.len() - self.at
            ));
        }
        Ok(())
    }
}

/// Reads a request entry from its canonical bytes, refusing any other encoding.
pub fn read_entry(leaf: &[u8]) -> Result<Entry<'_>, String> {
    let mut r = Reader { data: leaf, at: 0 };
    r.start(
        ENTRY_VERSION,
        ENTRY_KIND,
        "entry",
        "unknown entry version",
        "not a request entry",
    )?;
    let request = r.take(32, "entry")?;
    let client = r.take(32, "entry")?;
    let request_id = r.u64("entry")?;
    let count = r.u16("entry")?;
    if count > MAX_NODES {
        return Err(format!("vote count {count} exceeds the limit {MAX_NODES}"));
    }
    let mut votes: Vec<(u16, &[u8], u32, f64)> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let node = r.u16("entry vote")?;
        if node >= MAX_NODES {
            return Err(format!("node {node} exceeds the limit {}", MAX_NODES - 1));
        }
        let version = r.take(32, "entry vote")?;
        let label = r.u32("entry vote")?;
        let score = f64::from_be_bytes(r.array("entry vote")?);
        if !score.is_finite() {
            return Err(format!("score {score} is not finite"));
        }
        if let Some(&(previous, ..)) = votes.last() {
            if node <= previous {
                return Err("entry votes are not sorted by strictly increasing node".into());
            }
        }
        votes.push((node, version, label, score));
    }
    let label = r.u32("entry")?;
    let threshold = r.u16("entry")?;
    let reached = match r.u8("entry")? {
        0 => false,
        1 => true,
        other => return Err(format!("reached byte {other} is not 0 or 1")),
    };
    r.end("entry")?;
    Ok(Entry {
        request,
        client,
        request_id,
        votes,
        label,
        threshold,
        reached,
    })
}

/// Parses a whole REPLY frame (`body || node signature`), refusing anything the Python
/// decoder refuses: other versions or kinds, fields past their limits, a listed request id
/// that is not its item's, a bad entry, trailing bytes.
pub fn read_reply(frame: &[u8]) -> Result<Reply<'_>, String> {
    if frame.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message is {} bytes, limit {MAX_MESSAGE_BYTES}",
            frame.len()
        ));
    }
    let mut r = Reader { data: frame, at: 0 };
    r.start(
        VERSION,
        REPLY_KIND,
        "header",
        "unknown version",
        "not a REPLY",
    )?;
    let group_id = r.take(32, "group id")?;
    let node = r.node("node")?;
    let view = r.u64("view")?;
    let seq = r.u64("seq")?;
    let tree_size = r.u32("size")?;
    let root = r.take(32, "root")?;
    let count = r.u16("item count")? as usize;
    if count > MAX_REPLY_ITEMS {
        return Err(format!(
            "item count {count} exceeds the limit {MAX_REPLY_ITEMS}"
        ));
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(r.u64("request ids")?);
    }
    let signature_count = r.u16("signature count")?;
    if signature_count > MAX_NODES {
        return Err(format!(
            "signature count {signature_count} exceeds the limit {MAX_NODES}"
        ));
    }
    let mut signatures = Vec::with_capacity(signature_count as usize);
    for _ in 0..signature_count {
        let signer = r.node("node")?;
        signatures.push((signer, r.take(64, "commit signature")?));
    }
    let mut items = Vec::with_capacity(count);
    for request_id in ids {
        let leaf_index = r.u32("reply item")?;
        let size = r.u32("reply item")? as usize;
        if size > MAX_MESSAGE_BYTES {
            return Err(format!("entry is {size} bytes, limit {MAX_MESSAGE_BYTES}"));
        }
        let leaf = r.take(size, "entry")?;
        let entry = read_entry(leaf)?;
        let hashes = r.u8("proof count")? as usize;
        if hashes > MAX_PROOF_HASHES {
            return Err(format!(
                "proof count {hashes} exceeds the limit {MAX_PROOF_HASHES}"
            ));
        }
        let proof = r
            .take(hashes * 32, "proof hashes")?
            .chunks_exact(32)
            .map(|h| h.try_into().expect("32-byte chunks"))
            .collect();
        if entry.request_id != request_id {
            return Err(format!(
                "reply lists request {request_id} but carries {}",
                entry.request_id
            ));
        }
        items.push(Item {
            leaf_index,
            entry,
            leaf,
            proof,
        });
    }
    let signature = r.take(64, "signature")?;
    r.end("REPLY")?;
    Ok(Reply {
        group_id,
        node,
        view,
        seq,
        tree_size,
        root,
        signatures,
        items,
        signature,
    })
}

/// Why `entry` is not a well-formed agreement of a group of `nodes` with this `quorum` and
/// `threshold`, or None (`dropbear.agreement.check_entry`, with its messages).
pub fn entry_problem(
    entry: &Entry<'_>,
    quorum: usize,
    threshold: u16,
    nodes: u16,
) -> Option<String> {
    // Read strictly: nodes increase, so they are distinct.
    if entry.votes.iter().any(|v| v.0 >= nodes) {
        let named: Vec<u16> = entry.votes.iter().map(|v| v.0).collect();
        return Some(format!(
            "entry votes name nodes {named:?}, not distinct nodes below {nodes}"
        ));
    }
    if entry.votes.len() < quorum {
        return Some(format!(
            "entry has {} votes, needs {quorum}",
            entry.votes.len()
        ));
    }
    if entry.threshold != threshold {
        return Some(format!(
            "entry threshold {}, the group's is {threshold}",
            entry.threshold
        ));
    }
    let (label, count) = agreed(entry.votes.iter().map(|v| v.2)).unwrap_or((0, 0));
    let reached = count >= threshold as usize;
    if (entry.label, entry.reached) != (label, reached) {
        let py = |b: bool| if b { "True" } else { "False" };
        return Some(format!(
            "entry says label {} reached={}, votes give {label} reached={}",
            entry.label,
            py(entry.reached),
            py(reached)
        ));
    }
    None
}

/// Why item `item` of `reply` is no certificate of the group `group_id` (steps 1-3 of the
/// verification: the group, the entry's agreement, its inclusion under the root), or None.
pub fn item_problem(
    reply: &Reply<'_>,
    item: &Item<'_>,
    group_id: &[u8],
    quorum: usize,
    threshold: u16,
    nodes: u16,
) -> Option<String> {
    if reply.group_id != group_id {
        return Some(format!(
            "group id {} is not the manifest's {}",
            crate::error::hex(reply.group_id),
            crate::error::hex(group_id)
        ));
    }
    if let Some(problem) = entry_problem(&item.entry, quorum, threshold, nodes) {
        return Some(problem);
    }
    if item.leaf_index >= reply.tree_size {
        return Some(format!(
            "leaf index {} outside tree of {}",
            item.leaf_index, reply.tree_size
        ));
    }
    let root: Hash = reply.root.try_into().expect("a 32-byte root");
    let included = merkle::verify_inclusion(
        item.leaf,
        item.leaf_index as u64,
        reply.tree_size as u64,
        &item.proof,
        &root,
    );
    if !included {
        return Some("inclusion proof does not lead to the root".into());
    }
    None
}

/// The body of the REPLY that carries the certificates of leaves `indices` of the committed
/// batch whose tree is `levels` over `leaves` (the entries' canonical bytes): the bytes
/// `dropbear.wire.Reply` writes for it, written here without an object per field (a node
/// sends each client one per committed batch, a certificate per request). The request ids
/// come from the entries themselves; a leaf that is not a request entry is refused.
#[allow(clippy::too_many_arguments)]
pub fn write_reply_body<L: AsRef<[u8]>>(
    group_id: &[u8],
    node: u16,
    view: u64,
    seq: u64,
    signatures: &[(u16, &[u8])],
    leaves: &[L],
    levels: &Levels,
    indices: &[u32],
) -> Result<Vec<u8>, String> {
    if group_id.len() != GROUP_ID_BYTES {
        return Err(format!("group id is {} bytes, expected 32", group_id.len()));
    }
    if indices.is_empty() || indices.len() > MAX_REPLY_ITEMS {
        return Err(format!("{} certificates in one reply", indices.len()));
    }
    if signatures.len() > MAX_NODES as usize {
        return Err(format!("{} commit signatures", signatures.len()));
    }
    if leaves.len() != levels.size() {
        return Err(format!(
            "{} leaves for a tree of {}",
            leaves.len(),
            levels.size()
        ));
    }
    let tree_size =
        u32::try_from(levels.size()).map_err(|_| format!("tree of {} leaves", levels.size()))?;
    let mut entries = Vec::with_capacity(indices.len());
    let mut size = 2 + GROUP_ID_BYTES + 2 + 8 + 8 + 4 + 32 + 2 + 8 * indices.len() + 2;
    size += signatures.len() * (2 + SIGNATURE_BYTES);
    for &index in indices {
        let leaf = leaves
            .get(index as usize)
            .ok_or_else(|| format!("leaf {index} of a tree of {tree_size}"))?
            .as_ref();
        if leaf.len() < ENTRY_HEAD_LEN || leaf[0] != ENTRY_VERSION || leaf[1] != ENTRY_KIND {
            return Err(format!("leaf {index} is not a request entry"));
        }
        let entry_len =
            u32::try_from(leaf.len()).map_err(|_| format!("entry of {} bytes", leaf.len()))?;
        size += 8 + leaf.len() + 1 + 32 * levels.height();
        entries.push((index, entry_len, leaf));
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&[VERSION, REPLY_KIND]);
    out.extend_from_slice(group_id);
    out.extend_from_slice(&node.to_be_bytes());
    out.extend_from_slice(&view.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&tree_size.to_be_bytes());
    out.extend_from_slice(&levels.root());
    out.extend_from_slice(&(indices.len() as u16).to_be_bytes());
    for (_, _, leaf) in &entries {
        out.extend_from_slice(&leaf[66..74]); // the request id, as the entry holds it
    }
    out.extend_from_slice(&(signatures.len() as u16).to_be_bytes());
    for &(signer, signature) in signatures {
        if signature.len() != SIGNATURE_BYTES {
            return Err(format!(
                "commit signature is {} bytes, expected 64",
                signature.len()
            ));
        }
        out.extend_from_slice(&signer.to_be_bytes());
        out.extend_from_slice(signature);
    }
    for (index, entry_len, leaf) in entries {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&entry_len.to_be_bytes());
        out.extend_from_slice(leaf);
        let count_at = out.len();
        out.push(0);
        let count = levels.each_proof_hash(index as usize, |h| out.extend_from_slice(h));
        if count > MAX_PROOF_HASHES {
            return Err(format!("{count} proof hashes"));
        }
        out[count_at] = count as u8;
    }
    if out.len() + SIGNATURE_BYTES > MAX_MESSAGE_BYTES {
        return Err(format!("reply of {} bytes", out.len() + SIGNATURE_BYTES));
    }
    Ok(out)
}

/// What a node signs for a REPLY of body `body`: the context, then the body's SHA-256.
pub fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(SIGNING_CONTEXT.len() + 32);
    signed.extend_from_slice(SIGNING_CONTEXT);
    signed.extend_from_slice(&merkle::sha256(body));
    signed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::encode_entry;

    fn leaf(votes: &[(u16, &[u8; 32], u32, f64)], label: u32, reached: bool) -> Vec<u8> {
        encode_entry(&[1; 32], &[2; 32], 9, votes, label, 3, reached)
    }

    #[test]
    fn an_entry_reads_back_and_its_agreement_is_checked() {
        let v = [7u8; 32];
        let bytes = leaf(
            &[(0, &v, 4, 0.5), (1, &v, 4, 0.5), (3, &v, 5, 0.25)],
            4,
            false,
        );
        let entry = read_entry(&bytes).unwrap();
        assert_eq!(
            (entry.request_id, entry.label, entry.reached),
            (9, 4, false)
        );
        assert_eq!(
            entry.votes.iter().map(|v| v.0).collect::<Vec<_>>(),
            vec![0, 1, 3]
        );
        assert_eq!(entry_problem(&entry, 3, 3, 4), None);
        assert_eq!(
            entry_problem(&entry, 3, 3, 3),
            Some("entry votes name nodes [0, 1, 3], not distinct nodes below 3".into())
        );
        assert_eq!(
            entry_problem(&entry, 4, 3, 4),
            Some("entry has 3 votes, needs 4".into())
        );
        let lying_leaf = leaf(
            &[(0, &v, 4, 0.5), (1, &v, 4, 0.5), (3, &v, 5, 0.25)],
            5,
            false,
        );
        let lying = read_entry(&lying_leaf).unwrap();
        assert_eq!(
            entry_problem(&lying, 3, 3, 4),
            Some("entry says label 5 reached=False, votes give 4 reached=False".into())
        );
    }

    #[test]
    fn an_entry_in_any_other_encoding_is_refused() {
        let v = [7u8; 32];
        let unsorted = leaf(&[(1, &v, 4, 0.5), (0, &v, 4, 0.5)], 4, false);
        assert!(read_entry(&unsorted)
            .unwrap_err()
            .contains("strictly increasing"));
        let mut reached = leaf(&[(0, &v, 4, 0.5)], 4, false);
        *reached.last_mut().unwrap() = 2;
        assert!(read_entry(&reached).unwrap_err().contains("reached byte 2"));
        let nan = leaf(&[(0, &v, 4, f64::NAN)], 4, false);
        assert!(read_entry(&nan).unwrap_err().contains("not finite"));
        let mut long = leaf(&[(0, &v, 4, 0.5)], 4, false);
        long.push(0);
        assert!(read_entry(&long).unwrap_err().contains("trailing"));
        let short = leaf(&[(0, &v, 4, 0.5)], 4, false);
        assert!(read_entry(&short[..short.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        assert!(read_reply(&[1, 0x0c]).unwrap_err().contains("truncated"));
        assert!(read_reply(&[1, 0x0b]).unwrap_err().contains("not a REPLY"));
    }

    #[test]
    fn a_written_reply_reads_back_with_every_proof() {
        let v = [7u8; 32];
        let leaves: Vec<Vec<u8>> = (0..13u64)
            .map(|i| {
                encode_entry(
                    &[i as u8; 32],
                    &[2; 32],
                    100 + i,
                    &[(0, &v, 4, 0.5), (1, &v, 4, 0.5), (2, &v, 4, 0.5)],
                    4,
                    3,
                    true,
                )
            })
            .collect();
        let levels = Levels::new(&leaves);
        let signature = [9u8; 64];
        let signatures = [(0u16, &signature[..]), (2, &signature[..])];
        let indices = [12u32, 0, 5];
        let mut frame =
            write_reply_body(&[3; 32], 1, 4, 77, &signatures, &leaves, &levels, &indices).unwrap();
        frame.extend_from_slice(&[8; 64]);
        let reply = read_reply(&frame).unwrap();
        assert_eq!((reply.node, reply.view, reply.seq), (1, 4, 77));
        assert_eq!((reply.tree_size, reply.root), (13, &levels.root()[..]));
        assert_eq!(reply.signatures.len(), 2);
        for (item, &index) in reply.items.iter().zip(&indices) {
            assert_eq!(item.leaf_index, index);
            assert_eq!(item.leaf, &leaves[index as usize][..]);
            assert_eq!(item.entry.request_id, 100 + index as u64);
            assert_eq!(item.proof, levels.proof(index as u64).unwrap());
            assert_eq!(item_problem(&reply, item, &[3; 32], 3, 3, 4), None);
        }
        let write = |group: &[u8], indices: &[u32], leaves: &[Vec<u8>]| {
            write_reply_body(group, 1, 4, 77, &signatures, leaves, &levels, indices).unwrap_err()
        };
        assert!(write(&[3; 31], &indices, &leaves).contains("group id is 31 bytes"));
        assert!(write(&[3; 32], &[], &leaves).contains("0 certificates"));
        assert!(write(&[3; 32], &[13], &leaves).contains("leaf 13 of a tree of 13"));
        assert!(write(&[3; 32], &[0], &leaves[..12]).contains("12 leaves for a tree of 13"));
        let mut other = leaves.clone();
        other[0][1] = 0x0c;
        assert!(write(&[3; 32], &[0], &other).contains("not a request entry"));
    }
}
