//! A batch's request entries, derived from its requests and the VOTES it carries.
//!
//! Every node runs this for every batch (the primary when it proposes, each backup when it
//! checks a PRE-PREPARE), so it is the per-request path of ordering. The rules are those of
//! `dropbear.consensus.state.derive` (docs/protocol.md): one group; distinct requests; at
//! most one vote per node and request (identical repeats collapse, the first is kept); at
//! least `quorum` votes per request; the agreed label is the plurality of the votes, ties to
//! the lowest label, and it is `reached` when at least `threshold` votes give it.
//!
//! The leaf encoding is the entry's canonical bytes (docs/certificates.md):
//! `01 | 21 | request digest | client key | request id u64 | vote count u16 |
//! (node u16 | model version | label u32 | score f64)* | label u32 | threshold u16 |
//! reached u8`, big-endian, votes by increasing node.

use std::collections::{HashMap, HashSet};

use thiserror::Error;

use crate::error::hex;

/// A SHA-256 digest, a client key or a model version: 32 bytes.
pub type Bytes32 = [u8; 32];

/// The wire format version byte and the REQUEST-ENTRY kind byte that start each leaf.
pub const ENTRY_VERSION: u8 = 0x01;
pub const ENTRY_KIND: u8 = 0x21;

/// One node's VOTES message: its votes `(request digest, label, score)`, all of one model
/// version.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeVotes {
    /// Whether the message names the batch's group.
    pub in_group: bool,
    pub node: u32,
    pub version: Bytes32,
    pub votes: Vec<(Bytes32, u32, f64)>,
}

/// An ordered request, as the batch carries it (its header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedRequest {
    pub digest: Bytes32,
    /// Whether the request names the batch's group.
    pub in_group: bool,
    pub client: Bytes32,
    pub request_id: u64,
}

/// A batch's derived entries: for entry `i`, `entries[i]` and its votes
/// `votes[entries[i].votes.clone()]`, by increasing node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Derived {
    pub entries: Vec<Entry>,
    pub votes: Vec<EntryVote>,
}

/// One derived entry; its leaf is [`Derived::write_leaf`]'s.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Where its votes are in [`Derived::votes`].
    pub votes: std::ops::Range<usize>,
    pub label: u32,
    pub reached: bool,
}

/// A vote of an entry, as `(message index, vote index)` into the `NodeVotes` slice (so
/// that a caller can reuse what it already holds), with its node, label and score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryVote {
    pub message: usize,
    pub vote: usize,
    pub node: u16,
    pub label: u32,
    pub score: f64,
}

/// Why a batch has no entries: the same wording as the Python rules' `BatchError`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchRule {
    #[error("VOTES of node {0} is not of this group")]
    VotesNotOfGroup(u32),
    #[error("node {node} gives two votes for {request}")]
    TwoVotes { node: u32, request: String },
    #[error("request {0} is of another group")]
    RequestNotOfGroup(String),
    #[error("request {0} ordered twice in one batch")]
    OrderedTwice(String),
    #[error("request {request} has {votes} votes")]
    TooFewVotes { request: String, votes: usize },
}

/// The agreed label of `labels` (plurality, ties to the lowest) and how many give it.
pub fn agreed(labels: impl IntoIterator<Item = u32>) -> Option<(u32, usize)> {
    let mut counts: Vec<(u32, usize)> = Vec::new();
    for label in labels {
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, c)) => *c += 1,
            None => counts.push((label, 1)),
        }
    }
    counts
        .into_iter()
        .max_by(|(la, ca), (lb, cb)| ca.cmp(cb).then(lb.cmp(la)))
}

/// The length of the leaf of an entry of `votes` votes.
pub fn entry_len(votes: usize) -> usize {
    ENTRY_HEAD_LEN + votes * ENTRY_VOTE_LEN + ENTRY_TAIL_LEN
}

/// An entry up to its votes: version, kind, request digest, client key, request id, vote
/// count.
pub const ENTRY_HEAD_LEN: usize = 2 + 32 + 32 + 8 + 2;
const ENTRY_VOTE_LEN: usize = 2 + 32 + 4 + 8;
const ENTRY_TAIL_LEN: usize = 4 + 2 + 1;

