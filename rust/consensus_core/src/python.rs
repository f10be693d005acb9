//! PyO3 bindings: the `dropbear._core` extension. Input bytes are borrowed (`&[u8]`,
//! `PyBackedBytes`), never copied; bulk work runs with the GIL released.

use ed25519_dalek::{SigningKey as DalekSigningKey, VerifyingKey as DalekVerifyingKey};
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBool, PyBytes, PyDict, PyTuple, PyType};
use pyo3::{intern, IntoPyObjectExt};

use crate::crypto;
use crate::entries::{self, Bytes32, NodeVotes, OrderedRequest};
use crate::error::CoreError;
use crate::merkle::{self, Hash};
use crate::quorum;
use crate::reply;
use crate::request;

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        match e {
            CoreError::IndexOutOfRange { .. } | CoreError::NodeOutOfRange { .. } => {
                PyIndexError::new_err(e.to_string())
            }
            _ => PyValueError::new_err(e.to_string()),
        }
    }
}

fn hash_arg(what: &'static str, bytes: &[u8]) -> Result<Hash, CoreError> {
    bytes.try_into().map_err(|_| CoreError::Length {
        what,
        expected: 32,
        got: bytes.len(),
    })
}

/// An Ed25519 signing key (the 32-byte seed stays inside; `seed()` exports it for storage).
#[pyclass(module = "dropbear._core", frozen)]
struct SigningKey(DalekSigningKey);

#[pymethods]
impl SigningKey {
    #[staticmethod]
    fn generate() -> Self {
        Self(crypto::generate_signing_key())
    }

    #[staticmethod]
    fn from_seed(seed: &[u8]) -> PyResult<Self> {
        Ok(Self(crypto::signing_key_from_seed(seed)?))
    }

    fn seed<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.verifying_key().as_bytes())
    }

    fn sign<'py>(&self, py: Python<'py>, message: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &crypto::sign(&self.0, message))
    }

    fn __repr__(&self) -> String {
        format!(
            "SigningKey(public_key={})",
            crate::error::hex(self.0.verifying_key().as_bytes())
        )
    }
}

/// An Ed25519 public key, checked when loaded (length, valid point, not weak).
#[pyclass(module = "dropbear._core", frozen)]
struct VerifyingKey(DalekVerifyingKey);

#[pymethods]
impl VerifyingKey {
    #[new]
    fn new(public_key: &[u8]) -> PyResult<Self> {
        Ok(Self(crypto::parse_public_key(public_key)?))
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    /// Strict verification; a signature of the wrong length raises ValueError.
    fn verify(&self, message: &[u8], signature: &[u8]) -> PyResult<bool> {
        let signature = crypto::parse_signature(signature)?;
        Ok(crypto::verify(&self.0, message, &signature))
    }

    fn __repr__(&self) -> String {
        format!("VerifyingKey({})", crate::error::hex(self.0.as_bytes()))
    }
}

/// Strict verification of one signature; malformed or weak keys and bad lengths raise.
#[pyfunction]
fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> PyResult<bool> {
    let key = crypto::cached_public_key(public_key)?;
    let signature = crypto::parse_signature(signature)?;
    Ok(crypto::verify(&key, message, &signature))
}

/// Runs a batch check over `(message, signature, public_key)` triples with the GIL released.
fn check_triples(
    py: Python<'_>,
    items: &[(PyBackedBytes, PyBackedBytes, PyBackedBytes)],
    check: fn(&[crypto::BatchItem<'_>]) -> Vec<usize>,
) -> Vec<usize> {
    py.detach(|| {
        let borrowed: Vec<crypto::BatchItem<'_>> = items
            .iter()
            .map(|(m, s, k)| (&m[..], &s[..], &k[..]))
            .collect();
        check(&borrowed)
    })
}

/// Verifies many `(message, signature, public_key)` triples; returns the indices of bad ones.
#[pyfunction]
fn batch_verify(
    py: Python<'_>,
    items: Vec<(PyBackedBytes, PyBackedBytes, PyBackedBytes)>,
) -> Vec<usize> {
    check_triples(py, &items, crypto::batch_verify)
}

/// Verifies client REQUEST signatures under ZIP-215 (see `crypto::verify_requests`);
/// returns the indices of bad ones.
#[pyfunction]
fn verify_requests(
    py: Python<'_>,
    items: Vec<(PyBackedBytes, PyBackedBytes, PyBackedBytes)>,
) -> Vec<usize> {
    check_triples(py, &items, crypto::verify_requests)
}

#[pyfunction]
fn sha256<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &merkle::sha256(data))
}

/// SHA-256 of each message, in order.
#[pyfunction]
fn sha256_many<'py>(py: Python<'py>, messages: Vec<PyBackedBytes>) -> Vec<Bound<'py, PyBytes>> {
    let digests: Vec<Hash> = py.detach(|| merkle::sha256_many(&messages));
    digests.iter().map(|d| PyBytes::new(py, d)).collect()
}

