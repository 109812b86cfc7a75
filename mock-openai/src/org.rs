//! Organizations: each has its account limits, realtime rate-limit buckets and enqueued batch
//! token queue per model, and the counters scripted faults are indexed by.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tagstorm_core::Time;
use tagstorm_core::account::AccountLimits;
use tagstorm_core::limit::{RateLimits, TokenQueue};
use tagstorm_core::tokens::Model;

/// An organization of an [`crate::Upstream`], as returned by [`crate::Upstream::add_org`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrgId(pub(crate) u32);

impl OrgId {
    /// The organization's index in creation order.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// One model's limits within an organization: OpenAI counts rate limits and the enqueued batch
/// tokens per organization *and* model, so a flood of gpt-4o-mini leaves gpt-4o untouched.
#[derive(Debug)]
pub(crate) struct ModelLimits {
    pub limits: AccountLimits,
    pub rate: RateLimits,
    pub queue: TokenQueue,
}

impl ModelLimits {
    fn new(limits: AccountLimits) -> Self {
        let mut rate = RateLimits::new(limits.rpm, limits.tpm);
        if let Some(rpd) = limits.rpd {
            rate = rate.with_rpd(rpd);
        }
        ModelLimits {
            limits,
            rate,
            queue: TokenQueue::new(limits.batch_queue_tokens.get()),
        }
    }
}

/// One organization's state.
#[derive(Debug)]
pub(crate) struct Org {
    /// `org-` + 24 alphanumerics, as shown in 429 and queue-limit messages.
    pub name: String,
    /// The limits as configured, for the configured model.
    pub limits: AccountLimits,
    /// Buckets and queue per model, in [`Model::ALL`] order.
    models: Vec<ModelLimits>,
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
    /// An organization with `limits` for their model. Every other model gets its own buckets:
    /// the published limits of the same `tier` where there are some, else the same numbers.
    pub fn new(name: String, limits: AccountLimits, tier: Option<u8>) -> Self {
        let models = Model::ALL
            .iter()
            .map(|&m| {
                let l = if m == limits.model {
                    limits
                } else {
                    tier.and_then(|t| AccountLimits::tier(m, t).ok())
                        .unwrap_or(AccountLimits { model: m, ..limits })
                };
                ModelLimits::new(l)
            })
            .collect();
        Org {
            name,
            limits,
            models,
            ending: BinaryHeap::new(),
            requests_seen: 0,
            batches_created: 0,
            batches: Vec::new(),
        }
    }

    /// The limits, buckets and queue of `model`.
    pub fn model(&self, model: Model) -> &ModelLimits {
        &self.models[model_index(model)]
    }

    /// [`Org::model`], mutably.
    pub fn model_mut(&mut self, model: Model) -> &mut ModelLimits {
        &mut self.models[model_index(model)]
    }

    /// Tokens enqueued for batches, over every model.
    pub fn enqueued(&self) -> u64 {
        self.models.iter().map(|m| m.queue.enqueued()).sum()
    }
}

fn model_index(model: Model) -> usize {
    Model::ALL.iter().position(|&m| m == model).unwrap_or(0)
}