/// Writes the canonical leaf bytes of an entry into `out` ([`entry_len`] bytes); `votes`
/// are `(node, model version, label, score)` by increasing node.
#[allow(clippy::too_many_arguments)]
pub fn write_entry<'v>(
    out: &mut [u8],
    request: &Bytes32,
    client: &Bytes32,
    request_id: u64,
    votes: impl ExactSizeIterator<Item = (u16, &'v Bytes32, u32, f64)>,
    label: u32,
    threshold: u16,
    reached: bool,
) {
    assert_eq!(
        out.len(),
        entry_len(votes.len()),
        "leaf buffer of the wrong length"
    );
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&[ENTRY_VERSION, ENTRY_KIND]);
    put(request);
    put(client);
    put(&request_id.to_be_bytes());
    put(&(votes.len() as u16).to_be_bytes());
    for (node, version, vote_label, score) in votes {
        put(&node.to_be_bytes());
        put(version);
        put(&vote_label.to_be_bytes());
        put(&score.to_be_bytes());
    }
    put(&label.to_be_bytes());
    put(&threshold.to_be_bytes());
    put(&[reached as u8]);
}

/// [`write_entry`] into a new vector.
pub fn encode_entry(
    request: &Bytes32,
    client: &Bytes32,
    request_id: u64,
    votes: &[(u16, &Bytes32, u32, f64)],
    label: u32,
    threshold: u16,
    reached: bool,
) -> Vec<u8> {
    let mut leaf = vec![0; entry_len(votes.len())];
    let votes = votes.iter().map(|&(n, version, l, s)| (n, version, l, s));
    write_entry(
        &mut leaf, request, client, request_id, votes, label, threshold, reached,
    );
    leaf
}

/// The entries of a batch of `requests` (in order) from the votes of `messages`.
///
/// `nodes` is the group size (a message of a node at or past it is refused), `quorum` the
/// fewest votes an entry may have (at least 1: a quorum of 0 is treated as 1),
/// `threshold` the agreement threshold. Signatures are the
/// caller's to check.
pub fn derive(
    nodes: u32,
    quorum: usize,
    threshold: u16,
    messages: &[NodeVotes],
    requests: &[OrderedRequest],
) -> Result<Derived, BatchRule> {
    // Each request's first vote, and for each vote the next of its request: one list per
    // request without a vector each. A node's repeat is checked against its first vote.
    const END: usize = usize::MAX;
    let mut first: HashMap<&Bytes32, usize> = HashMap::with_capacity(requests.len());
    let mut chain: Vec<(EntryVote, usize)> = Vec::new();
    for (m, message) in messages.iter().enumerate() {
        let node = message.node;
        if !message.in_group || node >= nodes {
            return Err(BatchRule::VotesNotOfGroup(node));
        }
        for (v, (request, label, score)) in message.votes.iter().enumerate() {
            let vote = EntryVote {
                message: m,
                vote: v,
                node: node as u16,
                label: *label,
                score: *score,
            };
            let head = first.entry(request).or_insert(END);
            let mut at = *head;
            let mut repeat = false;
            while at != END {
                let (known, next) = chain[at];
                if known.node == vote.node {
                    if messages[known.message].version != message.version
                        || known.label != vote.label
                        || known.score != vote.score
                    {
                        return Err(BatchRule::TwoVotes {
                            node,
                            request: hex(request),
                        });
                    }
                    repeat = true;
                    break;
                }
                at = next;
            }
            if !repeat {
                chain.push((vote, *head));
                *head = chain.len() - 1;
            }
        }
    }
    let mut seen: HashSet<&Bytes32> = HashSet::with_capacity(requests.len());
    let mut derived = Derived {
        entries: Vec::with_capacity(requests.len()),
        votes: Vec::with_capacity(requests.len() * nodes as usize),
    };
    for request in requests {
        if !request.in_group {
            return Err(BatchRule::RequestNotOfGroup(hex(&request.digest)));
        }
        if !seen.insert(&request.digest) {
            return Err(BatchRule::OrderedTwice(hex(&request.digest)));
        }
        let start = derived.votes.len();
        let mut at = first.get(&request.digest).copied().unwrap_or(END);
        while at != END {
            derived.votes.push(chain[at].0);
            at = chain[at].1;
        }
        let cast = &mut derived.votes[start..];
        if cast.len() < quorum.max(1) {
            return Err(BatchRule::TooFewVotes {
                request: hex(&request.digest),
                votes: cast.len(),
            });
        }
        cast.sort_unstable_by_key(|vote| vote.node);
        let (label, count) =
            agreed(cast.iter().map(|vote| vote.label)).expect("a quorum is at least one vote");
        derived.entries.push(Entry {
            votes: start..derived.votes.len(),
            label,
            reached: count >= threshold as usize,
        });
    }
    Ok(derived)
}