#[pyfunction]
fn merkle_leaf_hash<'py>(py: Python<'py>, leaf: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &merkle::leaf_hash(leaf))
}

/// RFC 9162 Merkle tree hash of raw leaves.
#[pyfunction]
fn merkle_root<'py>(py: Python<'py>, leaves: Vec<PyBackedBytes>) -> Bound<'py, PyBytes> {
    let root = py.detach(|| merkle::root(&leaves));
    PyBytes::new(py, &root)
}

/// The inclusion proof of leaf `index` (sibling hashes, bottom up).
#[pyfunction]
fn merkle_proof<'py>(
    py: Python<'py>,
    leaves: Vec<PyBackedBytes>,
    index: u64,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let proof = py.detach(|| merkle::inclusion_proof(&leaves, index))?;
    Ok(proof.iter().map(|h| PyBytes::new(py, h)).collect())
}

/// The inclusion proofs of every leaf, computed in one pass over the tree.
#[pyfunction]
fn merkle_proofs<'py>(
    py: Python<'py>,
    leaves: Vec<PyBackedBytes>,
) -> Vec<Vec<Bound<'py, PyBytes>>> {
    let proofs = py.detach(|| merkle::inclusion_proofs(&leaves));
    proofs
        .iter()
        .map(|proof| proof.iter().map(|h| PyBytes::new(py, h)).collect())
        .collect()
}

/// A committed batch's Merkle tree over its leaves (the entries' canonical bytes), hashed
/// once: every inclusion proof is read from it, and a node's REPLYs are written from it.
#[pyclass(module = "dropbear._core", frozen)]
struct MerkleTree {
    leaves: Vec<PyBackedBytes>,
    levels: merkle::Levels,
}

#[pymethods]
impl MerkleTree {
    #[new]
    fn new(py: Python<'_>, leaves: Vec<PyBackedBytes>) -> Self {
        let levels = py.detach(|| merkle::Levels::new(&leaves));
        Self { leaves, levels }
    }

    /// The tree head (SHA-256 of nothing for an empty tree).
    #[getter]
    fn root<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.levels.root())
    }

    fn __len__(&self) -> usize {
        self.levels.size()
    }

    /// The leaf at `index` (its bytes as given).
    fn leaf<'py>(&self, py: Python<'py>, index: u64) -> PyResult<Bound<'py, PyBytes>> {
        let leaf = self
            .leaves
            .get(index as usize)
            .ok_or(CoreError::IndexOutOfRange {
                index,
                size: self.leaves.len() as u64,
            })?;
        Ok(PyBytes::new(py, leaf))
    }

    /// The inclusion proof of leaf `index` (sibling hashes, bottom up).
    fn proof<'py>(&self, py: Python<'py>, index: u64) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let proof = self.levels.proof(index)?;
        Ok(proof.iter().map(|h| PyBytes::new(py, h)).collect())
    }

    /// The encoded REPLY of `node` carrying the certificates of leaves `indices`, signed by
    /// `key`: the bytes of `dropbear.wire.Reply(...).signed(key).encoded`. Each leaf must be a
    /// request entry; ValueError names what does not fit.
    #[allow(clippy::too_many_arguments)]
    fn reply<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, SigningKey>,
        group_id: &[u8],
        node: u16,
        view: u64,
        seq: u64,
        signatures: Vec<(u16, PyBackedBytes)>,
        indices: Vec<u32>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let key = &key.get().0;
        let frame = py.detach(|| {
            let signatures: Vec<(u16, &[u8])> =
                signatures.iter().map(|(n, s)| (*n, &s[..])).collect();
            let mut frame = reply::write_reply_body(
                group_id,
                node,
                view,
                seq,
                &signatures,
                &self.leaves,
                &self.levels,
                &indices,
            )?;
            let signature = crypto::sign(key, &reply::signed_bytes(&frame));
            frame.extend_from_slice(&signature);
            Ok::<_, String>(frame)
        });
        Ok(PyBytes::new(py, &frame.map_err(PyValueError::new_err)?))
    }
}

