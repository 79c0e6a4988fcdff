//! The replay buffer that lets a request body go out again on a retry: every chunk read from
//! the client is kept (by reference count) up to a limit while it streams to the first attempt.
//! A body wrapper like the others here; the retry policy that uses it is `upstream::retry`'s.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::{BoxError, ProxyBody};

/// A request body kept for replay while it streams to the first attempt: every chunk read from
/// the client is also kept (by reference count, no copy) up to `limit` bytes. A retry reads the
/// kept chunks first, then the rest of the client's body. Past the limit the kept chunks are
/// dropped and the request can no longer be retried; the attempt in progress streams on.
pub struct Replay {
    state: RefCell<ReplayState>,
}

struct ReplayState {
    inner: ProxyBody,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    size: u64,
    limit: u64,
    /// Over the limit, or the client's body failed: no more replays.
    spent: bool,
    ended: bool,
    /// The attempt whose reader is current; older readers are cut off.
    attempt: u32,
    hint: SizeHint,
}

impl Replay {
    pub fn new(inner: ProxyBody, limit: u64) -> Rc<Self> {
        let hint = inner.size_hint();
        Rc::new(Self {
            state: RefCell::new(ReplayState {
                inner,
                chunks: Vec::new(),
                trailers: None,
                size: 0,
                limit,
                spent: false,
                ended: false,
                attempt: 0,
                hint,
            }),
        })
    }

    /// Whether the whole body can still be sent again.
    pub fn replayable(&self) -> bool {
        !self.state.borrow().spent
    }

    /// A reader for the next attempt, from the first byte. The previous attempt's reader (which
    /// a pump task or hyper may still hold for a moment) fails from now on.
    pub fn reader(self: &Rc<Self>) -> ProxyBody {
        let attempt = {
            let mut st = self.state.borrow_mut();
            st.attempt += 1;
            st.attempt
        };
        ProxyBody::Replay(ReplayBody {
            replay: self.clone(),
            attempt,
            pos: 0,
            trailers_sent: false,
        })
    }
}

/// One attempt's view of a [`Replay`].
pub struct ReplayBody {
    replay: Rc<Replay>,
    attempt: u32,
    pos: usize,
    trailers_sent: bool,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut st = this.replay.state.borrow_mut();
        if st.attempt != this.attempt {
            return Poll::Ready(Some(Err("request body taken over by a retry".into())));
        }
        if !st.spent && this.pos < st.chunks.len() {
            let c = st.chunks[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        if st.ended {
            if !this.trailers_sent
                && let Some(t) = &st.trailers
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        }
        let st = &mut *st;
        match Pin::new(&mut st.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                st.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                st.spent = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !st.spent {
                        st.size += data.len() as u64;
                        if st.size > st.limit {
                            st.spent = true;
                            st.chunks = Vec::new();
                        } else {
                            st.chunks.push(data.clone());
                            this.pos += 1;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    st.trailers = Some(t.clone());
                    st.ended = true;
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = self.replay.state.borrow();
        st.attempt == self.attempt
            && st.ended
            && (st.spent || self.pos >= st.chunks.len())
            && (st.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        // Every attempt sends the whole body: the length the client announced.
        self.replay.state.borrow().hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn replay_resends_the_body_and_cuts_off_the_old_reader() {
        block_on(async {
            let r = Replay::new(ProxyBody::from(Bytes::from_static(b"hello")), 1024);
            let mut first = r.reader();
            // The first attempt reads part of it (here: all of one chunk), then fails.
            let f = first.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), "hello");
            assert!(r.replayable());
            let second = r.reader();
            assert!(first.frame().await.unwrap().is_err(), "old reader cut off");
            let all = second.collect().await.unwrap().to_bytes();
            assert_eq!(all, "hello");
        });
    }

    #[test]
    fn replay_gives_up_past_the_limit() {
        block_on(async {
            let r = Replay::new(ProxyBody::from(Bytes::from(vec![7u8; 100])), 10);
            let first = r.reader();
            let all = first.collect().await.unwrap().to_bytes();
            assert_eq!(
                all.len(),
                100,
                "the attempt in progress still gets everything"
            );
            assert!(!r.replayable());
        });
    }
}
