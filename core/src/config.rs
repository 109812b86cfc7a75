//! Routing policies: one serde config type, three named presets, validation that names the field.
//!
//! Every policy is a configuration of the same [`crate::Engine`], so presets can run side by
//! side. Field names carry their unit. A TOML policy may start from a preset with
//! `extends = "seed-proposed"` and override any field.

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use crate::account::AccountLimits;
use crate::split::{MAX_BATCH_REQUESTS, SplitLimits};
use crate::tokens::Model;

/// How an upload is routed between the realtime and the Batch API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// By upload size alone: `realtime_max_images`, `realtime_chunked_max`, then batch.
    Threshold,
    /// From the current state: the realtime queue's expected wait, the batch queue's room, the
    /// upload's deadline and `prefer`. A realtime head for every upload.
    Adaptive,
}

/// What the adaptive router optimises once the deadline is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preference {
    /// Finish as soon as possible; use the Batch API only for work realtime can't finish by the deadline.
    Latency,
    /// Pay the Batch API's half price for everything past the head when the deadline allows it.
    Cost,
}

/// Which of a workspace's queued realtime images goes next (after retries and parked heads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RealtimeOrder {
    /// In the order they were queued: an upload's images wait behind every earlier upload's.
    #[default]
    Arrival,
    /// Shortest job first, aged: uploads in the order of their start plus eight times how long
    /// their images take at the account's rate. A small upload passes a large one's tail; a
    /// large one lets later uploads pass for at most about eight times its own length, so it
    /// is never starved. Under load the median upload completes sooner.
    SmallestUpload,
}

/// What happens to a realtime image whose retries are exhausted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exhausted {
    /// Move it to the batch queue.
    Batch,
    /// Fail it with the last error as its reason.
    Fail,
}

