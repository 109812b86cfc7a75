//! Token estimates for vision requests: what an image is billed, what a request is charged
//! against the TPM limit, and the usage a response reports.
//!
//! Facts and their sources: `reference/openai-api-facts.md` §6 (vision token accounting) and
//! SPEC §5. Everything here is an estimate made before the request is sent; the upstream's
//! own `usage` numbers are the truth once a response arrives.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A chat model that can tag images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Model {
    /// `gpt-4o-mini`: cheap text, but billed many tokens per image (facts §6).
    #[serde(rename = "gpt-4o-mini")]
    Gpt4oMini,
    /// `gpt-4o`.
    #[serde(rename = "gpt-4o")]
    Gpt4o,
}

impl Model {
    /// Every known model, in declaration order.
    pub const ALL: [Model; 2] = [Model::Gpt4oMini, Model::Gpt4o];

    /// The model's API name, as sent in a request body.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Gpt4oMini => "gpt-4o-mini",
            Model::Gpt4o => "gpt-4o",
        }
    }

    /// The model with API name `s`, if it is known. The match is exact: snapshots such as
    /// `gpt-4o-mini-2024-07-18` are not recognised.
    pub fn from_name(s: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The model's vision billing constants.
    pub fn vision(self) -> VisionCost {
        // Facts §6, table "model | base | per tile" (OpenAI's images & vision guide,
        // "Calculating costs").
        match self {
            Model::Gpt4oMini => VisionCost {
                base_tokens: 2833,
                tile_tokens: 5667,
            },
            Model::Gpt4o => VisionCost {
                base_tokens: 85,
                tile_tokens: 170,
            },
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model name that [`Model::from_name`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown model `{name}`: expected one of gpt-4o-mini, gpt-4o")]
pub struct UnknownModel {
    /// The name that was given.
    pub name: String,
}

impl FromStr for Model {
    type Err = UnknownModel;

    fn from_str(s: &str) -> Result<Model, UnknownModel> {
        Model::from_name(s).ok_or_else(|| UnknownModel { name: s.to_owned() })
    }
}

/// How many tokens a model bills for one image (facts §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisionCost {
    /// Billed for every image, and the whole charge at `detail: "low"`.
    pub base_tokens: u64,
    /// Billed per 512-px tile at `detail: "high"`, on top of the base.
    pub tile_tokens: u64,
}

/// The `detail` field of an `image_url` content part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    /// A fixed charge whatever the image size; the default because tags need no fine detail.
    #[default]
    Low,
    /// Charged per 512-px tile of the scaled image.
    High,
    /// The upstream picks low or high; how it decides is unconfirmed (facts §6), so estimates
    /// treat it as [`Detail::High`], the more expensive outcome.
    Auto,
}

impl Detail {
    /// The value as sent in a request body.
    pub fn as_str(self) -> &'static str {
        match self {
            Detail::Low => "low",
            Detail::High => "high",
            Detail::Auto => "auto",
        }
    }
}

/// One image as the token estimate sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Width of the image as uploaded, in pixels.
    pub width_px: u32,
    /// Height of the image as uploaded, in pixels.
    pub height_px: u32,
    /// The `detail` the request will ask for.
    pub detail: Detail,
}

/// Side of the square an image is first scaled down to fit (facts §6, step 1).
const FIT_SIDE_PX: u64 = 2048;
/// Length the shortest side is then scaled down to (facts §6, step 2).
const SHORT_SIDE_PX: u64 = 768;
/// Side of one billing tile (facts §6, step 3).
const TILE_PX: u64 = 512;

