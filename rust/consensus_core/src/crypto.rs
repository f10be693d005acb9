//! Ed25519 keys, strict single verification and batch verification that names bad items.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use curve25519_dalek::constants::EIGHT_TORSION;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use ed25519_zebra::{batch as zebra_batch, VerificationKey as ZebraKey, VerificationKeyBytes};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};
use rayon::prelude::*;

use crate::error::{hex, CoreError};

pub const SEED_LEN: usize = 32;
pub const PUBLIC_KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;
/// Public keys kept parsed (see [`cached_public_key`]). When full the cache is emptied:
/// the group's few keys come back at once, and a flood of client keys cannot grow it.
pub const KEY_CACHE_ENTRIES: usize = 4096;
/// Batches of up to this many items are verified on the caller's thread; larger ones are cut
/// into chunks of this many, verified on all cores (rayon). A node hands its intake over in
/// batches of at most 256 requests (`limits.NODE_INTAKE_BATCH`), so that path never pays
/// the pool's hand-off: under load every core is busy with the other processes anyway, and
/// the pool's workers spinning for the next job cost more than the second core saved
/// (128 here: x0.984 certified req/s at saturation, 4 of 4 interleaved pairs; see
/// benches/HISTORY.md, "Nineteenth round").
const PARALLEL_CHUNK: usize = 512;

fn check_len(what: &'static str, bytes: &[u8], expected: usize) -> Result<(), CoreError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(CoreError::Length {
            what,
            expected,
            got: bytes.len(),
        })
    }
}

/// A fresh signing key from the operating system's randomness.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

/// The signing key derived from a 32-byte seed (RFC 8032 secret key).
pub fn signing_key_from_seed(seed: &[u8]) -> Result<SigningKey, CoreError> {
    check_len("seed", seed, SEED_LEN)?;
    let mut s = [0u8; SEED_LEN];
    s.copy_from_slice(seed);
    Ok(SigningKey::from_bytes(&s))
}

pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; SIGNATURE_LEN] {
    key.sign(message).to_bytes()
}

/// Loads a public key, refusing wrong lengths, non-points and weak (small-order) keys.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, CoreError> {
    check_len("public key", bytes, PUBLIC_KEY_LEN)?;
    let mut b = [0u8; PUBLIC_KEY_LEN];
    b.copy_from_slice(bytes);
    let key = VerifyingKey::from_bytes(&b).map_err(|_| CoreError::InvalidPublicKey(hex(bytes)))?;
    if key.is_weak() {
        return Err(CoreError::WeakPublicKey(hex(bytes)));
    }
    Ok(key)
}

/// Public keys kept parsed, at most [`KEY_CACHE_ENTRIES`]; emptied when full. Refused keys
/// are not kept.
struct KeyCache<K>(OnceLock<Mutex<HashMap<[u8; PUBLIC_KEY_LEN], K>>>);

