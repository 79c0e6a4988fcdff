//! The properties filters set on one stream (`proxy_set_property`): dotted path → bytes, read
//! back by later filters (`proxy_get_property`) and by the core (the route decision).
//!
//! A stream holds a handful (the route decision, trace ids, the principal, forwarded claims), so
//! keys and values share one buffer and are found by a scan: no hashing, and two allocations per
//! stream instead of two per property (the hashed map of owned strings cost 12 allocations per
//! request in the stock edge chain).

/// Properties of one stream. Setting a key again replaces its value.
#[derive(Debug, Default)]
pub struct Props {
    /// Keys and values, back to back; replaced values that did not fit in place stay behind as
    /// garbage until [`Props::compact`].
    buf: Vec<u8>,
    /// Per property: where its key and its value are in `buf`.
    entries: Vec<Entry>,
    /// Bytes of `buf` no entry points at.
    garbage: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: (usize, usize),
    value: (usize, usize),
}

/// Room reserved on the first property: a typical chain's properties without a regrowth.
const FIRST_BYTES: usize = 256;
const FIRST_ENTRIES: usize = 8;
/// Garbage beyond this (and beyond the live bytes) is compacted away.
const GARBAGE_SLACK: usize = 4096;

impl Props {
    /// No property is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        let e = self.find(key)?;
        Some(self.slice(self.entries[e].value))
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: &[u8]) {
        if self.entries.capacity() == 0 {
            self.entries.reserve(FIRST_ENTRIES);
            self.buf.reserve(FIRST_BYTES.max(key.len() + value.len()));
        }
        match self.find(key) {
            Some(e) => {
                let (at, len) = self.entries[e].value;
                if value.len() <= len {
                    self.buf[at..at + value.len()].copy_from_slice(value);
                    self.garbage += len - value.len();
                } else {
                    self.entries[e].value = (self.buf.len(), value.len());
                    self.buf.extend_from_slice(value);
                    self.garbage += len;
                }
                self.entries[e].value.1 = value.len();
            }
            None => {
                let k = (self.buf.len(), key.len());
                self.buf.extend_from_slice(key.as_bytes());
                let v = (self.buf.len(), value.len());
                self.buf.extend_from_slice(value);
                self.entries.push(Entry { key: k, value: v });
            }
        }
        if self.garbage > GARBAGE_SLACK && self.garbage > self.buf.len() - self.garbage {
            self.compact();
        }
    }

    fn find(&self, key: &str) -> Option<usize> {
        let key = key.as_bytes();
        self.entries
            .iter()
            .position(|e| e.key.1 == key.len() && self.slice(e.key) == key)
    }

    fn slice(&self, (at, len): (usize, usize)) -> &[u8] {
        &self.buf[at..at + len]
    }

    /// Rewrites `buf` with the live keys and values only.
    fn compact(&mut self) {
        let mut buf = Vec::with_capacity(self.buf.len() - self.garbage);
        for e in &mut self.entries {
            for part in [&mut e.key, &mut e.value] {
                let (at, len) = *part;
                *part = (buf.len(), len);
                buf.extend_from_slice(&self.buf[at..at + len]);
            }
        }
        self.buf = buf;
        self.garbage = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_replace() {
        let mut p = Props::default();
        assert!(p.is_empty());
        assert_eq!(p.get("weir.route.cluster"), None);
        p.set("weir.route.cluster", b"v2");
        p.set("weir.trace.span_id", b"00f067aa0ba902b7");
        assert!(!p.is_empty());
        assert_eq!(p.get("weir.route.cluster"), Some(&b"v2"[..]));
        // A key that is a prefix of another, or of the same length, is another key.
        assert_eq!(p.get("weir.route"), None);
        assert_eq!(p.get("weir.route.clustes"), None);
        // Shorter, longer and empty replacements.
        p.set("weir.route.cluster", b"v");
        assert_eq!(p.get("weir.route.cluster"), Some(&b"v"[..]));
        p.set("weir.route.cluster", b"a-much-longer-cluster-name");
        assert_eq!(
            p.get("weir.route.cluster"),
            Some(&b"a-much-longer-cluster-name"[..])
        );
        p.set("weir.route.cluster", b"");
        assert_eq!(p.get("weir.route.cluster"), Some(&b""[..]));
        assert_eq!(p.get("weir.trace.span_id"), Some(&b"00f067aa0ba902b7"[..]));
        assert_eq!(p.entries.len(), 2);
    }

    #[test]
    fn rewriting_one_key_keeps_memory_bounded() {
        let mut p = Props::default();
        p.set("other", b"kept");
        for i in 1..2000usize {
            // Each value is longer than the last: never fits in place.
            p.set("grow", &vec![b'x'; i % 300 + 1]);
            assert!(
                p.buf.len() <= 2 * GARBAGE_SLACK + 2 * 301 + 16,
                "{}",
                p.buf.len()
            );
        }
        assert_eq!(p.get("grow"), Some(&vec![b'x'; 1999 % 300 + 1][..]));
        assert_eq!(p.get("other"), Some(&b"kept"[..]));
    }
}