/// A routing policy. Every duration is in milliseconds, every limit per minute or per hour as named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Shown in reports.
    pub name: String,
    /// Threshold or adaptive routing.
    pub routing: Routing,
    /// Threshold routing: uploads of at most this many images go realtime all at once.
    pub realtime_max_images: u32,
    /// Threshold routing: larger uploads of at most this many images go realtime in chunks.
    pub realtime_chunked_max: u32,
    /// Chunked realtime: images per chunk.
    pub chunk_size: u32,
    /// Chunked realtime: time between chunks, ms.
    pub chunk_interval_ms: u64,
    /// Adaptive routing: images of every upload sent realtime first, for a fast first tag.
    pub realtime_head_images: u32,
    /// Adaptive routing: when an upload should be complete, ms after it starts, unless the upload
    /// brings its own deadline.
    pub deadline_ms: u64,
    /// Adaptive routing: latency or cost, once the deadline is met.
    pub prefer: Preference,
    /// Adaptive routing: the batch turnaround assumed before any batch has completed, ms. Observed
    /// turnarounds replace it as batches finish.
    pub batch_turnaround_estimate_ms: u64,
    /// Move a realtime image to the batch queue when it is rate-limited (429).
    pub fallback_to_batch_on_rate_limit: bool,
    /// Pace realtime requests under the account's limits on the client side.
    pub client_pacing: bool,
    /// Share of the account's RPM and TPM the pacer may use, percent (1–100).
    pub account_headroom_percent: u8,
    /// Per-workspace realtime requests per minute, if any.
    pub workspace_rpm: Option<u64>,
    /// Per-workspace realtime tokens per minute, if any.
    pub workspace_tpm: Option<u64>,
    /// Serve workspaces by weighted deficit round robin; otherwise first come, first served.
    pub fair_share: bool,
    /// Fair share: images a workspace may send per turn before the next workspace's turn. Larger
    /// turns let small uploads finish in one turn; smaller ones bound the wait of the others.
    pub fair_share_quantum_images: u32,
    /// Which of a workspace's queued realtime images goes next: `arrival` or `smallest-upload`.
    /// Leaving it out means `arrival`.
    #[serde(default)]
    pub realtime_order: RealtimeOrder,
    /// Images per batch at most (the Batch API allows 50,000).
    pub max_images_per_batch: u32,
    /// Time between polls of a running batch, ms.
    pub poll_interval_ms: u64,
    /// Longest poll interval after poll errors back off, ms.
    pub poll_max_interval_ms: u64,
    /// Stop polling a batch this long after it was created, failing its images with a reason.
    /// `None` polls until the batch ends (the Batch API ends every batch within 24 h).
    pub poll_give_up_ms: Option<u64>,
    /// A batch still running this long after it was created is overdue: core asks upstream to
    /// cancel it and keeps polling; once it ends, its partial results count and the images
    /// without one go round again (another Batch API attempt while `batch_max_attempts`
    /// allows, else they fail). One that has not ended an hour after the cancel is let go of
    /// without its results. `None` waits for upstream to end it. Upstream's 24 h window should
    /// end every batch first; this keeps a batch it never ends from leaving images pending
    /// forever.
    pub batch_overdue_ms: Option<u64>,
    /// Batches a workspace may create per hour, if limited.
    pub workspace_batches_per_hour: Option<u64>,
    /// Images a workspace may send through the Batch API per hour, if limited.
    pub workspace_images_per_hour: Option<u64>,
    /// Attempts per realtime image, the first included.
    pub retry_max_attempts: u32,
    /// First backoff delay, ms; doubles per attempt.
    pub retry_base_delay_ms: u64,
    /// Backoff cap, ms.
    pub retry_max_delay_ms: u64,
    /// Backoff jitter: each delay is cut by up to this percent, at random (0–100).
    pub retry_jitter_percent: u8,
    /// Wait what a 429's retry-after says instead of the backoff delay.
    pub honor_retry_after: bool,
    /// Longest retry-after honoured, ms. A longer one (an exhausted daily limit says hours) is
    /// not waited out by realtime: the image goes the way of `on_retries_exhausted`, and the
    /// account pauses for this long at most. The OpenAI SDK stops retrying past 120 s (facts §3).
    pub retry_after_max_ms: u64,
    /// What happens when a realtime image runs out of attempts.
    pub on_retries_exhausted: Exhausted,
    /// Times an image may go through the Batch API before it fails.
    pub batch_max_attempts: u32,
    /// Attempts to download a finished batch's results before its images fail.
    pub download_max_attempts: u32,
}

