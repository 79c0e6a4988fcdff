//! The header-map wire format (proxy-wasm-abi.md §4), in one place and as pure functions so it can
//! be unit-tested and fuzzed:
//!
//! ```text
//! u32 N | N × (u32 key_len, u32 value_len) | N × (key, 0x00, value, 0x00)
//! ```
//! all little-endian, lengths excluding the NULs.

use crate::types::Pairs;

/// Why a serialized map was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    /// The buffer ends before the data its header announces.
    #[error("serialized map truncated")]
    Truncated,
    /// A key or value is not followed by its NUL terminator.
    #[error("serialized map entry missing its NUL terminator")]
    MissingNul,
    /// More entries than the configured cap.
    #[error("serialized map has {count} entries, more than the cap of {cap}")]
    TooManyEntries {
        /// Entries announced.
        count: u64,
        /// Allowed.
        cap: usize,
    },
    /// More bytes than the configured cap.
    #[error("serialized map is {size} bytes, more than the cap of {cap}")]
    TooLarge {
        /// Bytes.
        size: u64,
        /// Allowed.
        cap: usize,
    },
}

/// Caps applied to every map crossing the host/guest boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairsCaps {
    /// Maximum number of entries.
    pub max_entries: usize,
    /// Maximum serialized size in bytes.
    pub max_bytes: usize,
}

impl PairsCaps {
    /// No practical limit (for tests and fuzzing).
    pub const UNLIMITED: Self = Self {
        max_entries: usize::MAX,
        max_bytes: usize::MAX,
    };
}

/// The exact serialized size of `pairs` (computed in u64 so it cannot overflow).
pub fn serialized_len<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> u64 {
    let mut n = 4u64;
    for (k, v) in pairs {
        n += 8 + k.as_ref().len() as u64 + v.as_ref().len() as u64 + 2;
    }
    n
}

/// Serializes a map. An empty map gives `[0, 0, 0, 0]` (N = 0); callers that want Envoy's
/// "size 0, null pointer" answer for an empty map check `pairs.is_empty()` first.
pub fn serialize<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    pairs: &[(K, V)],
    caps: PairsCaps,
) -> Result<Vec<u8>, PairsError> {
    if pairs.len() > caps.max_entries {
        return Err(PairsError::TooManyEntries {
            count: pairs.len() as u64,
            cap: caps.max_entries,
        });
    }
    let size = serialized_len(pairs);
    if size > caps.max_bytes as u64 || size > u32::MAX as u64 {
        return Err(PairsError::TooLarge {
            size,
            cap: caps.max_bytes,
        });
    }
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    Ok(out)
}

/// Parses a serialized map. Empty input (size 0) is an empty map, as the SDK and Envoy treat it;
/// so is the spec's one-byte form `[0]`. Trailing bytes after the last entry are ignored.
pub fn deserialize(data: &[u8], caps: PairsCaps) -> Result<Pairs, PairsError> {
    if data.len() > caps.max_bytes {
        return Err(PairsError::TooLarge {
            size: data.len() as u64,
            cap: caps.max_bytes,
        });
    }
    if data.is_empty() || data == [0] {
        return Ok(Vec::new());
    }
    let count = u64::from(read_u32(data, 0)?);
    if count > caps.max_entries as u64 {
        return Err(PairsError::TooManyEntries {
            count,
            cap: caps.max_entries,
        });
    }
    // Every entry needs at least 8 header bytes and 2 NULs: reject absurd counts before allocating.
    if 4 + count * 10 > data.len() as u64 {
        return Err(PairsError::Truncated);
    }
    let count = count as usize;
    let mut lens = Vec::with_capacity(count);
    for i in 0..count {
        let k = read_u32(data, 4 + i * 8)? as usize;
        let v = read_u32(data, 8 + i * 8)? as usize;
        lens.push((k, v));
    }
    let mut pos = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (klen, vlen) in lens {
        let key = take(data, &mut pos, klen)?;
        let value = take(data, &mut pos, vlen)?;
        out.push((key.to_vec(), value.to_vec()));
    }
    Ok(out)
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, PairsError> {
    let bytes = data
        .get(at..at.checked_add(4).ok_or(PairsError::Truncated)?)
        .ok_or(PairsError::Truncated)?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Takes `len` bytes then a NUL terminator at `*pos`.
fn take<'a>(data: &'a [u8], pos: &mut usize, len: usize) -> Result<&'a [u8], PairsError> {
    let end = pos.checked_add(len).ok_or(PairsError::Truncated)?;
    let bytes = data.get(*pos..end).ok_or(PairsError::Truncated)?;
    match data.get(end) {
        Some(0) => {}
        Some(_) => return Err(PairsError::MissingNul),
        None => return Err(PairsError::Truncated),
    }
    *pos = end + 1;
    Ok(bytes)
}

/// Splits a property path (`segments joined by 0x00`, no trailing NUL) into its segments.
/// An empty path is no segments.
pub fn split_path(path: &[u8]) -> Vec<&[u8]> {
    if path.is_empty() {
        return Vec::new();
    }
    path.split(|b| *b == 0).collect()
}

