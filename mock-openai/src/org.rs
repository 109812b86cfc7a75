//! Organizations: each has its account limits, realtime rate-limit buckets, enqueued batch
//! token queue, and the counters scripted faults are indexed by.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tagstorm_core::Time;
use tagstorm_core::account::AccountLimits;
use tagstorm_core::limit::{RateLimits, TokenQueue};

/// An organization of an [`crate::Upstream`], as returned by [`crate::Upstream::add_org`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrgId(pub(crate) u32);

impl OrgId {
    /// The organization's index in creation order.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// One organization's state.
#[derive(Debug)]
pub(crate) struct Org {
    /// `org-` + 24 alphanumerics, as shown in 429 and queue-limit messages.
    pub name: String,
    pub limits: AccountLimits,
    pub rate: RateLimits,
    pub queue: TokenQueue,
    /// Batches holding queue tokens, by the time they end: (end, batch index). Entries made
    /// stale by a cancellation are skipped when popped.
    pub ending: BinaryHeap<Reverse<(Time, usize)>>,
    /// Realtime requests seen so far (the index scripted faults use).
    pub requests_seen: u64,
    /// Batches created so far (the index scripted batch outcomes use).
    pub batches_created: u64,
    /// Indices of this organization's batches, oldest first.
    pub batches: Vec<usize>,
}

impl Org {
    pub fn new(name: String, limits: AccountLimits) -> Self {
        let mut rate = RateLimits::new(limits.rpm, limits.tpm);
        if let Some(rpd) = limits.rpd {
            rate = rate.with_rpd(rpd);
        }
        Org {
            name,
            limits,
            rate,
            queue: TokenQueue::new(limits.batch_queue_tokens.get()),
            ending: BinaryHeap::new(),
            requests_seen: 0,
            batches_created: 0,
            batches: Vec::new(),
        }
    }
}