/// Every policy field, in the struct's order, with what it does in one line (units in the name
/// or the line). `tagstorm-sim policies` prints these next to each policy's values; a test keeps
/// the list to the struct's fields.
pub const POLICY_FIELDS: [(&str, &str); 34] = [
    ("name", "shown in reports"),
    (
        "routing",
        "\"threshold\" (by upload size) or \"adaptive\" (from the current state)",
    ),
    (
        "realtime_max_images",
        "threshold: uploads of at most this many images go realtime at once",
    ),
    (
        "realtime_chunked_max",
        "threshold: larger ones up to this many go realtime in chunks",
    ),
    ("chunk_size", "chunked realtime: images per chunk"),
    ("chunk_interval_ms", "chunked realtime: time between chunks"),
    (
        "realtime_head_images",
        "adaptive: images of every upload sent realtime first",
    ),
    (
        "deadline_ms",
        "adaptive: when an upload should be complete, unless it brings its own",
    ),
    (
        "prefer",
        "adaptive: \"latency\" or \"cost\" (Batch API), once the deadline is met",
    ),
    (
        "batch_turnaround_estimate_ms",
        "adaptive: batch turnaround assumed until one completes",
    ),
    (
        "fallback_to_batch_on_rate_limit",
        "a 429 moves a realtime image to the batch queue",
    ),
    (
        "client_pacing",
        "pace realtime requests under the account's limits on the client side",
    ),
    (
        "account_headroom_percent",
        "share of the account's RPM and TPM the pacer may use (1-100)",
    ),
    (
        "workspace_rpm",
        "per-workspace realtime requests per minute",
    ),
    ("workspace_tpm", "per-workspace realtime tokens per minute"),
    (
        "fair_share",
        "workspaces take turns (deficit round robin); else first come, first served",
    ),
    (
        "fair_share_quantum_images",
        "fair share: images a workspace sends per turn",
    ),
    (
        "realtime_order",
        "within a workspace: \"arrival\" order, or the \"smallest-upload\" (soonest done) first",
    ),
    (
        "max_images_per_batch",
        "images per batch at most (the Batch API allows 50,000)",
    ),
    ("poll_interval_ms", "time between polls of a running batch"),
    (
        "poll_max_interval_ms",
        "longest poll interval once poll errors back off",
    ),
    (
        "poll_give_up_ms",
        "stop polling a batch this long after creating it (its images fail)",
    ),
    (
        "batch_overdue_ms",
        "cancel a batch still running this long after creating it",
    ),
    (
        "workspace_batches_per_hour",
        "batches a workspace may create per hour",
    ),
    (
        "workspace_images_per_hour",
        "images a workspace may send through the Batch API per hour",
    ),
    (
        "retry_max_attempts",
        "attempts per realtime image, the first included",
    ),
    (
        "retry_base_delay_ms",
        "first backoff delay; doubles per attempt",
    ),
    ("retry_max_delay_ms", "backoff cap"),
    (
        "retry_jitter_percent",
        "each backoff delay is cut by up to this percent, at random",
    ),
    (
        "honor_retry_after",
        "wait what a 429's retry-after says instead of the backoff",
    ),
    ("retry_after_max_ms", "longest retry-after waited out"),
    (
        "on_retries_exhausted",
        "\"batch\" or \"fail\": a realtime image out of attempts",
    ),
    (
        "batch_max_attempts",
        "times an image may go through the Batch API",
    ),
    (
        "download_max_attempts",
        "attempts to download a finished batch's results",
    ),
];

/// The names of the presets, in the order reports show them.
pub const PRESETS: [&str; 3] = ["seed-current", "seed-proposed", "tagstorm"];

impl Policy {
    /// The policy the seed app runs today (SPEC §4): under 20 images realtime all at once with no
    /// pacing and blind backoff; from 20, one batch polled every 10 s for at most an hour.
    pub fn seed_current() -> Policy {
        Policy {
            name: "seed-current".into(),
            routing: Routing::Threshold,
            realtime_max_images: 19,
            realtime_chunked_max: 19,
            chunk_size: 1,
            chunk_interval_ms: 0,
            realtime_head_images: 0,
            deadline_ms: 0,
            prefer: Preference::Latency,
            batch_turnaround_estimate_ms: 0,
            fallback_to_batch_on_rate_limit: false,
            client_pacing: false,
            account_headroom_percent: 100,
            workspace_rpm: None,
            workspace_tpm: None,
            fair_share: false,
            fair_share_quantum_images: 1,
            realtime_order: RealtimeOrder::Arrival,
            max_images_per_batch: MAX_BATCH_REQUESTS,
            poll_interval_ms: 10_000,
            poll_max_interval_ms: 10_000,
            poll_give_up_ms: Some(3_600_000),
            batch_overdue_ms: None,
            workspace_batches_per_hour: None,
            workspace_images_per_hour: None,
            // The SDK's defaults (facts §3): 2 retries, 0.5 s doubling to 8 s, 25% jitter. The
            // seed's client ignores retry-after, so its backoff is blind.
            retry_max_attempts: 3,
            retry_base_delay_ms: 500,
            retry_max_delay_ms: 8_000,
            retry_jitter_percent: 25,
            honor_retry_after: false,
            retry_after_max_ms: 120_000,
            on_retries_exhausted: Exhausted::Fail,
            batch_max_attempts: 1,
            download_max_attempts: 1,
        }
    }

