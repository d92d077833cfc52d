//! The `Authorization` header value of a cached token, in copies spread
//! over cache lines so that threads attaching it do not contend.
//!
//! Cloning a `HeaderValue` increments a reference count. With one value
//! shared by every thread, that count's cache line moves between cores on
//! every request, and throughput stops scaling with threads. Each thread
//! here clones the copy of its own shard instead: as many distinct copies
//! as twice the available parallelism (at most [`SHARDS`]), each with its
//! reference count alone on its cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::HeaderValue;

/// Slots per token; a power of two, so a shard is picked with a mask.
const SHARDS: usize = 16;

pub(super) struct ShardedHeader {
    slots: [HeaderValue; SHARDS],
}

impl ShardedHeader {
    /// `Bearer <token>`, marked sensitive, or `None` if the token has
    /// characters that are not allowed in a header.
    pub(super) fn bearer(token: &str) -> Option<Self> {
        let distinct = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_mul(2)
            .next_power_of_two()
            .min(SHARDS);
        let mut copies = Vec::with_capacity(distinct);
        for _ in 0..distinct {
            copies.push(copy(token)?);
        }
        let first = copies.first()?.clone();
        let slots =
            std::array::from_fn(|slot| copies.get(slot % distinct).unwrap_or(&first).clone());
        Some(Self { slots })
    }

    /// The copy of the calling thread's shard.
    #[inline]
    pub(super) fn get(&self) -> &HeaderValue {
        &self.slots[shard() & (SHARDS - 1)]
    }
}

/// One copy, whose reference count has a cache line to itself.
fn copy(token: &str) -> Option<HeaderValue> {
    let mut value = Vec::with_capacity("Bearer ".len() + token.len());
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token.as_bytes());
    // `from_owner` keeps the count beside the owner in one allocation, which
    // the alignment of `Aligned` pads to whole cache lines. Every later clone
    // is that count alone: no allocation on the request path.
    let mut header = HeaderValue::from_maybe_shared(Bytes::from_owner(Aligned(value))).ok()?;
    header.set_sensitive(true);
    Some(header)
}

#[repr(align(128))]
struct Aligned(Vec<u8>);

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// This thread's shard: threads are numbered in the order they first ask.
#[inline]
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| match shard.get() {
        Some(index) => index,
        None => {
            let index = NEXT.fetch_add(1, Ordering::Relaxed);
            shard.set(Some(index));
            index
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_is_the_same_sensitive_bearer_value() {
        let header = ShardedHeader::bearer("abc.def").unwrap();
        for slot in &header.slots {
            assert_eq!(slot, "Bearer abc.def");
            assert!(slot.is_sensitive());
        }
        assert_eq!(header.get(), "Bearer abc.def");
        assert!(ShardedHeader::bearer("bad\ntoken").is_none());
    }

    #[test]
    fn threads_get_distinct_shards() {
        let here = shard();
        assert_eq!(shard(), here, "stable within a thread");
        let there = std::thread::spawn(shard).join().unwrap();
        assert_ne!(here, there);
    }
}
