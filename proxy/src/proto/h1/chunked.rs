//! Chunked transfer coding (RFC 9112 §7.1), decoded and encoded the same way by both roles: the
//! server reading a request body, the client reading a response body.
//!
//! Decoding is strict, because what Weir accepts it re-frames for the next hop, and a lenient
//! reading that differs from the next hop's is how bodies are smuggled: every line must end in
//! CRLF (a bare LF is refused), a chunk size has at most 15 hex digits (so it cannot overflow),
//! a chunk-size line with its extensions is at most [`MAX_CHUNK_LINE`] bytes and may hold no
//! control byte, the CRLF after a chunk's data must be exactly that, and the trailer section is
//! at most [`MAX_TRAILERS`] bytes of well-formed fields.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line, extensions included (without its CRLF).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Most hex digits in a chunk size: 15 cannot overflow a `u64`.
const MAX_SIZE_DIGITS: usize = 15;

/// Where the decoding of a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section after the last chunk: bytes of it seen so far.
    Trailers(usize),
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes (never empty).
    Data(Bytes),
    /// A trailer field.
    Trailer(HeaderName, HeaderValue),
    /// The last chunk and the trailer section have been read: the body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Decodes what `buf` holds as far as one step goes, consuming it.
pub fn decode(state: &mut ChunkState, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    loop {
        match *state {
            ChunkState::Data(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = n.min(buf.len() as u64) as usize;
                let data = buf.split_to(take).freeze();
                *state = match n - take as u64 {
                    0 => ChunkState::DataEnd,
                    left => ChunkState::Data(left),
                };
                return Ok(Decoded::Data(data));
            }
            ChunkState::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if buf[..2] != *b"\r\n" {
                    return Err("chunk data not followed by CRLF");
                }
                let _ = buf.split_to(2);
                *state = ChunkState::Size;
            }
            ChunkState::Size => {
                let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                    return Ok(Decoded::NeedMore);
                };
                *state = match chunk_size(&line).ok_or("invalid chunk size line")? {
                    0 => ChunkState::Trailers(0),
                    n => ChunkState::Data(n),
                };
            }
            ChunkState::Trailers(seen) => {
                let Some(line) = take_line(buf, MAX_TRAILERS - seen)? else {
                    return Ok(Decoded::NeedMore);
                };
                if line.is_empty() {
                    *state = ChunkState::Size;
                    return Ok(Decoded::End);
                }
                let seen = seen + line.len() + 2;
                if seen > MAX_TRAILERS {
                    return Err("trailer section too large");
                }
                *state = ChunkState::Trailers(seen);
                let (name, value) = trailer_field(&line).ok_or("invalid trailer field")?;
                return Ok(Decoded::Trailer(name, value));
            }
        }
    }
}

/// Takes one CRLF-terminated line (without its CRLF) off the front of `buf`, if complete. A bare
/// LF, or a line longer than `max`, is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, &'static str> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i == 0 || buf[i - 1] != b'\r' => Err("bare LF in chunked framing"),
        Some(i) if i - 1 > max => Err("chunked framing line too long"),
        Some(i) => {
            let line = buf.split_to(i + 1).freeze();
            Ok(Some(line.slice(..i - 1)))
        }
        None if buf.len() > max + 1 => Err("chunked framing line too long"),
        None => Ok(None),
    }
}