/// Runs `f` over the segments of a property path, split on the stack (paths of more than
/// [`INLINE_SEGMENTS`] segments go through [`split_path`]): property reads and writes are
/// frequent, and a heap vector per call showed in the edge chain's profile.
pub fn with_segments<R>(path: &[u8], f: impl FnOnce(&[&[u8]]) -> R) -> R {
    if path.is_empty() {
        return f(&[]);
    }
    let mut segments: [&[u8]; INLINE_SEGMENTS] = [&[]; INLINE_SEGMENTS];
    let mut n = 0;
    let mut start = 0;
    for i in memchr::memchr_iter(0, path) {
        if n + 1 == INLINE_SEGMENTS {
            return f(&split_path(path));
        }
        segments[n] = &path[start..i];
        n += 1;
        start = i + 1;
    }
    segments[n] = &path[start..];
    f(&segments[..=n])
}

/// Property path segments split without allocating.
pub const INLINE_SEGMENTS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    const U: PairsCaps = PairsCaps::UNLIMITED;

    #[test]
    fn matches_the_documented_example() {
        let bytes = serialize(&[("a", "1"), ("b", "22")], U).unwrap();
        let expected: Vec<u8> = vec![
            2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b', 0,
            b'2', b'2', 0,
        ];
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), 29);
        assert_eq!(serialized_len(&[("a", "1"), ("b", "22")]), 29);
    }

    #[test]
    fn round_trips_order_duplicates_and_binary_values() {
        let pairs: Pairs = vec![
            (b"x".to_vec(), b"1".to_vec()),
            (b"x".to_vec(), vec![0xff, 0x00, 0x01]),
            (b":path".to_vec(), Vec::new()),
        ];
        let bytes = serialize(&pairs, U).unwrap();
        assert_eq!(deserialize(&bytes, U).unwrap(), pairs);
    }

    #[test]
    fn empty_forms() {
        assert_eq!(serialize::<&[u8], &[u8]>(&[], U).unwrap(), vec![0, 0, 0, 0]);
        assert!(deserialize(&[], U).unwrap().is_empty());
        assert!(deserialize(&[0], U).unwrap().is_empty());
        assert!(deserialize(&[0, 0, 0, 0], U).unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(deserialize(&[1, 0], U), Err(PairsError::Truncated));
        // one entry announced, no room for it
        assert_eq!(deserialize(&[1, 0, 0, 0], U), Err(PairsError::Truncated));
        // absurd count is rejected without allocating
        assert_eq!(
            deserialize(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], U),
            Err(PairsError::Truncated)
        );
        // lengths pointing past the end
        let mut bad = serialize(&[("a", "b")], U).unwrap();
        bad[4] = 200;
        assert_eq!(deserialize(&bad, U), Err(PairsError::Truncated));
        // missing NUL
        let mut bad = serialize(&[("a", "b")], U).unwrap();
        let n = bad.len();
        bad[n - 3] = b'!';
        assert_eq!(deserialize(&bad, U), Err(PairsError::MissingNul));
        // huge lengths do not overflow
        let mut bad = serialize(&[("a", "b")], U).unwrap();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(deserialize(&bad, U).is_err());
    }

    #[test]
    fn caps_are_enforced_both_ways() {
        let caps = PairsCaps {
            max_entries: 1,
            max_bytes: 64,
        };
        let two = [("a", "1"), ("b", "2")];
        assert!(matches!(
            serialize(&two, caps),
            Err(PairsError::TooManyEntries { .. })
        ));
        let bytes = serialize(&two, U).unwrap();
        assert!(matches!(
            deserialize(&bytes, caps),
            Err(PairsError::TooManyEntries { .. })
        ));
        let big = [("k", "v".repeat(100))];
        assert!(matches!(
            serialize(&big, caps),
            Err(PairsError::TooLarge { .. })
        ));
    }

    #[test]
    fn property_paths() {
        assert_eq!(
            split_path(b"request\0path"),
            vec![&b"request"[..], &b"path"[..]]
        );
        assert_eq!(split_path(b"plugin_name"), vec![&b"plugin_name"[..]]);
        assert!(split_path(b"").is_empty());
        for path in [
            &b"request\x00path"[..],
            b"plugin_name",
            b"",
            b"a\x00\x00b\x00",
            b"1\x002\x003\x004\x005\x006\x007\x008",
            b"1\x002\x003\x004\x005\x006\x007\x008\x009\x0010",
        ] {
            let stack: Vec<Vec<u8>> =
                with_segments(path, |s| s.iter().map(|x| x.to_vec()).collect());
            let heap: Vec<Vec<u8>> = split_path(path).iter().map(|x| x.to_vec()).collect();
            assert_eq!(stack, heap, "{path:?}");
        }
    }

    /// A deterministic mini-fuzz: arbitrary bytes never panic, and what parses re-serializes to a
    /// prefix-equal form.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..64);
            let mut data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if len >= 4 && rng.bool() {
                data[0..4].copy_from_slice(&(rng.u32(0..4)).to_le_bytes());
            }
            if let Ok(pairs) = deserialize(&data, U) {
                let again = serialize(&pairs, U).unwrap();
                if !pairs.is_empty() {
                    assert_eq!(&data[..again.len()], &again[..]);
                }
            }
        }
    }
}
