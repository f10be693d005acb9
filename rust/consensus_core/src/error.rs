//! The one error type of the core; every message names the bad value and the limit.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    #[error("{what} must be {expected} bytes, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("public key {0} is not a valid Ed25519 point")]
    InvalidPublicKey(String),
    #[error("public key {0} is weak (a small-order point) and is refused")]
    WeakPublicKey(String),
    #[error("leaf index {index} is out of range for a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("node {node} is out of range for a group of {nodes} nodes")]
    NodeOutOfRange { node: u32, nodes: u32 },
    #[error("quorum threshold {threshold} must be between 1 and the group size {nodes}")]
    BadThreshold { threshold: u32, nodes: u32 },
    #[error(
        "quorum tracker is full: {limit} (view, seq) slots tracked (max_slots); \
         forget committed sequence numbers first"
    )]
    TrackerFull { limit: usize },
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