impl<K: Copy> KeyCache<K> {
    const fn new() -> Self {
        KeyCache(OnceLock::new())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; PUBLIC_KEY_LEN], K>> {
        self.0
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The key of `bytes`, from the cache or from `parse` (kept when it parses).
    fn get(
        &self,
        bytes: &[u8],
        parse: impl FnOnce(&[u8; PUBLIC_KEY_LEN]) -> Result<K, CoreError>,
    ) -> Result<K, CoreError> {
        check_len("public key", bytes, PUBLIC_KEY_LEN)?;
        let mut b = [0u8; PUBLIC_KEY_LEN];
        b.copy_from_slice(bytes);
        if let Some(key) = self.lock().get(&b) {
            return Ok(*key);
        }
        let key = parse(&b)?;
        let mut keys = self.lock();
        if keys.len() >= KEY_CACHE_ENTRIES {
            keys.clear();
        }
        keys.insert(b, key);
        Ok(key)
    }
}

static STRICT_KEYS: KeyCache<VerifyingKey> = KeyCache::new();
static ZIP215_KEYS: KeyCache<ZebraKey> = KeyCache::new();

/// [`parse_public_key`], remembering the keys that parse (at most [`KEY_CACHE_ENTRIES`]):
/// decompressing a key costs about as much as the rest of a verification, and a node checks
/// the same few keys' signatures all the time. Refused keys are not kept.
pub fn cached_public_key(bytes: &[u8]) -> Result<VerifyingKey, CoreError> {
    STRICT_KEYS.get(bytes, |b| parse_public_key(b))
}

pub fn parse_signature(bytes: &[u8]) -> Result<Signature, CoreError> {
    check_len("signature", bytes, SIGNATURE_LEN)?;
    let mut b = [0u8; SIGNATURE_LEN];
    b.copy_from_slice(bytes);
    Ok(Signature::from_bytes(&b))
}

/// Strict verification: RFC 8032 with a canonical S, and R and A of large order. The same
/// verdict as ed25519-dalek's `verify_strict` (tested below), without decompressing R: A
/// was checked when the key was parsed, R is checked on its bytes ([`strict_r`]), and the
/// equation compares R's bytes with the canonical encoding of `S B - H(R, A, M) A`, so an
/// R that is no point, or not canonically encoded, fails it. `key` must come from
/// [`parse_public_key`] or [`cached_public_key`], which refuse weak keys.
pub fn verify(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    debug_assert!(
        !key.is_weak(),
        "verify takes keys that parse_public_key accepted"
    );
    strict_r(signature.r_bytes()) && key.verify(message, signature).is_ok()
}

/// One item of a batch: `(message, signature, public key)`, all borrowed.
pub type BatchItem<'a> = (&'a [u8], &'a [u8], &'a [u8]);

struct Parsed<'a, K> {
    index: usize,
    message: &'a [u8],
    signature: Signature,
    key: K,
}

