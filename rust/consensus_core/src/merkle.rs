//! SHA-256 digests and RFC 9162 (Certificate Transparency v2) Merkle trees.
//!
//! Leaf hash `SHA-256(0x00 || leaf)`, node hash `SHA-256(0x01 || left || right)`; the empty
//! tree's root is `SHA-256("")`. Proofs and their verification follow RFC 9162 §2.1.3.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::CoreError;

pub type Hash = [u8; 32];

/// Levels at least this wide are hashed on all cores (rayon); narrower ones on one.
const PARALLEL_MIN_NODES: usize = 512;

pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The parent of one or two sibling nodes (a lone last node is carried up as it is).
fn parent(pair: &[Hash]) -> Hash {
    match pair {
        [left, right] => node_hash(left, right),
        [single] => *single,
        _ => unreachable!("chunks(2) yields one or two nodes"),
    }
}

/// One level up: pairs are hashed together, an odd last node is carried up as it is.
/// Level by level this gives exactly RFC 9162's split at the largest power of two.
fn next_level(level: &[Hash]) -> Vec<Hash> {
    if level.len() >= PARALLEL_MIN_NODES {
        level.par_chunks(2).map(parent).collect()
    } else {
        level.chunks(2).map(parent).collect()
    }
}

/// SHA-256 of each message, on all cores when there are many.
pub fn sha256_many<M: AsRef<[u8]> + Sync>(messages: &[M]) -> Vec<Hash> {
    if messages.len() >= PARALLEL_MIN_NODES {
        messages.par_iter().map(|m| sha256(m.as_ref())).collect()
    } else {
        messages.iter().map(|m| sha256(m.as_ref())).collect()
    }
}

fn leaf_level<L: AsRef<[u8]> + Sync>(leaves: &[L]) -> Vec<Hash> {
    if leaves.len() >= PARALLEL_MIN_NODES {
        leaves.par_iter().map(|l| leaf_hash(l.as_ref())).collect()
    } else {
        leaves.iter().map(|l| leaf_hash(l.as_ref())).collect()
    }
}

/// The Merkle tree hash of a list of leaves (raw leaf bytes, hashed here).
pub fn root<L: AsRef<[u8]> + Sync>(leaves: &[L]) -> Hash {
    if leaves.is_empty() {
        return sha256(b"");
    }
    subtree_root(leaves)
}

/// Subtrees of at most this many leaves are hashed on one core.
const SEQUENTIAL_MAX_LEAVES: usize = 1024;

/// RFC 9162's split at the largest power of two below `n`: the two halves are hashed on
/// two cores (one hand-off per split instead of one per tree level).
fn subtree_root<L: AsRef<[u8]> + Sync>(leaves: &[L]) -> Hash {
    let n = leaves.len();
    if n <= SEQUENTIAL_MAX_LEAVES {
        let mut level: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
        while level.len() > 1 {
            level = level.chunks(2).map(parent).collect();
        }
        return level[0];
    }
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    let (left, right) = rayon::join(|| subtree_root(&leaves[..k]), || subtree_root(&leaves[k..]));
    node_hash(&left, &right)
}

/// The inclusion proof (audit path) of leaf `index`, from the leaf's sibling upwards.
pub fn inclusion_proof<L: AsRef<[u8]> + Sync>(
    leaves: &[L],
    index: u64,
) -> Result<Vec<Hash>, CoreError> {
    Levels::new(leaves).proof(index)
}

/// Every level of a tree, leaf hashes first and the root last: each inclusion proof is read
/// from it, so a batch's tree is hashed once however many of its proofs are wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels(Vec<Vec<Hash>>);