    /// The fix proposed for the seed app (SPEC §4): 1–5 realtime, 6–50 in chunks of 5 every
    /// 2 s, 51–200 one batch, over 200 parallel batches of 200; 30 RPM and 100,000 TPM per
    /// workspace; batch fallback on 429; server-side polling every 60 s.
    pub fn seed_proposed() -> Policy {
        Policy {
            name: "seed-proposed".into(),
            realtime_max_images: 5,
            realtime_chunked_max: 50,
            chunk_size: 5,
            chunk_interval_ms: 2_000,
            fallback_to_batch_on_rate_limit: true,
            client_pacing: true,
            workspace_rpm: Some(30),
            workspace_tpm: Some(100_000),
            max_images_per_batch: 200,
            poll_interval_ms: 60_000,
            poll_max_interval_ms: 300_000,
            poll_give_up_ms: None,
            honor_retry_after: true,
            on_retries_exhausted: Exhausted::Batch,
            batch_max_attempts: 3,
            download_max_attempts: 5,
            ..Policy::seed_current()
        }
    }

    /// Ours: adaptive routing with a realtime head per upload, fair sharing, pacing that keeps
    /// 429s near zero, and batch splitting within every Batch API cap.
    pub fn tagstorm() -> Policy {
        Policy {
            name: "tagstorm".into(),
            routing: Routing::Adaptive,
            realtime_head_images: 3,
            deadline_ms: 15 * 60_000,
            prefer: Preference::Latency,
            batch_turnaround_estimate_ms: 30 * 60_000,
            fallback_to_batch_on_rate_limit: false,
            fair_share: true,
            fair_share_quantum_images: 16,
            realtime_order: RealtimeOrder::SmallestUpload,
            workspace_rpm: None,
            workspace_tpm: None,
            // A batch's time in progress grows with its lines and batches run side by side
            // (facts §8: 9 and 312 requests in about two minutes, 10,000 in 8.5 h), so the
            // queue's room is better spent on many batches of 200 than on a few large ones.
            // `tagstorm-sim sweep scenarios/single-300-upload.toml --set uploads.0.images=10000
            // --vary policy.max_images_per_batch=100,200,1000,5000`: 10,000 images take 3h 06m
            // at 200 against 6h 32m at 5,000 (and 1h 44m at 100, where the slowest of many
            // small batches starts to set an upload's completion: 3,000 images +32%).
            max_images_per_batch: 200,
            poll_interval_ms: 30_000,
            poll_max_interval_ms: 300_000,
            // The 24 h window plus an hour: only a batch upstream failed to end is given up.
            batch_overdue_ms: Some(25 * 3_600_000),
            retry_max_attempts: 6,
            retry_max_delay_ms: 30_000,
            ..Policy::seed_proposed()
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Option<Policy> {
        match name {
            "seed-current" => Some(Policy::seed_current()),
            "seed-proposed" => Some(Policy::seed_proposed()),
            "tagstorm" => Some(Policy::tagstorm()),
            _ => None,
        }
    }

    /// Parses a TOML policy. `extends = "<preset>"` starts from that preset; every other key
    /// overrides one field. Without `extends`, every field must be given.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| PolicyError::Toml(plain_message(&e.to_string())))?;
        let policy = match table.remove("extends") {
            None => Policy::deserialize(toml::Value::Table(table)),
            Some(toml::Value::String(base)) => {
                let preset = Policy::preset(&base).ok_or_else(|| PolicyError::Invalid {
                    field: "extends".into(),
                    message: format!("unknown preset {base:?} (known: {})", PRESETS.join(", ")),
                })?;
                let mut merged = toml::Table::try_from(&preset)
                    .map_err(|e| PolicyError::Toml(plain_message(&e.to_string())))?;
                merged.extend(table);
                Policy::deserialize(toml::Value::Table(merged))
            }
            Some(_) => {
                return Err(PolicyError::Invalid {
                    field: "extends".into(),
                    message: "must be a string naming a preset".into(),
                });
            }
        }
        .map_err(|e| PolicyError::Toml(plain_message(&e.to_string())))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |field: &str, message: String| {
            Err(PolicyError::Invalid {
                field: field.into(),
                message,
            })
        };
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty".into());
        }
        if self.realtime_chunked_max < self.realtime_max_images {
            return bad(
                "realtime_chunked_max",
                format!(
                    "thresholds out of order: must be at least realtime_max_images ({}), got {}",
                    self.realtime_max_images, self.realtime_chunked_max
                ),
            );
        }
        for (field, v) in [
            ("chunk_size", u64::from(self.chunk_size)),
            (
                "fair_share_quantum_images",
                u64::from(self.fair_share_quantum_images),
            ),
            ("max_images_per_batch", u64::from(self.max_images_per_batch)),
            ("poll_interval_ms", self.poll_interval_ms),
            ("retry_after_max_ms", self.retry_after_max_ms),
            ("retry_max_attempts", u64::from(self.retry_max_attempts)),
            ("batch_max_attempts", u64::from(self.batch_max_attempts)),
            (
                "download_max_attempts",
                u64::from(self.download_max_attempts),
            ),
            (
                "account_headroom_percent",
                u64::from(self.account_headroom_percent),
            ),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        for (field, v) in [
            ("workspace_rpm", self.workspace_rpm),
            ("workspace_tpm", self.workspace_tpm),
            (
                "workspace_batches_per_hour",
                self.workspace_batches_per_hour,
            ),
            ("workspace_images_per_hour", self.workspace_images_per_hour),
            ("poll_give_up_ms", self.poll_give_up_ms),
            ("batch_overdue_ms", self.batch_overdue_ms),
        ] {
            if v == Some(0) {
                return bad(
                    field,
                    "must be at least 1 when set (leave it out for no limit)".into(),
                );
            }
        }
        if self.account_headroom_percent > 100 {
            return bad(
                "account_headroom_percent",
                format!(
                    "must be within 1..=100, got {}",
                    self.account_headroom_percent
                ),
            );
        }
        if self.retry_jitter_percent > 100 {
            return bad(
                "retry_jitter_percent",
                format!("must be within 0..=100, got {}", self.retry_jitter_percent),
            );
        }
        if self.max_images_per_batch > MAX_BATCH_REQUESTS {
            return bad(
                "max_images_per_batch",
                format!(
                    "the Batch API takes at most {MAX_BATCH_REQUESTS} requests per batch, got {}",
                    self.max_images_per_batch
                ),
            );
        }
        if self.retry_max_delay_ms < self.retry_base_delay_ms {
            return bad(
                "retry_max_delay_ms",
                format!(
                    "must be at least retry_base_delay_ms ({}), got {}",
                    self.retry_base_delay_ms, self.retry_max_delay_ms
                ),
            );
        }
        if self.poll_max_interval_ms < self.poll_interval_ms {
            return bad(
                "poll_max_interval_ms",
                format!(
                    "must be at least poll_interval_ms ({}), got {}",
                    self.poll_interval_ms, self.poll_max_interval_ms
                ),
            );
        }
        if self.routing == Routing::Adaptive && self.deadline_ms == 0 {
            return bad(
                "deadline_ms",
                "must be at least 1 with adaptive routing".into(),
            );
        }
        Ok(())
    }
}

/// What one realtime request and one batch line look like.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestShape {
    /// The model every request goes to.
    pub model: Model,
    /// `max_tokens` of each request: the output tokens allowed.
    pub max_tokens: u32,
    /// The text prompt sent with each image.
    pub prompt: String,
    /// Tokens one image is charged against TPM, if known. OpenAI does not document how images
    /// count against the limiter (facts §3), so by default the billing estimate is used.
    pub image_charge_tokens: Option<u64>,
}

