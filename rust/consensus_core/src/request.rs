//! A client REQUEST as a node receives it: read at fixed offsets in one pass.
//!
//! Every node reads every client's every REQUEST, so the well-formed ones (all an honest
//! client sends) take this path; anything out of the ordinary is not read here at all
//! (`None`), and `dropbear.wire`'s general reader names its fault. The two accept exactly
//! the same bytes as well-formed (a hypothesis test holds them to it).

use crate::reply::{MAX_MESSAGE_BYTES, VERSION};

/// The REQUEST kind byte (after the format version byte every encoding starts with).
pub const REQUEST_KIND: u8 = 0x01;
/// Limits, as `dropbear.limits` names them (a test compares them).
pub const MAX_INPUT_RANK: usize = 8;
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// The dtypes a REQUEST may name and their item sizes (`dropbear.wire.DTYPES`).
pub const DTYPES: [(&str, u64); 12] = [
    ("bool", 1),
    ("uint8", 1),
    ("int8", 1),
    ("int16", 2),
    ("uint16", 2),
    ("int32", 4),
    ("uint32", 4),
    ("int64", 8),
    ("float16", 2),
    ("bfloat16", 2),
    ("float32", 4),
    ("float64", 8),
];

/// Version, kind, group id, client key, request id, dtype length: the header up to its dtype.
const FIXED: usize = 2 + 32 + 32 + 8 + 2;
const DIGEST: usize = 32;
const SIGNATURE: usize = 64;

/// A REQUEST header's fields, borrowing the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub group_id: &'a [u8],
    pub client: &'a [u8],
    pub request_id: u64,
    pub dtype: &'static str,
    pub shape: Vec<u32>,
    pub input_digest: &'a [u8],
    pub signature: &'a [u8],
    /// The signed bytes: everything before the signature.
    pub body: &'a [u8],
    /// The whole header, signature included.
    pub encoded: &'a [u8],
}

impl Header<'_> {
    /// The input size the shape and dtype call for; None when it does not fit a u64 (far
    /// past any limit). A zero dimension makes it 0 whatever the others are.
    pub fn input_bytes(&self) -> Option<u64> {
        let item = DTYPES.iter().find(|(name, _)| *name == self.dtype)?.1;
        if self.shape.contains(&0) {
            return Some(0);
        }
        self.shape
            .iter()
            .try_fold(item, |size, &d| size.checked_mul(u64::from(d)))
    }
}

fn u16_at(data: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([data[at], data[at + 1]]))
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

/// The REQUEST header at the start of `data`, if it is well formed: a known dtype, a rank
/// of at most MAX_INPUT_RANK, nothing cut off.
pub fn read_header(data: &[u8]) -> Option<Header<'_>> {
    let size = data.len();
    if size < FIXED || data[0] != VERSION || data[1] != REQUEST_KIND {
        return None;
    }
    let rank_at = FIXED + u16_at(data, FIXED - 2);
    if rank_at >= size {
        return None;
    }
    let dtype = DTYPES
        .iter()
        .find(|(name, _)| name.as_bytes() == &data[FIXED..rank_at])?
        .0;
    let rank = usize::from(data[rank_at]);
    let digest_at = rank_at + 1 + 4 * rank;
    let signature_at = digest_at + DIGEST;
    let end = signature_at + SIGNATURE;
    if rank > MAX_INPUT_RANK || end > size {
        return None;
    }
    Some(Header {
        group_id: &data[2..34],
        client: &data[34..66],
        request_id: u64::from_be_bytes(data[66..74].try_into().expect("8 bytes")),
        dtype,
        shape: (0..rank)
            .map(|i| u32_at(data, rank_at + 1 + 4 * i))
            .collect(),
        input_digest: &data[digest_at..signature_at],
        signature: &data[signature_at..end],
        body: &data[..signature_at],
        encoded: &data[..end],
    })
}

/// A whole REQUEST frame, if it is well formed: its header, then the input behind a 4-byte
/// length that is what the header's shape and dtype call for, within MAX_REQUEST_BYTES.
pub fn read_request(frame: &[u8]) -> Option<(Header<'_>, &[u8])> {
    if frame.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    let header = read_header(frame)?;
    let end = header.encoded.len();
    let data_at = end + 4;
    if data_at > frame.len() {
        return None;
    }
    let length = u32_at(frame, end) as usize;
    if length != frame.len() - data_at
        || length > MAX_REQUEST_BYTES
        || header.input_bytes() != Some(length as u64)
    {
        return None;
    }
    Some((header, &frame[data_at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dtype: &str, shape: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![VERSION, REQUEST_KIND];
        out.extend_from_slice(&[7; 32]);
        out.extend_from_slice(&[8; 32]);
        out.extend_from_slice(&42u64.to_be_bytes());
        out.extend_from_slice(&(dtype.len() as u16).to_be_bytes());
        out.extend_from_slice(dtype.as_bytes());
        out.push(shape.len() as u8);
        for d in shape {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(&[9; 32]);
        out.extend_from_slice(&[10; 64]);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn a_well_formed_request_reads_back() {
        let frame = request("float32", &[2, 3], &[0; 24]);
        let (header, data) = read_request(&frame).unwrap();
        assert_eq!((header.request_id, header.dtype), (42, "float32"));
        assert_eq!(header.shape, vec![2, 3]);
        assert_eq!(
            (header.group_id, header.client),
            (&[7u8; 32][..], &[8u8; 32][..])
        );
        assert_eq!(header.input_digest, &[9u8; 32][..]);
        assert_eq!(header.signature, &[10u8; 64][..]);
        assert_eq!(header.encoded.len() + 4 + 24, frame.len());
        assert_eq!(header.body.len() + 64, header.encoded.len());
        assert_eq!(data, &[0u8; 24][..]);
        assert_eq!(read_header(header.encoded), Some(header.clone()));
        let scalar = request("uint8", &[], &[5]);
        assert_eq!(read_request(&scalar).unwrap().1, &[5u8][..]);
        // Dimensions whose product overflows, times a zero one: an empty input.
        let empty = request("float64", &[u32::MAX, u32::MAX, u32::MAX, 0], &[]);
        assert!(read_request(&empty).unwrap().1.is_empty());
    }

    #[test]
    fn anything_else_is_left_to_the_general_reader() {
        let good = request("float32", &[2, 3], &[0; 24]);
        assert!(read_request(&request("float32", &[2, 3], &[0; 23])).is_none());
        assert!(read_request(&request("complex64", &[2], &[0; 16])).is_none());
        assert!(read_request(&request("uint8", &[1; 9], &[0; 1])).is_none());
        assert!(read_request(&request("uint8", &[u32::MAX; 8], &[0; 1])).is_none());
        for cut in 0..good.len() {
            assert!(read_request(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(read_request(&longer).is_none());
        for (at, value) in [(0, 2u8), (1, 2)] {
            let mut other = good.clone();
            other[at] = value;
            assert!(read_request(&other).is_none());
        }
        let big = vec![0u8; MAX_REQUEST_BYTES + 1];
        assert!(read_request(&request("uint8", &[big.len() as u32], &big)).is_none());
    }
}