/// A batch equation over parsed items: whether all of them verify.
type BatchEquation<K> = fn(&[Parsed<'_, K>]) -> bool;

/// Parses `items` (each key once, with `key_of`) and checks them in chunks of
/// [`PARALLEL_CHUNK`], on all cores when there are more: a chunk that `together` (a batch
/// equation, where the rule has one whose verdicts are each signature's own) passes is
/// good; otherwise each item is checked `alone`. Returns the indices of the bad items
/// (malformed ones included), in order.
fn check_items<K: Copy + Send + Sync>(
    items: &[BatchItem<'_>],
    key_of: impl Fn(&[u8]) -> Result<K, CoreError>,
    alone: impl Fn(&Parsed<'_, K>) -> bool + Sync,
    together: Option<BatchEquation<K>>,
    chunk_len: usize,
) -> Vec<usize> {
    let mut bad = Vec::new();
    let mut parsed = Vec::with_capacity(items.len());
    // Batches usually hold many signatures by few keys: look each key up once.
    let mut keys: HashMap<&[u8], Result<K, CoreError>> = HashMap::new();
    for (index, &(message, sig, pk)) in items.iter().enumerate() {
        let key = keys.entry(pk).or_insert_with(|| key_of(pk)).clone();
        let (Ok(signature), Ok(key)) = (parse_signature(sig), key) else {
            bad.push(index);
            continue;
        };
        parsed.push(Parsed {
            index,
            message,
            signature,
            key,
        });
    }
    let check = |chunk: &[Parsed<'_, K>]| -> Vec<usize> {
        if chunk.len() > 1 && together.is_some_and(|passes| passes(chunk)) {
            return Vec::new();
        }
        chunk
            .iter()
            .filter(|p| !alone(p))
            .map(|p| p.index)
            .collect()
    };
    if parsed.len() <= chunk_len {
        // One chunk: handing it to the thread pool would cost more than it saves.
        bad.extend(check(&parsed));
    } else {
        let found: Vec<Vec<usize>> = parsed.par_chunks(chunk_len).map(&check).collect();
        bad.extend(found.into_iter().flatten());
    }
    bad.sort_unstable();
    bad
}

/// The `R` half of a signature must be a canonical encoding of a point of large order,
/// as `verify_strict` demands; the cofactorless equation alone does not check that. Decided
/// on the bytes alone (no decompression): an `R` that is no point at all passes here and
/// fails the equation instead.
fn strict_r(r: &[u8; 32]) -> bool {
    canonical_y(r) && !zero_x(r) && !small_order_encodings().contains(r)
}

/// Whether the 255-bit y of a compressed point is below p = 2^255 - 19 (a canonical field
/// element). Little-endian: y >= p only when bytes 1..31 are all 0xff, the top byte (sign
/// bit cleared) is 0x7f and the lowest byte is at least 0xed.
fn canonical_y(r: &[u8; 32]) -> bool {
    !(r[0] >= 0xed && r[1..31].iter().all(|&b| b == 0xff) && r[31] & 0x7f == 0x7f)
}

/// Whether the encoding is of y = 1 or y = p - 1 (x = 0, both of small order), whatever its
/// sign bit: with the sign bit set these are non-canonical, without it small-order.
fn zero_x(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    let one = y[0] == 1 && y[1..].iter().all(|&b| b == 0);
    let minus_one = y[0] == 0xec && y[1..31].iter().all(|&b| b == 0xff) && y[31] == 0x7f;
    one || minus_one
}

/// The canonical encodings of the eight points of small order (the 8-torsion subgroup).
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: OnceLock<[[u8; 32]; 8]> = OnceLock::new();
    ENCODINGS.get_or_init(|| EIGHT_TORSION.map(|point| point.compress().to_bytes()))
}

/// Verifies many signatures; returns the indices of the bad items, in order (empty when
/// all are good). Malformed items (wrong lengths, invalid or weak keys) are bad items.
///
/// Each item is checked on its own with [`verify`], so the verdict on an item never depends
/// on what else is in the batch. A random-linear-combination batch equation (ed25519-dalek's
/// `verify_batch`) does not have that property: a signature whose R carries a torsion
/// component, which [`verify`] refuses, passes it for about half of the random weights,
/// and two honest nodes checking different batches could then disagree on one PRE-PREPARE.
/// Large batches are split over all cores (rayon), with the GIL released by the caller.
pub fn batch_verify(items: &[BatchItem<'_>]) -> Vec<usize> {
    check_items(
        items,
        cached_public_key,
        |p| verify(&p.key, p.message, &p.signature),
        None,
        PARALLEL_CHUNK,
    )
}

/// A client key for [`verify_requests`]: it must pass [`parse_public_key`] (a point, not of
/// small order), so the keys a client may use are the same under both rules. Kept parsed
/// like [`cached_public_key`] (at most [`KEY_CACHE_ENTRIES`]).
fn zip215_key(bytes: &[u8]) -> Result<ZebraKey, CoreError> {
    ZIP215_KEYS.get(bytes, |b| {
        parse_public_key(b)?;
        ZebraKey::try_from(*b).map_err(|_| CoreError::InvalidPublicKey(hex(b)))
    })
}

/// One signature under ZIP-215: S canonical, A and R any encoding of a curve point, and the
/// cofactored equation `[8](S B - R - H(R, A, M) A) = 0`. Key as from [`zip215_key`].
fn verify_zip215(key: &ZebraKey, message: &[u8], signature: &Signature) -> bool {
    key.verify(signature, message).is_ok()
}

/// Verifies client REQUEST signatures; returns the indices of the bad items, in order.
/// Malformed items (wrong lengths, keys that [`parse_public_key`] refuses) are bad items.
///
/// The rule is ZIP-215's (cofactored verification, as ed25519-zebra implements it), not
/// RFC 8032's strict one that [`verify`] and [`batch_verify`] apply to node signatures: under
/// it a random-weight batch equation gives exactly the verdicts of checking each signature
/// alone, so a batch can be checked at once, and the verdict on one request never depends
/// on the rest of its batch. Every node checks every client signature with this function,
/// at intake and in a PRE-PREPARE, so honest nodes agree on each. No certificate carries a
/// client signature, so a certificate's verifier needs no second rule. The only signatures
/// that pass here and fail [`verify`] are ones whose R carries a torsion component or is
/// non-canonically encoded, and those under a key that carries one (A = aB + T, which
/// [`parse_public_key`] takes): only the key's holder can make them.
///
/// A batch that fails is checked again one signature at a time to name the bad ones, so a
/// client that slips one bad signature into each batch costs a node about 1.5 times what
/// checking every signature alone would.
/// Large batches are split over all cores (rayon), with the GIL released by the caller.
pub fn verify_requests(items: &[BatchItem<'_>]) -> Vec<usize> {
    verify_requests_in_chunks(items, PARALLEL_CHUNK)
}

/// [`verify_requests`] with chunks of `chunk_len` items (tests cut small batches in chunks
/// to check the parallel path's verdicts).
fn verify_requests_in_chunks(items: &[BatchItem<'_>], chunk_len: usize) -> Vec<usize> {
    check_items(
        items,
        zip215_key,
        |p| verify_zip215(&p.key, p.message, &p.signature),
        Some(batch_passes),
        chunk_len,
    )
}

/// ed25519-zebra's batch equation over `chunk`, with weights from a ChaCha20 stream seeded
/// by the operating system (one seed per batch, not a system call per weight).
fn batch_passes(chunk: &[Parsed<'_, ZebraKey>]) -> bool {
    let mut verifier = zebra_batch::Verifier::new();
    for p in chunk {
        verifier.queue((VerificationKeyBytes::from(p.key), p.signature, p.message));
    }
    // Without randomness for the weights, no batch: the caller checks one by one.
    let Ok(rng) = ChaCha20Rng::from_rng(OsRng) else {
        return false;
    };
    verifier.verify(rng).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::scalar::Scalar;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// H(R, A, M) as RFC 8032 reduces it: what a forger needs to build S.
    fn challenge(r: &[u8; 32], public: &VerifyingKey, message: &[u8]) -> Scalar {
        use sha2::{Digest, Sha512};
        Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r)
                .chain_update(public.as_bytes())
                .chain_update(message)
                .finalize()
                .into(),
        )
    }

    /// `n` good signatures by `key`, of the messages 0..n as little-endian u32s.
    fn signed_messages(key: &SigningKey, n: u32) -> Vec<(Vec<u8>, [u8; 64])> {
        (0..n)
            .map(|i| {
                let m = i.to_le_bytes().to_vec();
                let s = sign(key, &m);
                (m, s)
            })
            .collect()
    }

    /// ed25519-dalek's own strict verification: what [`verify`] must agree with.
    fn verify_strict(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
        key.verify_strict(message, signature).is_ok()
    }

    #[test]
    fn rfc8032_test_1() {
        let key = signing_key_from_seed(&unhex(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        ))
        .unwrap();
        assert_eq!(
            key.verifying_key().to_bytes().to_vec(),
            unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = sign(&key, b"");
        assert_eq!(sig.to_vec(), unhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"));
        assert!(verify_strict(
            &key.verifying_key(),
            b"",
            &Signature::from_bytes(&sig)
        ));
        assert!(!verify_strict(
            &key.verifying_key(),
            b"x",
            &Signature::from_bytes(&sig)
        ));
    }

    #[test]
    fn weak_and_malformed_keys_are_refused() {
        // The identity point (small order) is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            parse_public_key(&identity),
            Err(CoreError::WeakPublicKey(_))
        ));
        assert!(matches!(
            parse_public_key(&[0u8; 31]),
            Err(CoreError::Length { got: 31, .. })
        ));
        assert!(matches!(
            parse_signature(&[0u8; 65]),
            Err(CoreError::Length { got: 65, .. })
        ));
    }

    /// What `verify_strict` asks of `R`, computed the slow way.
    fn strict_r_by_decompression(r: &[u8; 32]) -> Option<bool> {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let point = CompressedEdwardsY(*r).decompress()?;
        Some(!point.is_small_order() && point.compress().to_bytes() == *r)
    }

    /// Every encoding the byte test must get right: the small-order points, their
    /// non-canonical and sign-flipped encodings, and the values around p.
    fn edge_encodings() -> Vec<[u8; 32]> {
        let mut out: Vec<[u8; 32]> = small_order_encodings().to_vec();
        for y_low in 0u8..=20 {
            // y = y_low and y = p + y_low (non-canonical when y_low < 19), both signs
            let mut small = [0u8; 32];
            small[0] = y_low;
            let mut above_p = [0xffu8; 32];
            above_p[31] = 0x7f;
            let (low, carry) = 0xedu8.overflowing_add(y_low);
            above_p[0] = low;
            if carry {
                continue;
            }
            for mut r in [small, above_p] {
                out.push(r);
                r[31] |= 0x80;
                out.push(r);
            }
        }
        for r in *small_order_encodings() {
            let mut flipped = r;
            flipped[31] ^= 0x80;
            out.push(flipped);
        }
        out
    }

    #[test]
    fn strict_r_on_bytes_agrees_with_decompression() {
        let mut checked = 0;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random = (0..20_000).map(|_| {
            let mut r = [0u8; 32];
            for chunk in r.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            r
        });
        for r in edge_encodings().into_iter().chain(random) {
            if let Some(expected) = strict_r_by_decompression(&r) {
                assert_eq!(strict_r(&r), expected, "R = {}", hex(&r));
                checked += 1;
            }
        }
        assert!(checked > 9_000, "only {checked} encodings were points");
    }

    /// Signatures whose R has small order (the eight canonical encodings, and the identity
    /// with its sign bit set) and S = H(R, A, M) a: S B - H A - R = -T, so they pass the
    /// cofactorless equation up to a torsion point; `verify_strict` refuses all of them.
    fn small_order_forgeries(key: &SigningKey) -> Vec<(Vec<u8>, [u8; 64])> {
        let public = key.verifying_key();
        let mut encodings: Vec<[u8; 32]> = small_order_encodings().to_vec();
        let mut identity_flipped = encodings[0];
        identity_flipped[31] |= 0x80; // a non-canonical encoding of the identity
        encodings.push(identity_flipped);
        encodings
            .iter()
            .enumerate()
            .map(|(j, r)| {
                let message = format!("forged {j}").into_bytes();
                let k = challenge(r, &public, &message);
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(r);
                signature[32..].copy_from_slice(&(k * key.to_scalar()).to_bytes());
                (message, signature)
            })
            .collect()
    }

    #[test]
    fn a_batch_names_signatures_whose_r_has_small_order() {
        // A random batch coefficient may send the forgeries' torsion to the identity.
        let key = signing_key_from_seed(&[7u8; 32]).unwrap();
        let public = key.verifying_key();
        let mut items_owned = signed_messages(&key, 20);
        let mut forged_at = Vec::new();
        for (message, signature) in small_order_forgeries(&key) {
            assert!(!verify_strict(
                &public,
                &message,
                &Signature::from_bytes(&signature)
            ));
            forged_at.push(items_owned.len());
            items_owned.push((message, signature));
        }
        let pk = public.to_bytes();
        let items: Vec<BatchItem> = items_owned
            .iter()
            .map(|(m, s)| (m.as_slice(), s.as_slice(), pk.as_slice()))
            .collect();
        assert_eq!(batch_verify(&items), forged_at);
    }

    #[test]
    fn a_batch_refuses_a_signature_whose_r_carries_torsion_whatever_else_it_holds() {
        // R = rB + T with T of order 2 and S = r + H(R, A, M) a: the cofactorless equation
        // is off by T, so verify refuses it; a random-weight batch equation loses T for
        // every even weight, so it passed in about half of all batches.
        use curve25519_dalek::edwards::EdwardsPoint;
        let key = signing_key_from_seed(&[11u8; 32]).unwrap();
        let public = key.verifying_key();
        let pk = public.to_bytes();
        let good = signed_messages(&key, 12);
        for trial in 0..24u8 {
            let message = vec![trial; 5];
            let r = Scalar::from_bytes_mod_order([trial.wrapping_add(1); 32]);
            let big_r = (EdwardsPoint::mul_base(&r) + EIGHT_TORSION[4]).compress();
            let h = challenge(big_r.as_bytes(), &public, &message);
            let mut forged = [0u8; 64];
            forged[..32].copy_from_slice(big_r.as_bytes());
            forged[32..].copy_from_slice(&(r + h * key.to_scalar()).to_bytes());
            assert!(!verify(&public, &message, &Signature::from_bytes(&forged)));
            let mut items: Vec<BatchItem> = good
                .iter()
                .map(|(m, s)| (m.as_slice(), s.as_slice(), pk.as_slice()))
                .collect();
            items.push((message.as_slice(), forged.as_slice(), pk.as_slice()));
            assert_eq!(batch_verify(&items), vec![good.len()], "trial {trial}");
        }
    }

    #[test]
    fn verify_agrees_with_verify_strict() {
        let key = signing_key_from_seed(&[9u8; 32]).unwrap();
        let public = key.verifying_key();
        let mut cases: Vec<(Vec<u8>, [u8; 64])> = small_order_forgeries(&key);
        for i in 0..64u32 {
            let message = i.to_le_bytes().to_vec();
            let good = sign(&key, &message);
            cases.push((message.clone(), good));
            cases.push((b"another message".to_vec(), good));
            let mut flipped = good;
            flipped[(i as usize * 7) % 64] ^= 1 << (i % 8); // one bit of R or S
            cases.push((message.clone(), flipped));
            // S + l: the same scalar, not canonically encoded (RFC 8032 refuses it).
            let mut non_canonical = good;
            let l: [u8; 32] = [
                0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
                0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            let mut carry = 0u16;
            for (j, byte) in non_canonical[32..].iter_mut().enumerate() {
                let sum = *byte as u16 + l[j] as u16 + carry;
                *byte = sum as u8;
                carry = sum >> 8;
            }
            cases.push((message, non_canonical));
        }
        let mut refused = 0;
        for (message, signature) in &cases {
            let signature = Signature::from_bytes(signature);
            let expected = verify_strict(&public, message, &signature);
            assert_eq!(verify(&public, message, &signature), expected);
            refused += usize::from(!expected);
        }
        assert_eq!(
            refused,
            cases.len() - 64,
            "each case but the good ones is refused"
        );
    }

    #[test]
    fn cached_keys_are_the_parsed_keys_and_stay_bounded() {
        let key = signing_key_from_seed(&[3u8; 32]).unwrap().verifying_key();
        assert_eq!(cached_public_key(key.as_bytes()).unwrap(), key);
        assert_eq!(cached_public_key(key.as_bytes()).unwrap(), key);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        for _ in 0..2 {
            assert!(matches!(
                cached_public_key(&identity),
                Err(CoreError::WeakPublicKey(_))
            ));
        }
        assert!(matches!(
            cached_public_key(&[0u8; 31]),
            Err(CoreError::Length { got: 31, .. })
        ));
        for i in 0..(KEY_CACHE_ENTRIES + 10) as u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let public = signing_key_from_seed(&seed).unwrap().verifying_key();
            assert_eq!(cached_public_key(public.as_bytes()).unwrap(), public);
        }
        let keys = STRICT_KEYS.lock();
        assert!(keys.len() <= KEY_CACHE_ENTRIES);
        assert!(!keys.contains_key(&identity));
    }

    #[test]
    fn batch_names_the_bad_items() {
        let keys: Vec<SigningKey> = (0..40u8)
            .map(|i| signing_key_from_seed(&[i; 32]).unwrap())
            .collect();
        let messages: Vec<Vec<u8>> = (0..40u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut sigs: Vec<[u8; 64]> = keys
            .iter()
            .zip(&messages)
            .map(|(k, m)| sign(k, m))
            .collect();
        let pks: Vec<[u8; 32]> = keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
        sigs[3][40] ^= 1;
        sigs[29][0] ^= 4;
        let short = [0u8; 10];
        let items: Vec<BatchItem> = (0..40)
            .map(|i| {
                let sig: &[u8] = if i == 17 { &short } else { &sigs[i] };
                (messages[i].as_slice(), sig, pks[i].as_slice())
            })
            .collect();
        assert_eq!(batch_verify(&items), vec![3, 17, 29]);
        assert!(batch_verify(&items[4..17]).is_empty());
        assert!(batch_verify(&[]).is_empty());
    }

    /// Signatures that [`verify_requests`] and [`verify`] judge differently, and plain bad
    /// ones, by `key`: (message, signature, whether ZIP-215 accepts it).
    fn zip215_cases(key: &SigningKey) -> Vec<(Vec<u8>, [u8; 64], bool)> {
        use curve25519_dalek::edwards::EdwardsPoint;
        let public = key.verifying_key();
        let mut cases = Vec::new();
        // R = rB + T for each torsion point T (T = identity: an honest signature's shape).
        for (t, torsion) in EIGHT_TORSION.iter().enumerate() {
            let message = format!("torsion {t}").into_bytes();
            let r = Scalar::from_bytes_mod_order([t as u8 + 1; 32]);
            let big_r = (EdwardsPoint::mul_base(&r) + torsion).compress();
            let h = challenge(big_r.as_bytes(), &public, &message);
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(big_r.as_bytes());
            signature[32..].copy_from_slice(&(r + h * key.to_scalar()).to_bytes());
            cases.push((message, signature, true));
        }
        // R of small order itself: [8](S B - R - H A) = [8](-R) = 0.
        for (message, signature) in small_order_forgeries(key) {
            cases.push((message, signature, true));
        }
        for (i, (message, good)) in signed_messages(key, 8).into_iter().enumerate() {
            cases.push((message.clone(), good, true));
            cases.push((b"another message".to_vec(), good, false));
            let mut flipped = good;
            flipped[32 + i] ^= 1 << i; // a bit of S
            cases.push((message.clone(), flipped, false));
            let mut s_plus_l = good; // S + l: not canonical, refused by ZIP-215 too
            let mut carry = 0u16;
            for (j, byte) in s_plus_l[32..].iter_mut().enumerate() {
                let sum = *byte as u16 + L_BYTES[j] as u16 + carry;
                *byte = sum as u8;
                carry = sum >> 8;
            }
            cases.push((message, s_plus_l, false));
        }
        cases
    }

    type PoolItem = (Vec<u8>, [u8; 64], [u8; 32], bool);

    /// l, the order of the base point, little-endian.
    const L_BYTES: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    #[test]
    fn requests_are_checked_under_zip215() {
        let key = signing_key_from_seed(&[21u8; 32]).unwrap();
        let public = key.verifying_key();
        let pk = public.to_bytes();
        for (message, signature, accepted) in zip215_cases(&key) {
            let alone = verify_requests(&[(&message, &signature, &pk)]).is_empty();
            assert_eq!(alone, accepted, "{}", String::from_utf8_lossy(&message));
        }
        // The torsion cases but T = identity are what the strict rule refuses and ZIP-215
        // accepts; only the signer can make them.
        let differ = zip215_cases(&key)
            .iter()
            .filter(|(m, s, accepted)| *accepted != verify(&public, m, &Signature::from_bytes(s)))
            .count();
        assert_eq!(differ, 7 + 9);
        let rfc = signing_key_from_seed(&unhex(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        ))
        .unwrap();
        let rfc_sig = unhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
        let rfc_pk = rfc.verifying_key().to_bytes();
        assert!(verify_requests(&[(b"", &rfc_sig, &rfc_pk)]).is_empty());
    }

    #[test]
    fn a_request_batch_gives_each_signature_its_verdict_alone() {
        use rand_core::RngCore;
        let keys: Vec<SigningKey> = (0..3u8)
            .map(|i| signing_key_from_seed(&[40 + i; 32]).unwrap())
            .collect();
        // (message, signature, public key, whether ZIP-215 accepts it)
        let mut pool: Vec<PoolItem> = Vec::new();
        for key in &keys {
            let pk = key.verifying_key().to_bytes();
            for (m, s, accepted) in zip215_cases(key) {
                pool.push((m, s, pk, accepted));
            }
            for (m, s) in signed_messages(key, 60) {
                pool.push((m, s, pk, true));
            }
        }
        let mut rng = ChaCha20Rng::seed_from_u64(215);
        let sizes = [2usize, 3, 5, 12, 40, 128, 129, 200];
        for trial in 0..24 {
            let size = sizes[trial % sizes.len()];
            let picked: Vec<usize> = (0..size)
                .map(|_| rng.next_u32() as usize % pool.len())
                .collect();
            let items: Vec<BatchItem> = picked
                .iter()
                .map(|&i| (pool[i].0.as_slice(), &pool[i].1[..], &pool[i].2[..]))
                .collect();
            let expected: Vec<usize> = picked
                .iter()
                .enumerate()
                .filter(|(_, &i)| !pool[i].3)
                .map(|(at, _)| at)
                .collect();
            assert_eq!(
                verify_requests(&items),
                expected,
                "trial {trial}, size {size}"
            );
            // The same verdicts when the batch is cut into chunks checked on all cores.
            assert_eq!(
                verify_requests_in_chunks(&items, 16),
                expected,
                "trial {trial}, size {size}, chunks of 16"
            );
        }
    }

    #[test]
    fn request_items_that_are_malformed_are_named() {
        let key = signing_key_from_seed(&[50u8; 32]).unwrap();
        let pk = key.verifying_key().to_bytes();
        let good = signed_messages(&key, 6);
        let mut weak = [0u8; 32];
        weak[0] = 1; // the identity: of small order, refused as a client key
        let not_a_point = {
            // y = 2 is not the y of any curve point
            let mut b = [0u8; 32];
            b[0] = 2;
            assert!(VerifyingKey::from_bytes(&b).is_err());
            b
        };
        let short = [0u8; 63];
        let items: Vec<BatchItem> = vec![
            (&good[0].0, &good[0].1, &pk),
            (&good[1].0, &good[1].1, &weak),
            (&good[2].0, &good[2].1, &not_a_point),
            (&good[3].0, &short, &pk),
            (&good[4].0, &good[4].1, &pk[..31]),
            (&good[5].0, &good[5].1, &pk),
        ];
        assert_eq!(verify_requests(&items), vec![1, 2, 3, 4]);
        assert!(verify_requests(&[]).is_empty());
    }

    #[test]
    fn a_key_with_a_torsion_component_signs_what_zip215_alone_accepts() {
        // A = aB + T (T of order 8) is no weak key; its holder's signatures (R = rB,
        // S = r + H(R, A, M) a) are off by H T in the cofactorless equation.
        use curve25519_dalek::edwards::EdwardsPoint;
        let key = signing_key_from_seed(&[60u8; 32]).unwrap();
        let a = key.to_scalar();
        let public = (EdwardsPoint::mul_base(&a) + EIGHT_TORSION[1])
            .compress()
            .to_bytes();
        let parsed = parse_public_key(&public).expect("a mixed-order key is not weak");
        let mut owned = Vec::new();
        for i in 0..16u8 {
            let message = vec![i; 9];
            let r = Scalar::from_bytes_mod_order([i + 1; 32]);
            let big_r = EdwardsPoint::mul_base(&r).compress();
            let h = challenge(big_r.as_bytes(), &parsed, &message);
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(big_r.as_bytes());
            signature[32..].copy_from_slice(&(r + h * a).to_bytes());
            owned.push((message, signature));
        }
        let strict = owned
            .iter()
            .filter(|(m, s)| verify(&parsed, m, &Signature::from_bytes(s)))
            .count();
        assert!(strict < 16, "H T vanishes only when 8 divides H");
        let items: Vec<BatchItem> = owned
            .iter()
            .map(|(m, s)| (m.as_slice(), s.as_slice(), public.as_slice()))
            .collect();
        assert!(verify_requests(&items).is_empty());
        for item in &items {
            assert!(verify_requests(&[*item]).is_empty());
        }
    }

    #[test]
    fn request_verdicts_hold_while_the_zip215_key_cache_fills_and_empties() {
        // The same verdicts from a key kept parsed and from one parsed afresh after the
        // cache was emptied; the cache never holds more than its bound, nor a refused key.
        let keys: Vec<SigningKey> = (0..(KEY_CACHE_ENTRIES + 10) as u32)
            .map(|i| {
                let mut seed = [1u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                signing_key_from_seed(&seed).unwrap()
            })
            .collect();
        let probes: Vec<usize> = vec![0, 1, 2, KEY_CACHE_ENTRIES + 8, KEY_CACHE_ENTRIES + 9];
        let signed: Vec<([u8; 32], [u8; 64])> = probes
            .iter()
            .map(|&i| (keys[i].verifying_key().to_bytes(), sign(&keys[i], b"m")))
            .collect();
        let check = || {
            for (pk, s) in &signed {
                assert!(verify_requests(&[(b"m", s, pk)]).is_empty());
                assert_eq!(verify_requests(&[(b"n", s, pk)]), vec![0]);
            }
        };
        for _ in 0..2 {
            check();
            for key in &keys {
                zip215_key(key.verifying_key().as_bytes()).unwrap();
            }
            let cached = ZIP215_KEYS.lock().len();
            assert!(cached <= KEY_CACHE_ENTRIES);
            check();
        }
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let (_, s) = &signed[0];
        for _ in 0..2 {
            assert_eq!(verify_requests(&[(b"m", s, &identity)]), vec![0]);
        }
        assert!(!ZIP215_KEYS.lock().contains_key(&identity));
    }
}