impl Levels {
    /// The tree over `leaves` (RFC 9162: a node with no sibling moves up unchanged, which
    /// gives the same tree as splitting at the largest power of two below the size).
    pub fn new<L: AsRef<[u8]> + Sync>(leaves: &[L]) -> Self {
        let mut levels = vec![leaf_level(leaves)];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let next = next_level(levels.last().expect("levels is never empty"));
            levels.push(next);
        }
        Self(levels)
    }

    /// The number of leaves.
    pub fn size(&self) -> usize {
        self.0[0].len()
    }

    /// The most hashes a proof of this tree holds.
    pub fn height(&self) -> usize {
        self.0.len() - 1
    }

    /// The tree head (`sha256("")` for no leaves).
    pub fn root(&self) -> Hash {
        match self.0.last().expect("levels is never empty").as_slice() {
            [root] => *root,
            _ => sha256(b""),
        }
    }

    /// The sibling hashes of leaf `index`, bottom up, each given to `push`; how many.
    pub fn each_proof_hash(&self, index: usize, mut push: impl FnMut(&Hash)) -> usize {
        let mut i = index;
        let mut count = 0;
        for level in &self.0[..self.0.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                push(sibling);
                count += 1;
            }
            i /= 2;
        }
        count
    }

    /// The inclusion proof of leaf `index`.
    pub fn proof(&self, index: u64) -> Result<Vec<Hash>, CoreError> {
        let size = self.size() as u64;
        if index >= size {
            return Err(CoreError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::with_capacity(self.0.len());
        self.each_proof_hash(index as usize, |h| proof.push(*h));
        Ok(proof)
    }
}

/// The inclusion proofs of every leaf, computed in one pass over the tree.
pub fn inclusion_proofs<L: AsRef<[u8]> + Sync>(leaves: &[L]) -> Vec<Vec<Hash>> {
    let levels = Levels::new(leaves);
    (0..leaves.len() as u64)
        .map(|index| levels.proof(index).expect("index is below the size"))
        .collect()
}

/// RFC 9162 §2.1.3.2: does `proof` show that `leaf` is leaf `index` of the tree of
/// `tree_size` leaves with root `root`?
pub fn verify_inclusion(
    leaf: &[u8],
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= tree_size {
        return false;
    }
    let (mut fnode, mut snode) = (index, tree_size - 1);
    let mut r = leaf_hash(leaf);
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162's recursive definition, as a reference.
    fn reference_root(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => sha256(b""),
            1 => leaf_hash(&leaves[0]),
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn large_trees_split_across_cores_match_the_reference() {
        for n in [1025usize, 1500, 2048, 3000, 4097] {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
            assert_eq!(root(&leaves), reference_root(&leaves), "n = {n}");
            let i = n as u64 - 1;
            let proof = inclusion_proof(&leaves, i).unwrap();
            assert!(verify_inclusion(
                &leaves[n - 1],
                i,
                n as u64,
                &proof,
                &root(&leaves)
            ));
        }
    }

    #[test]
    fn empty_and_single_leaf() {
        assert_eq!(
            hex::encode(root::<Vec<u8>>(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 test vector: a single empty leaf.
        assert_eq!(
            hex::encode(root(&[b"".to_vec()])),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert!(inclusion_proof(&[b"a".to_vec()], 0).unwrap().is_empty());
        assert!(verify_inclusion(b"a", 0, 1, &[], &root(&[b"a".to_vec()])));
    }

    #[test]
    fn matches_reference_and_proofs_verify() {
        for n in 1..=70usize {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
            let r = root(&leaves);
            assert_eq!(r, reference_root(&leaves), "n = {n}");
            for i in 0..n {
                let proof = inclusion_proof(&leaves, i as u64).unwrap();
                assert!(verify_inclusion(&leaves[i], i as u64, n as u64, &proof, &r));
                assert!(!verify_inclusion(
                    &leaves[i], i as u64, i as u64, &proof, &r
                ));
                if n > 1 {
                    let other = (i + 1) % n;
                    assert!(!verify_inclusion(
                        &leaves[i],
                        other as u64,
                        n as u64,
                        &proof,
                        &r
                    ));
                }
            }
        }
        for n in [1usize, 2, 3, 5, 8, 13, 64, 100] {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
            let all = inclusion_proofs(&leaves);
            for (i, proof) in all.iter().enumerate() {
                assert_eq!(
                    *proof,
                    inclusion_proof(&leaves, i as u64).unwrap(),
                    "n = {n}, i = {i}"
                );
            }
        }
        assert!(inclusion_proofs::<Vec<u8>>(&[]).is_empty());
        for n in [0usize, 1, 2, 3, 7, 64, 255, 256, 257, 1025, 1500] {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
            let levels = Levels::new(&leaves);
            assert_eq!(levels.size(), n);
            assert_eq!(levels.root(), root(&leaves), "n = {n}");
            assert!(levels.proof(n as u64).is_err());
        }
        assert!(matches!(
            inclusion_proof(&[b"a".to_vec()], 1),
            Err(CoreError::IndexOutOfRange { index: 1, size: 1 })
        ));
    }
}
