//! Dropbear's consensus core.
//!
//! Pure Rust, split by concern: [`crypto`] (ed25519 keys, strict and batch verification),
//! [`merkle`] (SHA-256 and RFC 9162 Merkle trees), [`entries`] (a batch's request entries
//! from its requests and VOTES: the agreed labels and leaf bytes), [`reply`] (a REPLY read in
//! place and its certificates' entries checked, for clients; written from a batch's tree, for
//! nodes), [`request`] (a client REQUEST read at fixed offsets) and [`quorum`] (votes per
//! `(view, seq, digest)`, each quorum once, equivocation evidence). The `python` feature adds
//! the PyO3 bindings that make up the `dropbear._core` extension.

pub mod crypto;
pub mod entries;
pub mod error;
pub mod merkle;
pub mod quorum;
pub mod reply;
pub mod request;

#[cfg(feature = "python")]
mod python;

pub use error::CoreError;