/// The number of 512-px tiles OpenAI bills for an image at `detail: "high"`.
///
/// Facts §6: the image is scaled to fit within 2048×2048 keeping its aspect ratio, then scaled
/// so that its shortest side is 768 px, then covered with 512-px tiles. Both scalings only ever
/// shrink: the 128×64 measurement in facts §6 (billed as one tile) shows that small images are
/// not upscaled.
///
/// Rounding: the scaled sizes are kept as exact fractions (no intermediate rounding to whole
/// pixels, which the docs do not specify), and a side that reaches even a fraction of a pixel
/// into a tile counts that tile. Where the upstream rounds to whole pixels this can count one
/// tile row more than it does, never fewer, so the estimate errs towards the larger charge.
///
/// A zero side is treated as 1 px, so a degenerate image costs one tile like any tiny image;
/// any `u32` size is handled without overflow.
pub fn high_detail_tiles(width_px: u32, height_px: u32) -> u64 {
    let w = u128::from(width_px.max(1));
    let h = u128::from(height_px.max(1));
    let long = w.max(h);
    let short = w.min(h);
    // The overall scale factor as a fraction `num / den` (≤ 1). Scaling by two factors in
    // turn equals scaling by their product, so only the final factor is needed.
    let (num, den) = if long > u128::from(FIT_SIDE_PX) {
        // Step 1 applies; step 2 applies too if the short side is still above 768 px, i.e.
        // short · 2048 / long > 768. Then the overall factor is simply 768 / short.
        if short * u128::from(FIT_SIDE_PX) > u128::from(SHORT_SIDE_PX) * long {
            (u128::from(SHORT_SIDE_PX), short)
        } else {
            (u128::from(FIT_SIDE_PX), long)
        }
    } else if short > u128::from(SHORT_SIDE_PX) {
        (u128::from(SHORT_SIDE_PX), short)
    } else {
        (1, 1)
    };
    let tiles_along = |side: u128| (side * num).div_ceil(den * u128::from(TILE_PX));
    // Each factor is at most ceil(2048 / 512) = 4, so the product fits any integer type.
    u64::try_from(tiles_along(w) * tiles_along(h)).unwrap_or(u64::MAX)
}

/// The input tokens one image is billed, by the rules of facts §6.
///
/// [`Detail::Auto`] is estimated as [`Detail::High`]: how the upstream resolves `auto` is
/// unconfirmed, and over-estimating only costs some pacing headroom, whereas under-estimating
/// would risk 429s and queue-limit failures.
pub fn image_tokens(model: Model, image: &ImageSpec) -> u64 {
    let cost = model.vision();
    match image.detail {
        Detail::Low => cost.base_tokens,
        Detail::High | Detail::Auto => cost.base_tokens.saturating_add(
            high_detail_tiles(image.width_px, image.height_px).saturating_mul(cost.tile_tokens),
        ),
    }
}

/// An estimate of the tokens in `chars` characters of English text: one token per four
/// characters, rounded up (OpenAI's rule of thumb, which is also roughly how its rate limiter
/// estimates a request's input before tokenizing it).
pub fn text_tokens(chars: usize) -> u64 {
    // A usize is at most 64 bits on every supported target.
    (chars as u64).div_ceil(4)
}

/// What a request is charged against the TPM limit when it is admitted: the larger of its
/// estimated input tokens and its `max_tokens` (SPEC §5, OpenAI's rate-limits guide).
pub fn rate_limit_charge(input_estimate: u64, max_tokens: u64) -> u64 {
    input_estimate.max(max_tokens)
}

/// The tokens a response reports, or a sum of them. Sums saturate rather than overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, images included.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

impl Usage {
    /// Input and output tokens together.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

impl Add for Usage {
    type Output = Usage;

    fn add(self, rhs: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(rhs.input_tokens),
            output_tokens: self.output_tokens.saturating_add(rhs.output_tokens),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        *self = *self + rhs;
    }
}

impl Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), Add::add)
    }
}

impl<'a> Sum<&'a Usage> for Usage {
    fn sum<I: Iterator<Item = &'a Usage>>(iter: I) -> Usage {
        iter.copied().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Detail::{Auto, High, Low};
    use Model::{Gpt4o, Gpt4oMini};

    fn check(model: Model, width_px: u32, height_px: u32, detail: Detail, expected: u64) {
        let image = ImageSpec {
            width_px,
            height_px,
            detail,
        };
        assert_eq!(
            image_tokens(model, &image),
            expected,
            "{model} {width_px}x{height_px} {detail:?}"
        );
    }

    #[test]
    fn image_tokens_documented_examples() {
        // Facts §6: the docs' own gpt-4o examples.
        check(Gpt4o, 1024, 1024, High, 765);
        check(Gpt4o, 2048, 4096, High, 1105);
        check(Gpt4o, 1024, 1024, Low, 85);
        check(Gpt4o, 4096, 8192, Low, 85);
        // Facts §6: gpt-4o-mini, inferred from its table row and measured on 128×64.
        check(Gpt4oMini, 1024, 1024, Low, 2833);
        check(Gpt4oMini, 1024, 1024, High, 25_501);
        check(Gpt4oMini, 128, 64, High, 8500);
        check(Gpt4o, 128, 64, High, 255);
    }

