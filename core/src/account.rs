//! The OpenAI account's limits: usage tiers per model, resolved into explicit numbers.
//!
//! Source: `shared/reference/openai-api-facts.md` §7 (gpt-4o-mini and gpt-4o model pages).

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use crate::tokens::Model;

/// Explicit realtime and batch limits of one organization for one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLimits {
    /// The model these limits are for.
    pub model: Model,
    /// Requests per minute.
    pub rpm: NonZeroU64,
    /// Tokens per minute.
    pub tpm: NonZeroU64,
    /// Requests per day, on tiers that have one.
    pub rpd: Option<NonZeroU64>,
    /// Enqueued input tokens the Batch API queue holds at once.
    pub batch_queue_tokens: NonZeroU64,
}

/// Published limits per tier: (rpm, rpd, tpm, batch queue tokens). Facts §7.
fn tier_row(model: Model, tier: u8) -> Option<(u64, Option<u64>, u64, u64)> {
    Some(match (model, tier) {
        (Model::Gpt4oMini, 1) => (500, Some(10_000), 200_000, 2_000_000),
        (Model::Gpt4oMini, 2) => (5_000, None, 2_000_000, 20_000_000),
        (Model::Gpt4oMini, 3) => (5_000, None, 4_000_000, 40_000_000),
        (Model::Gpt4oMini, 4) => (10_000, None, 10_000_000, 1_000_000_000),
        (Model::Gpt4oMini, 5) => (30_000, None, 150_000_000, 15_000_000_000),
        // gpt-4o: only tier 1 and tier 5 are in the facts file; the rest are not guessed.
        (Model::Gpt4o, 1) => (500, None, 30_000, 90_000),
        (Model::Gpt4o, 5) => (10_000, None, 30_000_000, 5_000_000_000),
        _ => return None,
    })
}

/// An unknown (model, tier) pair.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tier: no published limits for {model} tier {tier} (known: {known})")]
pub struct UnknownTier {
    /// The model asked for.
    pub model: Model,
    /// The tier asked for.
    pub tier: u8,
    /// The tiers that are known for this model.
    pub known: String,
}

impl AccountLimits {
    /// The published limits of `model` at usage tier `tier`.
    pub fn tier(model: Model, tier: u8) -> Result<AccountLimits, UnknownTier> {
        let nz = |v: u64| NonZeroU64::new(v).unwrap_or(NonZeroU64::MIN);
        match tier_row(model, tier) {
            Some((rpm, rpd, tpm, queue)) => Ok(AccountLimits {
                model,
                rpm: nz(rpm),
                tpm: nz(tpm),
                rpd: rpd.and_then(NonZeroU64::new),
                batch_queue_tokens: nz(queue),
            }),
            None => Err(UnknownTier {
                model,
                tier,
                known: (0..=9)
                    .filter(|t| tier_row(model, *t).is_some())
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_resolve_to_published_numbers() {
        let t1 = AccountLimits::tier(Model::Gpt4oMini, 1).unwrap();
        assert_eq!((t1.rpm.get(), t1.tpm.get()), (500, 200_000));
        assert_eq!(t1.batch_queue_tokens.get(), 2_000_000);
        let t2 = AccountLimits::tier(Model::Gpt4oMini, 2).unwrap();
        assert_eq!(
            (t2.rpm.get(), t2.tpm.get(), t2.rpd),
            (5_000, 2_000_000, None)
        );
        let err = AccountLimits::tier(Model::Gpt4o, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tier: no published limits for gpt-4o tier 3 (known: 1, 5)"
        );
    }
}
