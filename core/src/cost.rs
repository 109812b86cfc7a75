//! What tagging costs in US dollars: a per-model price table and the Batch API discount.
//!
//! Prices and the discount are facts §7 of `reference/openai-api-facts.md` (OpenAI's model
//! pages and batch guide); a scenario can override every one of them.

use serde::{Deserialize, Serialize};

use crate::tokens::{Model, Usage};

/// How a request reaches the upstream, which decides its price.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// A synchronous `/v1/chat/completions` call.
    Realtime,
    /// A line of a Batch API job, billed at a discount.
    Batch,
}

/// A model's realtime price.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// US dollars per million input tokens.
    pub input_usd_per_mtok: f64,
    /// US dollars per million output tokens.
    pub output_usd_per_mtok: f64,
}

/// Realtime prices per model and the Batch API discount.
///
/// Serialized with one key per model name and a `batch_discount`; missing keys take the
/// defaults, so a scenario overrides only what it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceTable {
    #[serde(rename = "gpt-4o-mini")]
    gpt_4o_mini: Price,
    #[serde(rename = "gpt-4o")]
    gpt_4o: Price,
    /// The fraction taken off realtime prices for batch requests: 0.5 is "50% off".
    batch_discount: f64,
}

impl Default for PriceTable {
    fn default() -> PriceTable {
        PriceTable {
            // Facts §7: gpt-4o-mini $0.15 in / $0.60 out per 1M tokens (model page).
            gpt_4o_mini: Price {
                input_usd_per_mtok: 0.15,
                output_usd_per_mtok: 0.60,
            },
            // Facts §7: gpt-4o $2.50 in / $10.00 out per 1M tokens (model page).
            gpt_4o: Price {
                input_usd_per_mtok: 2.50,
                output_usd_per_mtok: 10.00,
            },
            // Facts §7: the Batch API's "50% cost discount" (batch guide, Batch FAQ).
            batch_discount: 0.5,
        }
    }
}

/// A price table that makes no sense.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PriceError {
    /// A price is negative, infinite or NaN.
    #[error("{model} {field} must be a finite non-negative number, got {value}")]
    BadPrice {
        /// The model whose price is wrong.
        model: Model,
        /// `input_usd_per_mtok` or `output_usd_per_mtok`.
        field: &'static str,
        /// The value found.
        value: f64,
    },
    /// The discount is outside `0.0..=1.0`.
    #[error("batch_discount must be between 0 and 1, got {value}")]
    BadDiscount {
        /// The value found.
        value: f64,
    },
}

impl PriceTable {
    /// `model`'s realtime price.
    pub fn price(&self, model: Model) -> Price {
        match model {
            Model::Gpt4oMini => self.gpt_4o_mini,
            Model::Gpt4o => self.gpt_4o,
        }
    }

    /// This table with `model`'s realtime price replaced by `p`.
    pub fn with_price(mut self, model: Model, p: Price) -> PriceTable {
        match model {
            Model::Gpt4oMini => self.gpt_4o_mini = p,
            Model::Gpt4o => self.gpt_4o = p,
        }
        self
    }

    /// This table with the batch discount replaced by `discount` (a fraction, 0.5 = half price).
    pub fn with_batch_discount(mut self, discount: f64) -> PriceTable {
        self.batch_discount = discount;
        self
    }

    /// The fraction taken off realtime prices for batch requests.
    pub fn batch_discount(&self) -> f64 {
        self.batch_discount
    }

