//! An HTTP/1.1 request-framing watcher that sees the raw bytes of a downstream connection.
//!
//! hyper follows RFC 9112 §6.3 and *repairs* a request that carries both `Content-Length` and
//! `Transfer-Encoding` (it drops the length). A proxy must refuse such a request instead: it is the
//! classic request-smuggling shape, and the next hop may frame it the other way. hyper does not
//! expose the raw head, so this watcher follows the message boundaries of the byte stream itself
//! (heads, fixed-length bodies, chunked bodies) and records, for every request head, whether its
//! framing conflicts. The service pops one verdict per request, in order. On anything it does not
//! understand (HTTP/2, an upgrade, a head hyper will reject anyway) it switches itself off and
//! reports no conflicts, leaving the judgement to hyper.

use std::collections::VecDeque;

/// Largest head the watcher buffers; past it hyper answers 431 anyway.
const MAX_HEAD: usize = 1 << 20;
/// Bytes held after an upgrade head until the service knows whether the upgrade happened.
const MAX_HELD: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    /// After a head asking for an upgrade (or CONNECT): the bytes that follow are a tunnel if the
    /// upstream agreed, the next request if not. Only [`FramingWatcher::resume`] (the service saw
    /// no `101`) brings the watcher back; any byte before that switches it off.
    AwaitUpgrade,
    Off,
}

/// Follows request framing on one HTTP/1.1 connection.
#[derive(Debug)]
pub struct FramingWatcher {
    state: State,
    /// Bytes of the current head (or chunk-size / trailer line) not yet complete.
    line: Vec<u8>,
    held: Vec<u8>,
    verdicts: VecDeque<bool>,
}

impl Default for FramingWatcher {
    fn default() -> Self {
        Self {
            state: State::Head,
            line: Vec::new(),
            held: Vec::new(),
            verdicts: VecDeque::new(),
        }
    }
}

impl FramingWatcher {
    /// Whether the watcher still follows the stream.
    pub fn is_on(&self) -> bool {
        !matches!(self.state, State::Off)
    }

    /// Whether it waits to learn if the last head's upgrade happened.
    pub fn awaits_upgrade(&self) -> bool {
        matches!(self.state, State::AwaitUpgrade)
    }

    /// The last head's upgrade did not happen: the bytes after it are new requests.
    pub fn resume(&mut self) {
        if self.awaits_upgrade() {
            self.state = State::Head;
            let held = std::mem::take(&mut self.held);
            self.feed(&held);
        }
    }

    /// The verdict for the next complete head, in order: `true` if it had both framings.
    pub fn pop_verdict(&mut self) -> Option<bool> {
        self.verdicts.pop_front()
    }

    /// Feeds bytes as they are read from the socket.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::AwaitUpgrade => {
                    if self.held.len() + data.len() > MAX_HELD {
                        return self.off();
                    }
                    self.held.extend_from_slice(data);
                    return;
                }
                State::Body(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkData(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::Head => {
                    // Skip the empty lines RFC 9112 §2.2 lets a client send between requests.
                    if self.line.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|b| matches!(b, b'\r' | b'\n'))
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                        // The common case: the whole head arrived in one read; parse it in place.
                        if let Some(end) = head_end(data, 0) {
                            let (head, rest) = data.split_at(end);
                            self.on_head(head);
                            data = rest;
                            continue;
                        }
                    }
                    let start = self.line.len().saturating_sub(2);
                    let (used, done) = take_until(&mut self.line, data, start, head_end);
                    data = &data[used..];
                    if self.line.len() > MAX_HEAD {
                        self.off();
                    } else if done {
                        let head = std::mem::take(&mut self.line);
                        self.on_head(&head);
                    }
                }
                State::ChunkSize | State::ChunkDataEnd | State::Trailers => {
                    let start = self.line.len();
                    let (used, done) = take_until(&mut self.line, data, start, line_end);
                    data = &data[used..];
                    if self.line.len() > 4096 {
                        self.off();
                    } else if done {
                        self.on_line();
                    }
                }
            }
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.line = Vec::new();
        self.held = Vec::new();
    }

    fn on_head(&mut self, head: &[u8]) {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return self.off();
        }
        // Only the framing fields matter here; hyper validates the head itself (and closes the
        // connection on anything malformed), so a line scan is enough and much cheaper than a
        // second full parse. A header line is `name:value` with no space before the colon and
        // no leading whitespace (obs-fold is rejected by hyper in requests).
        let mut lines = head.split(|&b| b == b'\n');
        let request_line = lines.next().unwrap_or_default();
        let request_line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
        let plausible = request_line.first().is_some_and(u8::is_ascii_uppercase)
            && (request_line.ends_with(b" HTTP/1.1") || request_line.ends_with(b" HTTP/1.0"));
        if !plausible {
            return self.off(); // hyper answers 400 and closes
        }
        let connect =
            request_line.len() >= 8 && request_line[..8].eq_ignore_ascii_case(b"CONNECT ");
        let (mut cl, mut te, mut upgrade) = (None::<u64>, false, false);
        let mut te_chunked_last = false;
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                let v = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                match (v, cl) {
                    (None, _) => return self.off(),
                    (Some(n), Some(prev)) if n != prev => return self.off(), // hyper rejects it
                    (Some(n), _) => cl = Some(n),
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te = true;
                te_chunked_last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        self.verdicts.push_back(te && cl.is_some());
        if upgrade || connect {
            self.state = State::AwaitUpgrade; // the rest may be a tunnel
            return;
        }
        self.state = match (te, cl) {
            (true, _) if te_chunked_last => State::ChunkSize,
            (true, _) => return self.off(),
            (false, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head,
        };
    }

    fn on_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.state = match self.state {
            State::ChunkSize => {
                let hex = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or(&[])
                    .trim_ascii();
                match std::str::from_utf8(hex)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => return self.off(),
                }
            }
            State::ChunkDataEnd if line.is_empty() => State::ChunkSize,
            State::ChunkDataEnd => return self.off(),
            State::Trailers if line.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => return self.off(),
        };
    }
}