    #[test]
    fn spec_vision_example_fits_the_tile_formula() {
        // Facts §1 [inferred]: the spec's gpt-4o vision example reports 1,117 prompt tokens for
        // a 2560×~1700 image: 2560×1700 → 2048×1360 → 1156.5×768 → 3×2 tiles → 85 + 6·170.
        assert_eq!(high_detail_tiles(2560, 1700), 6);
        check(Gpt4o, 2560, 1700, High, 1105);
        // Facts §6 [anecdote]: 128×64 plus five words was billed 2,845 (low) and 8,512 (high)
        // on gpt-4o-mini, 97 and 267 on gpt-4o: the image's share is 12 tokens less each.
        check(Gpt4oMini, 128, 64, Low, 2845 - 12);
        check(Gpt4oMini, 128, 64, High, 8512 - 12);
        check(Gpt4o, 128, 64, Low, 97 - 12);
        check(Gpt4o, 128, 64, High, 267 - 12);
    }

    #[test]
    fn image_tokens_edges() {
        // Auto is estimated as high.
        check(Gpt4o, 1024, 1024, Auto, 765);
        check(Gpt4oMini, 128, 64, Auto, 8500);
        // Exactly on tile boundaries, no scaling: 512×512 is one tile, 513×512 two.
        check(Gpt4o, 512, 512, High, 255);
        check(Gpt4o, 513, 512, High, 425);
        // 768×768 is not rescaled: 2×2 tiles. 2048×2048 → 768×768, also 4 tiles.
        check(Gpt4o, 768, 768, High, 765);
        check(Gpt4o, 2048, 2048, High, 765);
        // Wide panorama: 4096×1024 → 2048×512, short side below 768 → 4×1 tiles.
        check(Gpt4o, 4096, 1024, High, 85 + 4 * 170);
        // Degenerate and absurd sizes neither panic nor overflow.
        check(Gpt4o, 0, 0, High, 255);
        check(Gpt4o, 0, 5000, High, 85 + 4 * 170);
        check(Gpt4o, u32::MAX, 1, High, 85 + 4 * 170);
        check(Gpt4o, u32::MAX, u32::MAX, High, 765);
        check(Gpt4oMini, u32::MAX, u32::MAX - 1, High, 25_501);
    }

    #[test]
    fn tiles() {
        assert_eq!(high_detail_tiles(1024, 1024), 4);
        assert_eq!(high_detail_tiles(2048, 4096), 6);
        // 1000×3000 → 682.67×2048 → 2×4 tiles.
        assert_eq!(high_detail_tiles(1000, 3000), 8);
        // 1536×1024 → short side 768 → 1152×768 → 3×2 tiles.
        assert_eq!(high_detail_tiles(1536, 1024), 6);
        // Never more than 4×4 tiles, whatever the input.
        for (w, h) in [
            (1, 1),
            (3000, 3001),
            (2049, 2049),
            (u32::MAX, 7),
            (777, 769),
        ] {
            assert!((1..=16).contains(&high_detail_tiles(w, h)), "{w}x{h}");
        }
    }

    #[test]
    fn text_and_charge() {
        assert_eq!(text_tokens(0), 0);
        assert_eq!(text_tokens(1), 1);
        assert_eq!(text_tokens(4), 1);
        assert_eq!(text_tokens(5), 2);
        assert_eq!(text_tokens(usize::MAX), (usize::MAX as u64).div_ceil(4));
        assert_eq!(rate_limit_charge(2845, 300), 2845);
        assert_eq!(rate_limit_charge(100, 300), 300);
    }

    #[test]
    fn model_names() {
        for m in Model::ALL {
            assert_eq!(m.as_str().parse::<Model>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
        }
        let err = "gpt-5".parse::<Model>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown model `gpt-5`: expected one of gpt-4o-mini, gpt-4o"
        );
        assert_eq!(Model::from_name("GPT-4o"), None);
        assert_eq!(serde_json::to_string(&Detail::Auto).unwrap(), "\"auto\"");
        assert_eq!(Detail::default(), Low);
    }

    #[test]
    fn usage_sums() {
        let a = Usage {
            input_tokens: 2833,
            output_tokens: 60,
        };
        let mut total: Usage = [a, a, a].iter().sum();
        assert_eq!(total.total(), 3 * 2893);
        total += Usage {
            input_tokens: u64::MAX,
            output_tokens: 0,
        };
        assert_eq!(total.input_tokens, u64::MAX);
        assert_eq!(total.total(), u64::MAX);
        assert_eq!([a].into_iter().sum::<Usage>(), a);
    }
}