/// The fields of a well-formed REQUEST header, as `read_request` gives them.
fn header_fields<'py>(py: Python<'py>, h: &request::Header<'_>) -> PyResult<Bound<'py, PyTuple>> {
    let dtype = request::DTYPES
        .iter()
        .position(|(name, _)| *name == h.dtype)
        .expect("a dtype read from the table");
    (
        PyBytes::new(py, h.group_id),
        PyBytes::new(py, h.client),
        h.request_id,
        dtype,
        PyTuple::new(py, &h.shape)?,
        PyBytes::new(py, h.input_digest),
        PyBytes::new(py, h.signature),
        PyBytes::new(py, h.body),
        PyBytes::new(py, h.encoded),
    )
        .into_pyobject(py)
}

/// A well-formed REQUEST frame read at fixed offsets: `(group id, client key, request id,
/// dtype index in REQUEST_DTYPES, shape, input digest, signature, signed body, encoded
/// header, input bytes)`; None for anything else (the general reader names the fault).
#[pyfunction]
fn read_request<'py>(py: Python<'py>, frame: &[u8]) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let Some((header, data)) = request::read_request(frame) else {
        return Ok(None);
    };
    let fields = header_fields(py, &header)?;
    let mut all: Vec<Bound<'py, PyAny>> = fields.iter().collect();
    all.push(PyBytes::new(py, data).into_any());
    Ok(Some(PyTuple::new(py, all)?))
}

/// A well-formed REQUEST header that is all of `data`: `read_request`'s fields without the
/// input; None for anything else.
#[pyfunction]
fn read_request_header<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Option<Bound<'py, PyTuple>>> {
    match request::read_header(data) {
        Some(header) if header.encoded.len() == data.len() => Ok(Some(header_fields(py, &header)?)),
        _ => Ok(None),
    }
}

/// RFC 9162 §2.1.3.2 verification of an inclusion proof; hashes of the wrong length raise.
#[pyfunction]
fn merkle_verify(
    leaf: &[u8],
    index: u64,
    tree_size: u64,
    proof: Vec<PyBackedBytes>,
    root: &[u8],
) -> PyResult<bool> {
    let root = hash_arg("root", root)?;
    let proof: Vec<Hash> = proof
        .iter()
        .map(|p| hash_arg("proof hash", p))
        .collect::<Result<_, _>>()?;
    Ok(merkle::verify_inclusion(
        leaf, index, tree_size, &proof, &root,
    ))
}

/// Copies a 32-byte field (a digest, key or model version) out of a Python object.
fn bytes32(value: &Bound<'_, PyAny>, what: &'static str) -> PyResult<Bytes32> {
    let bytes = value.cast::<PyBytes>()?.as_bytes();
    Ok(hash_arg(what, bytes)?)
}