impl Default for RequestShape {
    fn default() -> RequestShape {
        RequestShape {
            model: Model::Gpt4oMini,
            max_tokens: 60,
            prompt: "List 3 to 5 short tags for this image as JSON: {\"tags\": [...]}".into(),
            image_charge_tokens: None,
        }
    }
}

/// Everything an [`crate::Engine`] needs: the policy, the account it runs under, the request
/// shape, and the seed of its jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The routing policy.
    pub policy: Policy,
    /// The OpenAI account's limits.
    pub account: AccountLimits,
    /// The shape of each request.
    pub request: RequestShape,
    /// Seed of the engine's only randomness, the backoff jitter.
    pub seed: u64,
}

impl Config {
    /// A config with the default request shape and seed 0.
    pub fn new(policy: Policy, account: AccountLimits) -> Config {
        Config {
            policy,
            account,
            request: RequestShape::default(),
            seed: 0,
        }
    }

    /// Sets the jitter seed.
    pub fn with_seed(mut self, seed: u64) -> Config {
        self.seed = seed;
        self
    }

    /// Sets the request shape.
    pub fn with_request(mut self, request: RequestShape) -> Config {
        self.request = request;
        self
    }

    /// Validates the policy and the request shape.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.policy.validate()?;
        if self.request.max_tokens == 0 {
            return Err(PolicyError::Invalid {
                field: "request.max_tokens".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.request.image_charge_tokens == Some(0) {
            return Err(PolicyError::Invalid {
                field: "request.image_charge_tokens".into(),
                message: "must be at least 1 when set".into(),
            });
        }
        Ok(())
    }

    /// The per-batch caps of this config before the live budgets (queue, per-hour) are known.
    pub(crate) fn split_caps(&self) -> SplitLimits {
        SplitLimits {
            max_requests: self.policy.max_images_per_batch,
            max_bytes: crate::split::MAX_BATCH_FILE_BYTES,
            max_tokens: u64::MAX,
            queue_tokens_free: self.account.batch_queue_tokens.get(),
            queue_tokens_limit: self.account.batch_queue_tokens.get(),
            batches_allowed: u32::MAX,
            images_allowed: u64::MAX,
        }
    }
}

/// A policy that can't be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The TOML didn't parse or didn't fit the type; the message has the line and key.
    #[error("{0}")]
    Toml(String),
    /// A field's value is out of range or inconsistent with another.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// `v` as a non-zero limit, scaled by `percent`, never below 1.
pub(crate) fn scaled(v: NonZeroU64, percent: u8) -> NonZeroU64 {
    let scaled = u128::from(v.get()) * u128::from(percent) / 100;
    NonZeroU64::new(u64::try_from(scaled).unwrap_or(u64::MAX)).unwrap_or(NonZeroU64::MIN)
}

/// A serde or TOML error message in the words of a configuration file's author: Rust's type
/// names become the values they allow (`expected u8` → `expected a whole number from 0 to
/// 255`), and the internal `as i128` of an out-of-range integer goes. Used by every place that
/// reports a bad policy, scenario or mock configuration value.
pub fn plain_message(m: &str) -> String {
    const TYPES: [(&str, &str); 12] = [
        ("expected u128", "expected a whole number ≥ 0"),
        (
            "expected u64",
            "expected a whole number from 0 to 18446744073709551615",
        ),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i128", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i16", "expected a whole number"),
        ("expected i8", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
    ];
    let mut out = m
        .replace("` as i128", "`")
        .replace("` as u128", "`")
        .replace("floating point `", "number `");
    for (from, to) in TYPES {
        out = out.replace(from, to);
    }
    // toml's words for a number or boolean where a named choice (`prefer`, `routing`, ...)
    // belongs.
    out = out.replace(
        "invalid type: unit variant, expected string only",
        "expected one of its names, as a quoted string",
    );
    // toml's words for an integer from 2^63 to 2^64 - 1 (an i64 no longer, and its own values
    // are i64), which name neither the number nor the limit.
    out = out.replace(
        "u64 value was too large",
        "a whole number larger than TOML's largest integer, 9223372036854775807",
    );
    // toml's words for an integer past 64 bits.
    if out.contains("integer `") {
        out = out.replace(
            ", expected any valid TOML value",
            ", larger than TOML's largest integer, 9223372036854775807",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages_name_values_not_rust_types() {
        let cases = [
            (
                "invalid value: integer `300`, expected u8",
                "invalid value: integer `300`, expected a whole number from 0 to 255",
            ),
            (
                "invalid type: integer `99999999999999999999` as i128, expected u64",
                "invalid type: integer `99999999999999999999`, expected a whole number from 0 to 18446744073709551615",
            ),
            (
                "invalid type: floating point `1.5`, expected u32",
                "invalid type: number `1.5`, expected a whole number from 0 to 4294967295",
            ),
            (
                "invalid type: string \"x\", expected f64",
                "invalid type: string \"x\", expected a number",
            ),
            ("unknown field `acount`", "unknown field `acount`"),
            (
                "invalid type: unit variant, expected string only",
                "expected one of its names, as a quoted string",
            ),
            (
                "u64 value was too large",
                "a whole number larger than TOML's largest integer, 9223372036854775807",
            ),
            (
                "invalid type: integer `99999999999999999999`, expected any valid TOML value",
                "invalid type: integer `99999999999999999999`, larger than TOML's largest integer, 9223372036854775807",
            ),
        ];
        for (m, want) in cases {
            assert_eq!(plain_message(m), want);
        }
    }

    #[test]
    fn policy_fields_lists_every_field_once() {
        // serde_json keeps the `None` fields (as null), so every field is a key.
        let value = serde_json::to_value(Policy::tagstorm()).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut listed: Vec<&str> = POLICY_FIELDS.iter().map(|(k, _)| *k).collect();
        assert!(POLICY_FIELDS.iter().all(|(_, what)| !what.is_empty()));
        keys.sort_unstable();
        listed.sort_unstable();
        assert_eq!(listed, keys);
    }

    #[test]
    fn presets_are_valid() {
        for name in PRESETS {
            let p = Policy::preset(name).unwrap();
            assert_eq!(p.name, name);
            p.validate().unwrap();
        }
    }

    fn check_err(toml: &str, expect: &str) {
        let err = Policy::from_toml_str(toml).unwrap_err().to_string();
        assert!(err.contains(expect), "{err:?} should contain {expect:?}");
    }

    #[test]
    fn bad_policies_name_the_field() {
        check_err(
            "extends = \"tagstorm\"\nchunk_size = 0",
            "chunk_size: must be at least 1",
        );
        check_err(
            "extends = \"seed-proposed\"\nrealtime_max_images = 60",
            "realtime_chunked_max: thresholds out of order",
        );
        check_err(
            "extends = \"tagstorm\"\nchunk_interval_ms = -5",
            "chunk_interval_ms",
        );
        check_err(
            "extends = \"tagstorm\"\nworkspace_rpm = 0",
            "workspace_rpm: must be at least 1",
        );
        check_err("extends = \"tagstorm\"\nnot_a_field = 1", "not_a_field");
        check_err("extends = \"nope\"", "extends: unknown preset \"nope\"");
        check_err(
            "extends = \"tagstorm\"\nmax_images_per_batch = 50001",
            "max_images_per_batch",
        );
        check_err(
            "extends = \"tagstorm\"\naccount_headroom_percent = 101",
            "account_headroom_percent",
        );
        check_err(
            "extends = \"tagstorm\"\nretry_max_delay_ms = 1",
            "retry_max_delay_ms",
        );
        check_err("name = \"x\"", "missing field");
        check_err("extends = \"tagstorm\"\n[oops", "line 2");
    }

    #[test]
    fn extends_overrides_one_field() {
        let p = Policy::from_toml_str("extends = \"seed-proposed\"\nrealtime_chunked_max = 80")
            .unwrap();
        assert_eq!(p.realtime_chunked_max, 80);
        assert_eq!(p.chunk_size, 5);
        let round = toml::to_string(&Policy::tagstorm()).unwrap();
        assert_eq!(Policy::from_toml_str(&round).unwrap(), Policy::tagstorm());
    }
}
