//! Quorum tracking: distinct nodes per `(view, seq, digest)`, each quorum reported once,
//! equivocation kept as evidence, bounded by `max_slots` and `MAX_EVIDENCE`.

use std::collections::{BTreeMap, HashMap};

use crate::error::CoreError;
use crate::merkle::Hash;

/// Evidence records kept until taken; past this, new ones are counted as dropped.
pub const MAX_EVIDENCE: usize = 1024;

/// One vote: node `node` says `digest` for `(view, seq)`; `signed` is the node's signed
/// message, kept only to serve as evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub view: u64,
    pub seq: u64,
    pub digest: Hash,
    pub node: u32,
    pub signed: Vec<u8>,
}

/// Two votes by one node for one `(view, seq)` with different digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    pub first: Vote,
    pub second: Vote,
}

/// A quorum newly reached: `(view, seq, digest)`.
pub type Quorum = (u64, u64, Hash);

#[derive(Default)]
struct Slot {
    /// The first vote of each node in this `(view, seq)`.
    by_node: HashMap<u32, Vote>,
    /// Distinct voters per digest, and whether its quorum was reported.
    tallies: HashMap<Hash, (u32, bool)>,
}

pub struct QuorumTracker {
    nodes: u32,
    threshold: u32,
    max_slots: usize,
    /// Keyed by `(seq, view)` so that forgetting by sequence number is a range split.
    slots: BTreeMap<(u64, u64), Slot>,
    /// Votes at or below this sequence number are ignored (forgotten).
    low_water_mark: Option<u64>,
    evidence: Vec<Equivocation>,
    evidence_dropped: u64,
}

impl QuorumTracker {
    pub fn new(nodes: u32, threshold: u32, max_slots: usize) -> Result<Self, CoreError> {
        if threshold == 0 || threshold > nodes {
            return Err(CoreError::BadThreshold { threshold, nodes });
        }
        Ok(Self {
            nodes,
            threshold,
            max_slots,
            slots: BTreeMap::new(),
            low_water_mark: None,
            evidence: Vec::new(),
            evidence_dropped: 0,
        })
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Adds votes in order; returns the quorums they complete, each exactly once. On an
    /// error, the votes before the failing one are counted and the rest are not.
    pub fn add_votes(&mut self, votes: Vec<Vote>) -> Result<Vec<Quorum>, CoreError> {
        let mut reached = Vec::new();
        for vote in votes {
            if let Some(q) = self.add_vote(vote)? {
                reached.push(q);
            }
        }
        Ok(reached)
    }

    pub fn add_vote(&mut self, vote: Vote) -> Result<Option<Quorum>, CoreError> {
        if vote.node >= self.nodes {
            return Err(CoreError::NodeOutOfRange {
                node: vote.node,
                nodes: self.nodes,
            });
        }
        if self.low_water_mark.is_some_and(|low| vote.seq <= low) {
            return Ok(None);
        }
        let key = (vote.seq, vote.view);
        if !self.slots.contains_key(&key) && self.slots.len() >= self.max_slots {
            return Err(CoreError::TrackerFull {
                limit: self.max_slots,
            });
        }
        let slot = self.slots.entry(key).or_default();
        if let Some(first) = slot.by_node.get(&vote.node) {
            if first.digest != vote.digest {
                if self.evidence.len() < MAX_EVIDENCE {
                    self.evidence.push(Equivocation {
                        first: first.clone(),
                        second: vote,
                    });
                } else {
                    self.evidence_dropped += 1;
                }
            }
            return Ok(None);
        }
        let (view, seq, digest) = (vote.view, vote.seq, vote.digest);
        slot.by_node.insert(vote.node, vote);
        let tally = slot.tallies.entry(digest).or_insert((0, false));
        tally.0 += 1;
        if tally.0 >= self.threshold && !tally.1 {
            tally.1 = true;
            return Ok(Some((view, seq, digest)));
        }
        Ok(None)
    }

    /// Distinct nodes that voted `digest` for `(view, seq)`.
    pub fn count(&self, view: u64, seq: u64, digest: &Hash) -> u32 {
        self.slots
            .get(&(seq, view))
            .and_then(|s| s.tallies.get(digest))
            .map_or(0, |t| t.0)
    }

    /// Forgets every slot at or below `seq`, and ignores later votes for them.
    /// Returns how many slots were dropped.
    pub fn forget_up_to(&mut self, seq: u64) -> usize {
        let keep = match seq.checked_add(1) {
            Some(next) => self.slots.split_off(&(next, 0)),
            None => BTreeMap::new(),
        };
        let dropped = self.slots.len();
        self.slots = keep;
        self.low_water_mark = Some(self.low_water_mark.map_or(seq, |low| low.max(seq)));
        dropped
    }

    /// Takes the equivocation evidence gathered so far.
    pub fn take_evidence(&mut self) -> Vec<Equivocation> {
        std::mem::take(&mut self.evidence)
    }

    pub fn evidence_dropped(&self) -> u64 {
        self.evidence_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(view: u64, seq: u64, d: u8, node: u32) -> Vote {
        Vote {
            view,
            seq,
            digest: [d; 32],
            node,
            signed: vec![d, node as u8],
        }
    }

    #[test]
    fn quorum_is_reported_once() {
        let mut t = QuorumTracker::new(4, 3, 16).unwrap();
        let votes = vec![vote(0, 1, 7, 0), vote(0, 1, 7, 1), vote(0, 1, 7, 1)];
        assert!(t.add_votes(votes).unwrap().is_empty());
        assert_eq!(t.count(0, 1, &[7; 32]), 2);
        assert_eq!(
            t.add_votes(vec![vote(0, 1, 7, 2)]).unwrap(),
            vec![(0, 1, [7; 32])]
        );
        assert!(t.add_votes(vec![vote(0, 1, 7, 3)]).unwrap().is_empty());
        assert_eq!(t.count(0, 1, &[7; 32]), 4);
    }

    #[test]
    fn equivocation_is_kept_and_not_counted() {
        let mut t = QuorumTracker::new(4, 3, 16).unwrap();
        t.add_votes(vec![vote(0, 1, 7, 0), vote(0, 1, 8, 0)])
            .unwrap();
        assert_eq!(t.count(0, 1, &[8; 32]), 0);
        let ev = t.take_evidence();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].first.digest, [7; 32]);
        assert_eq!(ev[0].second.signed, vec![8, 0]);
        assert!(t.take_evidence().is_empty());
    }

    #[test]
    fn forgetting_and_limits() {
        let mut t = QuorumTracker::new(4, 3, 2).unwrap();
        t.add_votes(vec![vote(0, 1, 7, 0), vote(1, 2, 7, 0)])
            .unwrap();
        assert_eq!(
            t.add_vote(vote(0, 3, 7, 0)),
            Err(CoreError::TrackerFull { limit: 2 })
        );
        assert_eq!(t.forget_up_to(1), 1);
        assert_eq!(t.slots(), 1);
        // A late vote for a forgotten sequence number creates nothing.
        assert_eq!(t.add_vote(vote(0, 1, 7, 1)), Ok(None));
        assert_eq!(t.slots(), 1);
        assert!(t.add_vote(vote(0, 3, 7, 0)).is_ok());
        assert!(matches!(
            t.add_vote(vote(0, 3, 7, 9)),
            Err(CoreError::NodeOutOfRange { node: 9, nodes: 4 })
        ));
        assert!(QuorumTracker::new(4, 5, 1).is_err());
    }
}