/// The entries of a batch (`dropbear.consensus.state.derive`, see `entries::derive`):
/// `votes` are the batch's VOTES messages (`group_id`, `node`, `model_version`, `votes` of
/// `(request, label, score)`), `requests` its request headers (`digest`, `group_id`,
/// `client`, `request_id`). Returns a tuple of `entry_type` objects made without their
/// `__init__`, with the fields `request`, `client`, `request_id`, `label`, `threshold`,
/// `reached` and `encoded` (the canonical leaf bytes) and without `votes`, which the
/// Python class reads from `encoded` when asked. A batch that breaks a rule raises
/// ValueError naming it.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn derive_entries<'py>(
    py: Python<'py>,
    group_id: &[u8],
    nodes: u32,
    quorum: usize,
    threshold: u16,
    votes: &Bound<'py, PyAny>,
    requests: &Bound<'py, PyAny>,
    entry_type: &Bound<'py, PyType>,
) -> PyResult<Bound<'py, PyTuple>> {
    if quorum == 0 {
        return Err(PyValueError::new_err("quorum must be at least 1"));
    }
    let mut messages = Vec::new();
    for message in votes.try_iter()? {
        let message = message?;
        let tuple = message
            .getattr(intern!(py, "votes"))?
            .cast_into::<PyTuple>()?;
        let mut list = Vec::with_capacity(tuple.len());
        for vote in tuple.iter() {
            let vote = vote.cast_into::<PyTuple>()?;
            list.push((
                bytes32(&*vote.get_borrowed_item(0)?, "vote request digest")?,
                vote.get_borrowed_item(1)?.extract::<u32>()?,
                vote.get_borrowed_item(2)?.extract::<f64>()?,
            ));
        }
        messages.push(NodeVotes {
            in_group: message
                .getattr(intern!(py, "group_id"))?
                .cast::<PyBytes>()?
                .as_bytes()
                == group_id,
            node: message.getattr(intern!(py, "node"))?.extract::<u32>()?,
            version: bytes32(
                &message.getattr(intern!(py, "model_version"))?,
                "model version",
            )?,
            votes: list,
        });
    }
    let mut ordered = Vec::new();
    let mut headers = Vec::new();
    for header in requests.try_iter()? {
        let header = header?;
        let digest = header.getattr(intern!(py, "digest"))?;
        let client = header.getattr(intern!(py, "client"))?;
        let request_id = header.getattr(intern!(py, "request_id"))?;
        ordered.push(OrderedRequest {
            digest: bytes32(&digest, "request digest")?,
            in_group: header
                .getattr(intern!(py, "group_id"))?
                .cast::<PyBytes>()?
                .as_bytes()
                == group_id,
            client: bytes32(&client, "client key")?,
            request_id: request_id.extract::<u64>()?,
        });
        headers.push((digest, client, request_id));
    }
    let derived = entries::derive(nodes, quorum, threshold, &messages, &ordered)
        .map_err(|rule| PyValueError::new_err(rule.to_string()))?;

    let object_new = py.get_type::<PyAny>().getattr(intern!(py, "__new__"))?;
    let threshold_obj = threshold.into_bound_py_any(py)?;
    let mut made = Vec::with_capacity(derived.entries.len());
    for (i, (entry, (digest, client, request_id))) in
        derived.entries.iter().zip(headers).enumerate()
    {
        let leaf = PyBytes::new_with(py, entries::entry_len(entry.votes.len()), |out| {
            derived.write_leaf(i, out, &ordered[i], &messages, threshold);
            Ok(())
        })?;
        let object = object_new.call1((entry_type,))?;
        let fields = object
            .getattr(intern!(py, "__dict__"))?
            .cast_into::<PyDict>()?;
        fields.set_item(intern!(py, "request"), digest)?;
        fields.set_item(intern!(py, "client"), client)?;
        fields.set_item(intern!(py, "request_id"), request_id)?;
        fields.set_item(intern!(py, "label"), entry.label)?;
        fields.set_item(intern!(py, "threshold"), &threshold_obj)?;
        fields.set_item(intern!(py, "reached"), PyBool::new(py, entry.reached))?;
        fields.set_item(intern!(py, "encoded"), leaf)?;
        made.push(object);
    }
    PyTuple::new(py, made)
}

/// Reads a REPLY frame for a client and checks steps 1-3 of each of its certificates (see
/// `reply`). Returns `(node, view, seq, tree_size, root, signatures, items)`: `signatures`
/// the shared `(node, commit signature)` pairs, each item `(request_id, request digest,
/// client key, label, reached, votes, problem)` with `votes` the `(node, label)` pairs and
/// `problem` None or why that certificate does not verify. A frame that is no well-formed
/// REPLY raises ValueError naming the fault.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn read_reply<'py>(
    py: Python<'py>,
    frame: &[u8],
    group_id: &[u8],
    nodes: u16,
    quorum: usize,
    threshold: u16,
) -> PyResult<Bound<'py, PyTuple>> {
    let parsed = reply::read_reply(frame).map_err(PyValueError::new_err)?;
    let signatures = PyTuple::new(
        py,
        parsed
            .signatures
            .iter()
            .map(|&(node, signature)| (node, PyBytes::new(py, signature))),
    )?;
    let mut items = Vec::with_capacity(parsed.items.len());
    for item in &parsed.items {
        let problem = reply::item_problem(&parsed, item, group_id, quorum, threshold, nodes);
        let entry = &item.entry;
        let votes = PyTuple::new(py, entry.votes.iter().map(|v| (v.0, v.2)))?;
        items.push((
            entry.request_id,
            PyBytes::new(py, entry.request),
            PyBytes::new(py, entry.client),
            entry.label,
            entry.reached,
            votes,
            problem,
        ));
    }
    (
        parsed.node,
        parsed.view,
        parsed.seq,
        parsed.tree_size,
        PyBytes::new(py, parsed.root),
        signatures,
        PyTuple::new(py, items)?,
    )
        .into_pyobject(py)
}

/// Counts votes `(view, seq, digest, node[, signed])` and reports each quorum once.
#[pyclass(module = "dropbear._core")]
struct QuorumTracker(quorum::QuorumTracker);

type VoteTuple = (u64, u64, PyBackedBytes, u32, Option<PyBackedBytes>);

fn vote_from_tuple(v: VoteTuple) -> Result<quorum::Vote, CoreError> {
    Ok(quorum::Vote {
        view: v.0,
        seq: v.1,
        digest: hash_arg("digest", &v.2)?,
        node: v.3,
        signed: v.4.map(|s| s.to_vec()).unwrap_or_default(),
    })
}