    /// Checks that every price is finite and non-negative and the discount lies in `0..=1`.
    /// A table read from a scenario should pass this before it is used.
    pub fn validate(&self) -> Result<(), PriceError> {
        for model in Model::ALL {
            let p = self.price(model);
            for (field, value) in [
                ("input_usd_per_mtok", p.input_usd_per_mtok),
                ("output_usd_per_mtok", p.output_usd_per_mtok),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(PriceError::BadPrice {
                        model,
                        field,
                        value,
                    });
                }
            }
        }
        if !(0.0..=1.0).contains(&self.batch_discount) {
            return Err(PriceError::BadDiscount {
                value: self.batch_discount,
            });
        }
        Ok(())
    }

    /// The cost in US dollars of `usage` on `model` through `channel`.
    ///
    /// Token counts are converted to `f64`, exact below 2^53 tokens; the result carries the
    /// usual floating-point rounding, so compare it with a tolerance.
    pub fn cost_usd(&self, model: Model, channel: Channel, usage: Usage) -> f64 {
        let p = self.price(model);
        let realtime = (usage.input_tokens as f64 * p.input_usd_per_mtok
            + usage.output_tokens as f64 * p.output_usd_per_mtok)
            / 1e6;
        match channel {
            Channel::Realtime => realtime,
            Channel::Batch => realtime * (1.0 - self.batch_discount),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Channel::{Batch, Realtime};
    use Model::{Gpt4o, Gpt4oMini};

    fn check(model: Model, channel: Channel, input: u64, output: u64, expected_usd: f64) {
        let usage = Usage {
            input_tokens: input,
            output_tokens: output,
        };
        let got = PriceTable::default().cost_usd(model, channel, usage);
        assert!(
            (got - expected_usd).abs() <= 1e-12 * expected_usd.abs().max(1.0),
            "{model} {channel:?} {input}/{output}: got {got}, expected {expected_usd}"
        );
    }

    #[test]
    fn cost() {
        check(Gpt4oMini, Realtime, 1_000_000, 0, 0.15);
        check(Gpt4oMini, Batch, 1_000_000, 0, 0.075);
        check(Gpt4oMini, Realtime, 0, 1_000_000, 0.60);
        check(Gpt4oMini, Batch, 0, 1_000_000, 0.30);
        check(Gpt4o, Realtime, 1_000_000, 1_000_000, 12.50);
        check(Gpt4o, Batch, 1_000_000, 1_000_000, 6.25);
        check(Gpt4oMini, Realtime, 0, 0, 0.0);
        // 1,000 low-detail images at 2,833 input and 60 output tokens each:
        // 2,833,000 · $0.15/M + 60,000 · $0.60/M = $0.42495 + $0.036 = $0.46095.
        check(Gpt4oMini, Realtime, 2_833_000, 60_000, 0.46095);
        check(Gpt4oMini, Batch, 2_833_000, 60_000, 0.230475);
        // The same on gpt-4o, whose low-detail image is 85 tokens: $0.2125 + $0.60.
        check(Gpt4o, Realtime, 85_000, 60_000, 0.8125);
    }

    #[test]
    fn table() {
        let t = PriceTable::default();
        assert_eq!(t.batch_discount(), 0.5);
        assert_eq!(t.validate(), Ok(()));
        let p = Price {
            input_usd_per_mtok: 1.0,
            output_usd_per_mtok: 2.0,
        };
        let t = t.with_price(Gpt4o, p);
        assert_eq!(t.price(Gpt4o), p);
        assert_eq!(t.price(Gpt4oMini), PriceTable::default().price(Gpt4oMini));
        let bad = t.clone().with_batch_discount(1.5);
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "batch_discount must be between 0 and 1, got 1.5"
        );
        let bad = t.with_price(
            Gpt4oMini,
            Price {
                input_usd_per_mtok: f64::NAN,
                output_usd_per_mtok: 0.0,
            },
        );
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "gpt-4o-mini input_usd_per_mtok must be a finite non-negative number, got NaN"
        );
    }

    #[test]
    fn serde_overrides_only_what_is_given() {
        let t: PriceTable =
            serde_json::from_str(r#"{"gpt-4o":{"input_usd_per_mtok":5,"output_usd_per_mtok":20}}"#)
                .unwrap();
        assert_eq!(t.price(Gpt4o).output_usd_per_mtok, 20.0);
        assert_eq!(t.price(Gpt4oMini), PriceTable::default().price(Gpt4oMini));
        assert_eq!(t.batch_discount(), 0.5);
        let back: PriceTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<PriceTable>(r#"{"gpt-5":{}}"#).is_err());
    }
}