/// End (exclusive) of the first empty line at or after `from`: the end of a head. Like httparse,
/// accepts LF as well as CRLF line ends, so a head the parser takes is a head the watcher sees.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = memchr::memchr(b'\n', &buf[at..]) {
        let nl = at + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => at = nl + 1,
        }
    }
    None
}

/// End (exclusive) of the first line at or after `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', &buf[from..]).map(|i| from + i + 1)
}

/// Appends bytes to `acc` up to the end `find` reports (searching from `from` in `acc`).
/// Returns how many bytes of `data` were used and whether the end was found.
fn take_until(
    acc: &mut Vec<u8>,
    data: &[u8],
    from: usize,
    find: fn(&[u8], usize) -> Option<usize>,
) -> (usize, bool) {
    let old = acc.len();
    acc.extend_from_slice(data);
    match find(acc, from.min(old)) {
        Some(end) => {
            acc.truncate(end);
            (end - old, true)
        }
        None => (data.len(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split: usize) -> (Vec<bool>, bool) {
        let mut w = FramingWatcher::default();
        for chunk in stream.chunks(split) {
            w.feed(chunk);
        }
        let on = w.is_on();
        (w.verdicts.into_iter().collect(), on)
    }

    #[test]
    fn follows_pipelined_requests_across_any_split() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /e HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in [1, 2, 3, 7, 64, stream.len()] {
            let (v, on) = verdicts(stream, split);
            assert_eq!(v, [false, false, false, true, false], "split {split}");
            assert!(on);
        }
    }

    #[test]
    fn bare_lf_heads_and_chunk_lines_are_followed() {
        let stream = b"GET /lf HTTP/1.1\nHost: x\n\nPOST /c HTTP/1.1\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n\
POST /s HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for split in [1, 3, stream.len()] {
            let (v, on) = verdicts(stream, split);
            assert_eq!(v, [false, false, true], "split {split}");
            assert!(on);
        }
    }

    #[test]
    fn body_text_that_looks_like_a_head_is_not_a_head() {
        let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        s.extend_from_slice(body);
        s.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(verdicts(&s, 5).0, [false, false]);
    }

    #[test]
    fn switches_off_for_h2_tunnels_and_garbage() {
        assert!(!verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 4).1);
        // An upgrade holds what follows (a tunnel, or requests if the upgrade is declined);
        // too much of it and the watcher gives up.
        let mut w = FramingWatcher::default();
        w.feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nxx");
        assert!(w.awaits_upgrade());
        w.feed(&vec![0u8; MAX_HELD]);
        assert!(!w.is_on());
        assert!(!verdicts(b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 4).1);
        let mut w = FramingWatcher::default();
        w.feed(b"\x16\x03\x01garbage\r\n\r\n");
        assert!(!w.is_on());
        assert_eq!(w.pop_verdict(), None);
    }
}