fn vote_tuple<'py>(
    py: Python<'py>,
    v: &quorum::Vote,
) -> (u64, u64, Bound<'py, PyBytes>, u32, Bound<'py, PyBytes>) {
    (
        v.view,
        v.seq,
        PyBytes::new(py, &v.digest),
        v.node,
        PyBytes::new(py, &v.signed),
    )
}

type QuorumTuple<'py> = (u64, u64, Bound<'py, PyBytes>);

#[pymethods]
impl QuorumTracker {
    #[new]
    #[pyo3(signature = (nodes, threshold, max_slots = 4096))]
    fn new(nodes: u32, threshold: u32, max_slots: usize) -> PyResult<Self> {
        Ok(Self(quorum::QuorumTracker::new(
            nodes, threshold, max_slots,
        )?))
    }

    #[getter]
    fn threshold(&self) -> u32 {
        self.0.threshold()
    }

    fn __len__(&self) -> usize {
        self.0.slots()
    }

    /// Adds votes in order and returns the quorums `(view, seq, digest)` they complete.
    fn add_votes<'py>(
        &mut self,
        py: Python<'py>,
        votes: Vec<VoteTuple>,
    ) -> PyResult<Vec<QuorumTuple<'py>>> {
        let votes: Vec<quorum::Vote> = votes
            .into_iter()
            .map(vote_from_tuple)
            .collect::<Result<_, _>>()?;
        let tracker = &mut self.0;
        let reached = py.detach(|| tracker.add_votes(votes))?;
        Ok(reached
            .iter()
            .map(|(view, seq, d)| (*view, *seq, PyBytes::new(py, d)))
            .collect())
    }

    fn count(&self, view: u64, seq: u64, digest: &[u8]) -> PyResult<u32> {
        Ok(self.0.count(view, seq, &hash_arg("digest", digest)?))
    }

    fn forget_up_to(&mut self, seq: u64) -> usize {
        self.0.forget_up_to(seq)
    }

    /// Takes the evidence gathered so far: pairs of conflicting votes, as
    /// `((view, seq, digest, node, signed), (view, seq, digest, node, signed))`.
    #[allow(clippy::type_complexity)]
    fn take_evidence<'py>(
        &mut self,
        py: Python<'py>,
    ) -> Vec<(
        (u64, u64, Bound<'py, PyBytes>, u32, Bound<'py, PyBytes>),
        (u64, u64, Bound<'py, PyBytes>, u32, Bound<'py, PyBytes>),
    )> {
        self.0
            .take_evidence()
            .iter()
            .map(|e| (vote_tuple(py, &e.first), vote_tuple(py, &e.second)))
            .collect()
    }

    #[getter]
    fn evidence_dropped(&self) -> u64 {
        self.0.evidence_dropped()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SigningKey>()?;
    m.add_class::<VerifyingKey>()?;
    m.add_class::<QuorumTracker>()?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(batch_verify, m)?)?;
    m.add_function(wrap_pyfunction!(verify_requests, m)?)?;
    m.add_function(wrap_pyfunction!(sha256, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_many, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_leaf_hash, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_root, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_proof, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_proofs, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_verify, m)?)?;
    m.add_function(wrap_pyfunction!(derive_entries, m)?)?;
    m.add_function(wrap_pyfunction!(read_reply, m)?)?;
    m.add_class::<MerkleTree>()?;
    m.add_function(wrap_pyfunction!(read_request, m)?)?;
    m.add_function(wrap_pyfunction!(read_request_header, m)?)?;
    m.add(
        "REQUEST_DTYPES",
        PyTuple::new(m.py(), request::DTYPES.iter().map(|(name, _)| *name))?,
    )?;
    m.add("REQUEST_MAX_INPUT_RANK", request::MAX_INPUT_RANK)?;
    m.add("REQUEST_MAX_BYTES", request::MAX_REQUEST_BYTES)?;
    m.add(
        "REPLY_SIGNING_CONTEXT",
        PyBytes::new(m.py(), reply::SIGNING_CONTEXT),
    )?;
    m.add("REPLY_MAX_ITEMS", reply::MAX_REPLY_ITEMS)?;
    m.add("REPLY_MAX_NODES", reply::MAX_NODES)?;
    m.add("REPLY_MAX_PROOF_HASHES", reply::MAX_PROOF_HASHES)?;
    m.add("REPLY_MAX_MESSAGE_BYTES", reply::MAX_MESSAGE_BYTES)?;
    m.add("MAX_EVIDENCE", quorum::MAX_EVIDENCE)?;
    m.add("KEY_CACHE_ENTRIES", crypto::KEY_CACHE_ENTRIES)?;
    Ok(())
}