impl Derived {
    /// Writes the leaf of entry `i` (ordering `request`, with `threshold`) into `out`, whose
    /// length is `entry_len(self.entries[i].votes.len())`.
    pub fn write_leaf(
        &self,
        i: usize,
        out: &mut [u8],
        request: &OrderedRequest,
        messages: &[NodeVotes],
        threshold: u16,
    ) {
        let entry = &self.entries[i];
        let votes = self.votes[entry.votes.clone()]
            .iter()
            .map(|v| (v.node, &messages[v.message].version, v.label, v.score));
        write_entry(
            out,
            &request.digest,
            &request.client,
            request.request_id,
            votes,
            entry.label,
            threshold,
            entry.reached,
        );
    }

    /// The leaf of entry `i` in a new vector.
    pub fn leaf(
        &self,
        i: usize,
        request: &OrderedRequest,
        messages: &[NodeVotes],
        threshold: u16,
    ) -> Vec<u8> {
        let mut leaf = vec![0; entry_len(self.entries[i].votes.len())];
        self.write_leaf(i, &mut leaf, request, messages, threshold);
        leaf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(byte: u8) -> Bytes32 {
        [byte; 32]
    }

    fn message(node: u32, votes: &[(u8, u32)]) -> NodeVotes {
        NodeVotes {
            in_group: true,
            node,
            version: d(100 + node as u8),
            votes: votes.iter().map(|&(r, l)| (d(r), l, 0.5)).collect(),
        }
    }

    /// Entry `i`'s votes as (message, vote) indices.
    fn at(derived: &Derived, i: usize) -> Vec<(usize, usize)> {
        derived.votes[derived.entries[i].votes.clone()]
            .iter()
            .map(|v| (v.message, v.vote))
            .collect()
    }

    fn request(r: u8) -> OrderedRequest {
        OrderedRequest {
            digest: d(r),
            in_group: true,
            client: d(200),
            request_id: r as u64,
        }
    }

    #[test]
    fn plurality_with_ties_to_the_lowest_label() {
        assert_eq!(agreed([3, 3, 3, 3]), Some((3, 4)));
        assert_eq!(agreed([5, 2, 5, 2]), Some((2, 2)));
        assert_eq!(agreed([7, 1, 7]), Some((7, 2)));
        assert_eq!(agreed([9, 8, 7]), Some((7, 1)));
        assert_eq!(agreed([]), None);
    }

    #[test]
    fn an_entry_is_encoded_byte_by_byte() {
        let leaf = encode_entry(&d(1), &d(2), 0x0102, &[(3, &d(4), 5, 1.0)], 5, 3, true);
        let mut expected = vec![0x01, 0x21];
        expected.extend([1u8; 32]);
        expected.extend([2u8; 32]);
        expected.extend([0, 0, 0, 0, 0, 0, 0x01, 0x02, 0, 1, 0, 3]);
        expected.extend([4u8; 32]);
        expected.extend([0, 0, 0, 5, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
        expected.extend([0, 0, 0, 5, 0, 3, 1]);
        assert_eq!(leaf, expected);
    }

    #[test]
    fn votes_are_sorted_by_node_and_the_plurality_agreed() {
        let messages = vec![
            message(2, &[(1, 4)]),
            message(0, &[(1, 4), (2, 1)]),
            message(3, &[(1, 6)]),
            message(1, &[(1, 4)]),
        ];
        let derived = derive(4, 3, 3, &messages, &[request(1)]).unwrap();
        assert_eq!(derived.entries.len(), 1);
        assert_eq!(at(&derived, 0), vec![(1, 0), (3, 0), (0, 0), (2, 0)]);
        let entry = &derived.entries[0];
        assert_eq!((entry.label, entry.reached), (4, true));
        let leaf = derived.leaf(0, &request(1), &messages, 3);
        let nodes: Vec<u16> = (0..4)
            .map(|i| u16::from_be_bytes([leaf[76 + 46 * i], leaf[77 + 46 * i]]))
            .collect();
        assert_eq!(nodes, vec![0, 1, 2, 3]);
        let versions: Vec<u8> = (0..4).map(|i| leaf[78 + 46 * i]).collect();
        assert_eq!(versions, vec![100, 101, 102, 103]);
    }

    #[test]
    fn identical_repeats_collapse_and_different_ones_are_refused() {
        let mut messages = vec![
            message(0, &[(1, 4)]),
            message(1, &[(1, 4)]),
            message(2, &[(1, 4)]),
            message(0, &[(1, 4)]),
        ];
        let derived = derive(4, 3, 3, &messages, &[request(1)]).unwrap();
        assert_eq!(at(&derived, 0), vec![(0, 0), (1, 0), (2, 0)]);
        messages[3].votes[0].1 = 5;
        assert_eq!(
            derive(4, 3, 3, &messages, &[request(1)]),
            Err(BatchRule::TwoVotes {
                node: 0,
                request: hex(&d(1))
            })
        );
        messages[3].votes[0].1 = 4;
        messages[3].version = d(9);
        assert!(matches!(
            derive(4, 3, 3, &messages, &[request(1)]),
            Err(BatchRule::TwoVotes { node: 0, .. })
        ));
    }

    #[test]
    fn each_rule_is_named() {
        let messages: Vec<NodeVotes> = (0..3).map(|n| message(n, &[(1, 4), (2, 4)])).collect();
        let mut foreign = messages.clone();
        foreign[1].in_group = false;
        assert_eq!(
            derive(4, 3, 3, &foreign, &[request(1)]),
            Err(BatchRule::VotesNotOfGroup(1))
        );
        assert_eq!(
            derive(2, 2, 2, &messages, &[request(1)]),
            Err(BatchRule::VotesNotOfGroup(2))
        );
        let mut other = request(1);
        other.in_group = false;
        assert_eq!(
            derive(4, 3, 3, &messages, &[other]),
            Err(BatchRule::RequestNotOfGroup(hex(&d(1))))
        );
        assert_eq!(
            derive(4, 3, 3, &messages, &[request(1), request(2), request(1)]),
            Err(BatchRule::OrderedTwice(hex(&d(1))))
        );
        assert_eq!(
            derive(4, 3, 3, &messages[..2], &[request(2)]),
            Err(BatchRule::TooFewVotes {
                request: hex(&d(2)),
                votes: 2
            })
        );
        assert_eq!(
            derive(4, 3, 3, &messages, &[request(7)]),
            Err(BatchRule::TooFewVotes {
                request: hex(&d(7)),
                votes: 0
            })
        );
        assert_eq!(derive(4, 3, 3, &messages, &[]).unwrap(), Derived::default());
    }

    #[test]
    fn a_split_vote_below_threshold_is_not_reached() {
        let messages = vec![
            message(0, &[(1, 2)]),
            message(1, &[(1, 1)]),
            message(2, &[(1, 2)]),
            message(3, &[(1, 1)]),
        ];
        let derived = derive(4, 3, 3, &messages, &[request(1)]).unwrap();
        assert_eq!(
            (derived.entries[0].label, derived.entries[0].reached),
            (1, false)
        );
        let leaf = derived.leaf(0, &request(1), &messages, 3);
        let tail = &leaf[leaf.len() - 7..];
        assert_eq!(tail, &[0, 0, 0, 1, 0, 3, 0]);
    }
}
