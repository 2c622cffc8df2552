//! Building blocks for [`AppendOnlyStore::subscribe`](crate::AppendOnlyStore::subscribe):
//! a sequence-number watch and a tailing stream that never drops changes.
//!
//! A store publishes its new head sequence number to a [`SeqWatch`] after
//! each append becomes visible. [`tail`] turns a receiver plus a `scan`
//! function into a [`ChangeStream`]: it scans from its cursor whenever the
//! head moves, so a slow subscriber falls behind but never loses a change,
//! and memory stays bounded by one page.

use std::collections::VecDeque;
use std::future::Future;

use tokio::sync::watch;

use crate::error::Result;
use crate::store::{ChangeStream, ScanItem};

/// The latest visible sequence number of a store, for subscribers.
#[derive(Debug)]
pub struct SeqWatch {
    tx: watch::Sender<u64>,
}

impl SeqWatch {
    /// Start at `seq`.
    pub fn new(seq: u64) -> Self {
        SeqWatch {
            tx: watch::Sender::new(seq),
        }
    }

    /// Announce that every change up to `seq` is visible. Lower values than
    /// the current one are ignored.
    pub fn publish(&self, seq: u64) {
        self.tx.send_if_modified(|cur| {
            if seq > *cur {
                *cur = seq;
                true
            } else {
                false
            }
        });
    }

    /// The last published sequence number.
    pub fn current(&self) -> u64 {
        *self.tx.borrow()
    }

    /// A receiver for [`tail`].
    pub fn receiver(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// A stream of every change after `after`, fetched with `fetch(after, limit)`
/// in pages of `page` whenever `rx` announces a higher sequence number.
///
/// `fetch` returns `Ok(None)` once the store is gone; the stream then ends.
/// The stream also ends when the [`SeqWatch`] is dropped, after delivering
/// what was announced. A fetch error is yielded once and ends the stream.
pub fn tail<F, Fut>(rx: watch::Receiver<u64>, after: u64, page: usize, fetch: F) -> ChangeStream
where
    F: FnMut(u64, usize) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<Vec<ScanItem>>>> + Send + 'static,
{
    struct State<F> {
        rx: watch::Receiver<u64>,
        cursor: u64,
        page: usize,
        buf: VecDeque<ScanItem>,
        fetch: F,
        done: bool,
    }
    let state = State {
        rx,
        cursor: after,
        page: page.max(1),
        buf: VecDeque::new(),
        fetch,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.buf.pop_front() {
                return Some((Ok(item.meta), st));
            }
            if st.done {
                return None;
            }
            let latest = *st.rx.borrow_and_update();
            if latest > st.cursor {
                match (st.fetch)(st.cursor, st.page).await {
                    Ok(Some(items)) if !items.is_empty() => {
                        // Keep only strictly increasing sequence numbers.
                        for item in items {
                            if item.seq > st.cursor {
                                st.cursor = item.seq;
                                st.buf.push_back(item);
                            }
                        }
                        if st.buf.is_empty() && st.rx.changed().await.is_err() {
                            st.done = true;
                        }
                    }
                    Ok(Some(_)) => {
                        if st.rx.changed().await.is_err() {
                            st.done = true;
                        }
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
            } else if st.rx.changed().await.is_err() {
                // The store is gone; deliver whatever was announced last.
                if *st.rx.borrow() <= st.cursor {
                    return None;
                }
            }
        }
    }))
}