/// `1*HEXDIG *( BWS ";" BWS chunk-ext )`: the size, or `None` for anything else.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_SIZE_DIGITS {
        return None;
    }
    let ext = line[digits..].trim_ascii_start();
    if !(ext.is_empty() || ext[0] == b';') {
        return None;
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// A trailer field line: a valid name right before the colon (no whitespace, so no obs-fold),
/// a valid value.
fn trailer_field(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = memchr::memchr(b':', line)?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
    Some((name, value))
}

/// `{size:x}\r\n` in `buf`: the line before a chunk of `n` bytes.
pub fn chunk_prefix(buf: &mut [u8; 20], n: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len() - 2;
    buf[i] = b'\r';
    buf[i + 1] = b'\n';
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The last chunk, the trailer fields (if any) and the final CRLF.
pub fn last_chunk(trailers: Option<&HeaderMap>) -> Vec<u8> {
    let mut last = Vec::with_capacity(64);
    last.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        last.extend_from_slice(name.as_str().as_bytes());
        last.extend_from_slice(b": ");
        last.extend_from_slice(value.as_bytes());
        last.extend_from_slice(b"\r\n");
    }
    last.extend_from_slice(b"\r\n");
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a whole body fed at once: its data and trailers, or the first error.
    fn decode_all(wire: &[u8]) -> Result<(Vec<u8>, HeaderMap), &'static str> {
        let mut buf = BytesMut::from(wire);
        let mut state = ChunkState::Size;
        let (mut data, mut trailers) = (Vec::new(), HeaderMap::new());
        loop {
            match decode(&mut state, &mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailer(n, v) => {
                    trailers.append(n, v);
                }
                Decoded::End => return Ok((data, trailers)),
                Decoded::NeedMore => return Err("incomplete"),
            }
        }
    }

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"5;name=value"), Some(5));
        assert_eq!(chunk_size(b"5 ; x"), Some(5));
        assert_eq!(chunk_size(b"fffffffffffffff"), Some(0xfff_ffff_ffff_ffff));
        for bad in [
            &b""[..],
            b"g",
            b"-1",
            b"+5",
            b"5x",
            b"0x5",
            b"1234567890123456",
            b"ffffffffffffffff",
            b"5;\x01",
            b"5;\x00",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lines_need_crlf_and_a_bound() {
        let mut b = BytesMut::from(&b"5\r\nrest"[..]);
        assert_eq!(take_line(&mut b, 100).unwrap().unwrap(), "5");
        assert_eq!(&b[..], b"rest");
        let mut bare = BytesMut::from(&b"5\nhello"[..]);
        assert!(take_line(&mut bare, 100).is_err());
        let mut long = BytesMut::from(&[b'a'; 200][..]);
        assert!(take_line(&mut long, 100).is_err());
        let mut long_complete = BytesMut::from(&[&[b'a'; 200][..], b"\r\n"].concat()[..]);
        assert!(take_line(&mut long_complete, 100).is_err());
        let mut partial = BytesMut::from(&b"5\r"[..]);
        assert!(take_line(&mut partial, 100).unwrap().is_none());
    }

    #[test]
    fn bodies_decode_with_their_trailers() {
        let (data, t) =
            decode_all(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(decode_all(b"0\r\n\r\n").unwrap().0, b"");
    }

    #[test]
    fn hostile_framing_is_refused() {
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nx: y\n\r\n",
            b"1234567890123456\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\nx: a\x00b\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
        ] {
            assert!(
                decode_all(wire).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let flood = [b"1;", &[b'e'; MAX_CHUNK_LINE][..], b"\r\nx\r\n0\r\n\r\n"].concat();
        assert!(decode_all(&flood).is_err());
        let mut big = b"0\r\n".to_vec();
        for i in 0..2000 {
            big.extend_from_slice(format!("x-{i}: vvvvvvvvvv\r\n").as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        assert!(
            decode_all(&big).is_err(),
            "a trailer section over {MAX_TRAILERS} bytes"
        );
    }

    #[test]
    fn prefixes_are_hex_and_the_last_chunk_carries_trailers() {
        let mut b = [0u8; 20];
        assert_eq!(chunk_prefix(&mut b, 0), b"0\r\n");
        assert_eq!(chunk_prefix(&mut b, 255), b"ff\r\n");
        assert_eq!(chunk_prefix(&mut b, 0x10000), b"10000\r\n");
        assert_eq!(chunk_prefix(&mut b, usize::MAX), b"ffffffffffffffff\r\n");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(last_chunk(Some(&t)), b"0\r\ngrpc-status: 0\r\n\r\n");
        assert_eq!(last_chunk(None), b"0\r\n\r\n");
    }
}
