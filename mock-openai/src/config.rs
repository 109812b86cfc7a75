//! The model's configuration: the `[account]` and `[upstream]` sections of a scenario file,
//! each deserializable on its own, with defaults (and their sources) and validation that names
//! the field at fault.

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};
use tagstorm_core::account::AccountLimits;
use tagstorm_core::tokens::Model;

use crate::fault::{BatchOutcomeKind, ScriptedFault};
use crate::latency::LatencyConfig;

/// A configuration value that is out of range or missing; `field` is the dotted path
/// (`upstream.server_error_rate`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field holds a value the model cannot use.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong, lower-case.
        reason: String,
    },
    /// The TOML text did not parse into the section.
    #[error("{section}: {message}")]
    Parse {
        /// The section being read (`account`, `upstream`).
        section: &'static str,
        /// The parser's message, with line and column.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The `[account]` section: the OpenAI organization's model and limits.
///
/// Limits come from `tier` (facts §7, via `tagstorm_core::account::AccountLimits::tier`);
/// each explicit field overrides the tier's value. Without a tier, `rpm`, `tpm` and
/// `batch_queue_tokens` are required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The model every request uses (`gpt-4o-mini` or `gpt-4o`).
    pub model: Model,
    /// OpenAI usage tier (1–5 for gpt-4o-mini; 1 and 5 for gpt-4o, the only published rows).
    #[serde(default)]
    pub tier: Option<u8>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests per day; `0` removes a tier's RPD limit.
    #[serde(default)]
    pub rpd: Option<u64>,
    /// Enqueued batch input tokens, in tokens.
    #[serde(default)]
    pub batch_queue_tokens: Option<u64>,
}

impl AccountConfig {
    /// The account at a published tier, without overrides.
    pub fn tier(model: Model, tier: u8) -> Self {
        AccountConfig {
            model,
            tier: Some(tier),
            rpm: None,
            tpm: None,
            rpd: None,
            batch_queue_tokens: None,
        }
    }

    /// Parses the section from TOML text (the body of `[account]`).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            section: "account",
            message: e.to_string(),
        })
    }

    /// Resolves the tier and overrides into explicit limits.
    pub fn resolve(&self) -> Result<AccountLimits, ConfigError> {
        let base = match self.tier {
            Some(t) => Some(AccountLimits::tier(self.model, t).map_err(|e| {
                ConfigError::invalid(
                    "account.tier",
                    format!(
                        "no published limits for {} tier {t} (known: {})",
                        self.model, e.known
                    ),
                )
            })?),
            None => None,
        };
        let pick = |field: &str,
                    explicit: Option<u64>,
                    tier: Option<NonZeroU64>|
         -> Result<NonZeroU64, ConfigError> {
            match (explicit, tier) {
                (Some(v), _) => NonZeroU64::new(v).ok_or_else(|| {
                    ConfigError::invalid(format!("account.{field}"), "must be at least 1, got 0")
                }),
                (None, Some(v)) => Ok(v),
                (None, None) => Err(ConfigError::invalid(
                    format!("account.{field}"),
                    "required when account.tier is not set",
                )),
            }
        };
        let rpm = pick("rpm", self.rpm, base.map(|b| b.rpm))?;
        let tpm = pick("tpm", self.tpm, base.map(|b| b.tpm))?;
        let batch_queue_tokens = pick(
            "batch_queue_tokens",
            self.batch_queue_tokens,
            base.map(|b| b.batch_queue_tokens),
        )?;
        let rpd = match self.rpd {
            Some(v) => NonZeroU64::new(v),
            None => base.and_then(|b| b.rpd),
        };
        Ok(AccountLimits {
            model: self.model,
            rpm,
            tpm,
            rpd,
            batch_queue_tokens,
        })
    }

    /// Checks that the section resolves.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolve().map(|_| ())
    }
}

/// The `[upstream]` section: how the modelled OpenAI behaves (latency, faults, Batch API).
/// Every field has a default, so an empty section is valid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Latency of a successful realtime call before output tokens, in milliseconds
    /// (default: lognormal median 3,000 ms, p99 8,000 ms, min 1,000 ms; SPEC §5).
    pub latency: LatencyConfig,
    /// Extra latency per output token, in milliseconds (default 0: the base distribution
    /// already covers a short tags answer).
    pub latency_ms_per_output_token: f64,
    /// Output tokens a successful call reports, in tokens, capped at the request's
    /// `max_tokens` (default: the content's length / 4, rounded up, the same rule of thumb as
    /// the input estimate).
    pub output_tokens: Option<u32>,
    /// Probability that an admitted realtime call answers 500, in 0..=1 (default 0).
    pub server_error_rate: f64,
    /// Probability that an admitted realtime call answers 503 (overloaded), in 0..=1
    /// (default 0).
    pub overloaded_rate: f64,
    /// Probability that an admitted realtime call never answers, in 0..=1 (default 0).
    pub timeout_rate: f64,
    /// When a timed-out call gives up, in milliseconds (default 600,000: the openai-python
    /// SDK's `DEFAULT_TIMEOUT`, facts §3).
    pub timeout_after_ms: u64,
    /// Scripted outcomes applied to each organization's realtime request stream in order.
    pub faults: Vec<ScriptedFault>,
    /// The Batch API's behaviour.
    pub batch: BatchConfig,
    /// Tokens one image is charged against TPM and the estimate, in tokens (default: its
    /// billing tokens per facts §6; the real limiter charge is unconfirmed, facts §3).
    pub image_charge_tokens: Option<u64>,
    /// The Unix time, in seconds, that `Time::ZERO` maps to in `created_at` and friends
    /// (default 1,767,225,600 = 2026-01-01T00:00:00Z).
    pub epoch_unix_s: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            latency: LatencyConfig::default(),
            latency_ms_per_output_token: 0.0,
            output_tokens: None,
            server_error_rate: 0.0,
            overloaded_rate: 0.0,
            timeout_rate: 0.0,
            timeout_after_ms: 600_000,
            faults: Vec::new(),
            batch: BatchConfig::default(),
            image_charge_tokens: None,
            epoch_unix_s: 1_767_225_600,
        }
    }
}

pub(crate) fn check_rate(field: &str, v: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("must be within 0..=1, got {v}"),
        ))
    }
}

/// The most `latency_ms_per_output_token` may be: a minute a token. More is no model of any
/// API, and would hold a live request for days.
const MAX_MS_PER_OUTPUT_TOKEN: f64 = 60_000.0;

/// The latest `epoch_unix_s`: the last second of year 9999, so every `created_at` stays a
/// four-digit-year date that clients' 64-bit timestamps can hold.
const MAX_EPOCH_UNIX_S: u64 = 253_402_300_799;

fn check_nonneg(field: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("must be a finite number ≥ 0, got {v}"),
        ))
    }
}

impl UpstreamConfig {
    /// Parses the section from TOML text (the body of `[upstream]`).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            section: "upstream",
            message: e.to_string(),
        })
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.latency.validate("upstream.latency")?;
        check_nonneg(
            "upstream.latency_ms_per_output_token",
            self.latency_ms_per_output_token,
        )?;
        if self.latency_ms_per_output_token > MAX_MS_PER_OUTPUT_TOKEN {
            return Err(ConfigError::invalid(
                "upstream.latency_ms_per_output_token",
                format!(
                    "must be at most {MAX_MS_PER_OUTPUT_TOKEN} (a minute a token), got {}",
                    self.latency_ms_per_output_token
                ),
            ));
        }
        if self.epoch_unix_s > MAX_EPOCH_UNIX_S {
            return Err(ConfigError::invalid(
                "upstream.epoch_unix_s",
                format!(
                    "must be at most {MAX_EPOCH_UNIX_S} (9999-12-31T23:59:59Z), got {}",
                    self.epoch_unix_s
                ),
            ));
        }
        check_rate("upstream.server_error_rate", self.server_error_rate)?;
        check_rate("upstream.overloaded_rate", self.overloaded_rate)?;
        check_rate("upstream.timeout_rate", self.timeout_rate)?;
        let sum = self.server_error_rate + self.overloaded_rate + self.timeout_rate;
        if sum > 1.0 {
            return Err(ConfigError::invalid(
                "upstream.timeout_rate",
                format!(
                    "server_error_rate + overloaded_rate + timeout_rate must be at most 1, got {sum}"
                ),
            ));
        }
        if self.output_tokens == Some(0) {
            return Err(ConfigError::invalid(
                "upstream.output_tokens",
                "must be at least 1, got 0",
            ));
        }
        for (i, f) in self.faults.iter().enumerate() {
            f.validate(&format!("upstream.faults[{i}]"))?;
        }
        self.batch.validate()
    }
}

/// The `[upstream.batch]` section: the Batch API's timeline, caps and faults.
///
/// Timeline of a batch of `n` requests, sampled once at creation:
/// - `validating` lasts a draw of `validating` (default uniform 3–60 s; facts §8 observed 3 s,
///   41 s and 57 s);
/// - `in_progress` lasts a lognormal draw with median `in_progress_base_s +
///   in_progress_s_per_request × n` and sigma `in_progress_sigma`. Defaults 120 s + 1 s/request,
///   sigma 1.0: 9 requests → median 129 s (observed 128 s, facts §8); 312 → 432 s (observed
///   75 s, about the 4th percentile); 10,000 → 2.8 h (observed 8.5 h, about the 87th
///   percentile); 50,000 → 13.9 h (anecdote: 18 h, about the 60th percentile). With sigma 1.0
///   about 1.6 % of 10,000-request batches and 29 % of 50,000-request ones overrun 24 h and
///   expire.
/// - `finalizing` lasts a lognormal draw (sigma 0.5) with median `finalizing_base_s +
///   finalizing_s_per_request × n`, clamped to `[finalizing_base_s, finalizing_max_s]`.
///   Defaults 2 s + 0.1 s/request, max 18 min: 9 → 3 s (observed 2 s), 312 → 33 s (observed
///   18 s), 10,000 → 1,002 s (observed 1,065 s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Time in `validating`, in milliseconds (default uniform 3,000–60,000 ms).
    pub validating: LatencyConfig,
    /// Median `in_progress` time of an empty batch, in seconds (default 120).
    pub in_progress_base_s: f64,
    /// Added median `in_progress` time per request, in seconds (default 1.0).
    pub in_progress_s_per_request: f64,
    /// Lognormal sigma of the `in_progress` time (default 1.0).
    pub in_progress_sigma: f64,
    /// Median and minimum `finalizing` time, in seconds (default 2).
    pub finalizing_base_s: f64,
    /// Added median `finalizing` time per request, in seconds (default 0.1).
    pub finalizing_s_per_request: f64,
    /// Longest `finalizing` time, in seconds (default 1,080 = 18 min, facts §8's longest).
    pub finalizing_max_s: f64,
    /// The completion window, in seconds (default 86,400 = `24h`, facts §5).
    pub completion_window_s: u64,
    /// Longest time in `cancelling`, in seconds; the actual time is uniform in
    /// `[0, cancel_delay_s]` (default 60; facts §5 allows up to 600).
    pub cancel_delay_s: u64,
    /// Probability that a batch fails at the end of validation, in 0..=1 (default 0).
    pub fail_rate: f64,
    /// Probability that a batch is forced to overrun its window and expire, in 0..=1
    /// (default 0).
    pub expire_rate: f64,
    /// Probability that one request of a batch fails (500 in the error file), in 0..=1
    /// (default 0).
    pub line_failure_rate: f64,
    /// Scripted outcomes of an organization's batches in creation order: `completed` (its
    /// sampled timeline), `expired`, `failed`, or `stuck` (in progress with nothing done until
    /// cancelled, past its window: a fault real batches do not show). Once used up the random
    /// rates apply.
    pub batch_outcomes: Vec<BatchOutcomeKind>,
    /// Most requests in one batch (default 50,000, facts §5).
    pub max_requests: u32,
    /// Largest batch input file, in bytes (default 200,000,000, facts §4).
    pub max_file_bytes: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            validating: LatencyConfig::Uniform {
                min_ms: 3_000.0,
                max_ms: 60_000.0,
            },
            in_progress_base_s: 120.0,
            in_progress_s_per_request: 1.0,
            in_progress_sigma: 1.0,
            finalizing_base_s: 2.0,
            finalizing_s_per_request: 0.1,
            finalizing_max_s: 1_080.0,
            completion_window_s: 86_400,
            cancel_delay_s: 60,
            fail_rate: 0.0,
            expire_rate: 0.0,
            line_failure_rate: 0.0,
            batch_outcomes: Vec::new(),
            max_requests: 50_000,
            max_file_bytes: 200_000_000,
        }
    }
}

impl BatchConfig {
    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validating.validate("upstream.batch.validating")?;
        check_nonneg("upstream.batch.in_progress_base_s", self.in_progress_base_s)?;
        check_nonneg(
            "upstream.batch.in_progress_s_per_request",
            self.in_progress_s_per_request,
        )?;
        check_nonneg("upstream.batch.in_progress_sigma", self.in_progress_sigma)?;
        check_nonneg("upstream.batch.finalizing_base_s", self.finalizing_base_s)?;
        check_nonneg(
            "upstream.batch.finalizing_s_per_request",
            self.finalizing_s_per_request,
        )?;
        check_nonneg("upstream.batch.finalizing_max_s", self.finalizing_max_s)?;
        if self.finalizing_max_s < self.finalizing_base_s {
            return Err(ConfigError::invalid(
                "upstream.batch.finalizing_max_s",
                format!(
                    "must be ≥ finalizing_base_s ({}), got {}",
                    self.finalizing_base_s, self.finalizing_max_s
                ),
            ));
        }
        if self.completion_window_s == 0 {
            return Err(ConfigError::invalid(
                "upstream.batch.completion_window_s",
                "must be at least 1, got 0",
            ));
        }
        if self.cancel_delay_s > 600 {
            return Err(ConfigError::invalid(
                "upstream.batch.cancel_delay_s",
                format!(
                    "must be at most 600 (facts §5: cancelling lasts up to 10 minutes), got {}",
                    self.cancel_delay_s
                ),
            ));
        }
        check_rate("upstream.batch.fail_rate", self.fail_rate)?;
        check_rate("upstream.batch.expire_rate", self.expire_rate)?;
        if self.fail_rate + self.expire_rate > 1.0 {
            return Err(ConfigError::invalid(
                "upstream.batch.expire_rate",
                format!(
                    "fail_rate + expire_rate must be at most 1, got {}",
                    self.fail_rate + self.expire_rate
                ),
            ));
        }
        check_rate("upstream.batch.line_failure_rate", self.line_failure_rate)?;
        if self.max_requests == 0 {
            return Err(ConfigError::invalid(
                "upstream.batch.max_requests",
                "must be at least 1, got 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_account(toml_src: &str, expect: &str) {
        let got = match AccountConfig::from_toml(toml_src).and_then(|a| a.resolve()) {
            Ok(l) => format!(
                "rpm={} tpm={} rpd={:?} queue={}",
                l.rpm,
                l.tpm,
                l.rpd.map(|v| v.get()),
                l.batch_queue_tokens
            ),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect, "{toml_src}");
    }

    #[test]
    fn upstream_bounds_name_their_field() {
        let ok = UpstreamConfig {
            latency_ms_per_output_token: 60_000.0,
            epoch_unix_s: 253_402_300_799,
            ..UpstreamConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let slow = UpstreamConfig {
            latency_ms_per_output_token: 1e308,
            ..UpstreamConfig::default()
        };
        let e = slow.validate().unwrap_err().to_string();
        assert!(e.contains("upstream.latency_ms_per_output_token"), "{e}");
        assert!(e.contains("at most 60000"), "{e}");
        let late = UpstreamConfig {
            epoch_unix_s: u64::MAX,
            ..UpstreamConfig::default()
        };
        let e = late.validate().unwrap_err().to_string();
        assert!(e.contains("upstream.epoch_unix_s"), "{e}");
    }

    #[test]
    fn tier_resolution() {
        check_account(
            "model = \"gpt-4o-mini\"\ntier = 1",
            "rpm=500 tpm=200000 rpd=Some(10000) queue=2000000",
        );
        check_account(
            "model = \"gpt-4o-mini\"\ntier = 2",
            "rpm=5000 tpm=2000000 rpd=None queue=20000000",
        );
        check_account(
            "model = \"gpt-4o-mini\"\ntier = 3",
            "rpm=5000 tpm=4000000 rpd=None queue=40000000",
        );
        check_account(
            "model = \"gpt-4o-mini\"\ntier = 4",
            "rpm=10000 tpm=10000000 rpd=None queue=1000000000",
        );
        check_account(
            "model = \"gpt-4o-mini\"\ntier = 5",
            "rpm=30000 tpm=150000000 rpd=None queue=15000000000",
        );
        check_account(
            "model = \"gpt-4o\"\ntier = 1",
            "rpm=500 tpm=30000 rpd=None queue=90000",
        );
        check_account(
            "model = \"gpt-4o\"\ntier = 5",
            "rpm=10000 tpm=30000000 rpd=None queue=5000000000",
        );
        check_account(
            "model = \"gpt-4o-mini\"\ntier = 1\nrpm = 30\nrpd = 0",
            "rpm=30 tpm=200000 rpd=None queue=2000000",
        );
        check_account(
            "model = \"gpt-4o-mini\"\nrpm = 3\ntpm = 40000\nrpd = 200\nbatch_queue_tokens = 1",
            "rpm=3 tpm=40000 rpd=Some(200) queue=1",
        );
        check_account(
            "model = \"gpt-4o-mini\"\ntpm = 40000",
            "account.rpm: required when account.tier is not set",
        );
        check_account(
            "model = \"gpt-4o-mini\"\ntier = 1\ntpm = 0",
            "account.tpm: must be at least 1, got 0",
        );
        check_account(
            "model = \"gpt-4o\"\ntier = 3",
            "account.tier: no published limits for gpt-4o tier 3 (known: 1, 5)",
        );
        assert!(AccountConfig::from_toml("model = \"gpt-4o-mini\"\ntier = 1\nrmp = 3").is_err());
    }

    /// The standard normal CDF, by Abramowitz & Stegun 7.1.26 (error below 1.5e-7).
    fn normal_cdf(z: f64) -> f64 {
        let x = z.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * x);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erf = 1.0 - poly * (-x * x).exp();
        if z >= 0.0 {
            0.5 * (1.0 + erf)
        } else {
            0.5 * (1.0 - erf)
        }
    }

    #[test]
    fn batch_defaults_pin_the_published_caps() {
        let b = BatchConfig::default();
        // Facts §5: an input file holds at most 50,000 requests; `completion_window` is only
        // `24h`; `cancelling` lasts up to 10 minutes. Facts §4: batch input files ≤ 200 MB.
        assert_eq!(b.max_requests, 50_000);
        assert_eq!(b.max_file_bytes, 200_000_000);
        assert_eq!(b.completion_window_s, 86_400);
        assert!(b.cancel_delay_s <= 600);
        b.validate().unwrap();
        // Facts §3: openai-python's DEFAULT_TIMEOUT is 600 s.
        assert_eq!(UpstreamConfig::default().timeout_after_ms, 600_000);
    }

    /// The default turnaround against the public cases of facts §8, as `BatchConfig`'s docs
    /// state them: medians, where each observation falls, and how many batches overrun 24 h.
    #[test]
    fn default_batch_timeline_is_calibrated_to_facts_8() {
        let b = BatchConfig::default();
        // Validating: observed 3 s (kaapi), 41 s (cookbook) and 57 s (litellm) all in range.
        let LatencyConfig::Uniform { min_ms, max_ms } = b.validating else {
            panic!("validating is uniform by default")
        };
        for observed_s in [3.0, 41.0, 57.0] {
            assert!(
                (min_ms..=max_ms).contains(&(observed_s * 1000.0)),
                "{observed_s}"
            );
        }
        let median = |n: f64| b.in_progress_base_s + b.in_progress_s_per_request * n;
        let pct = |n: f64, observed_s: f64| {
            100.0 * normal_cdf((observed_s / median(n)).ln() / b.in_progress_sigma)
        };
        // (requests, observed in_progress seconds, percentile the docs claim).
        for (n, observed_s, claimed) in [
            (9.0, 128.0, 50.0),
            (312.0, 75.0, 4.0),
            (10_000.0, 30_688.0, 87.0),
            (50_000.0, 18.0 * 3600.0, 60.0),
        ] {
            let p = pct(n, observed_s);
            assert!(
                (p - claimed).abs() < 1.0,
                "{n} requests: {p:.1}th percentile"
            );
        }
        assert_eq!(median(9.0), 129.0);
        assert_eq!(median(312.0), 432.0);
        // Share of batches whose in_progress overruns the window (validation takes ≤ 60 s).
        let overrun = |n: f64| 100.0 * (1.0 - pct(n, b.completion_window_s as f64 - 30.0) / 100.0);
        assert!(
            (overrun(10_000.0) - 1.6).abs() < 0.1,
            "{}",
            overrun(10_000.0)
        );
        assert!(
            (overrun(50_000.0) - 29.0).abs() < 0.5,
            "{}",
            overrun(50_000.0)
        );
        // Finalizing medians: 9 → 2.9 s (observed 2 s), 312 → 33.2 s (18 s), 10,000 → 1,002 s
        // (1,065 s); the cap is the longest observed, 1,065 s rounded to 18 min.
        let fin = |n: f64| b.finalizing_base_s + b.finalizing_s_per_request * n;
        for (n, expect) in [(9.0, 2.9), (312.0, 33.2), (10_000.0, 1_002.0)] {
            assert!((fin(n) - expect).abs() < 1e-9, "{n}: {}", fin(n));
        }
        assert!(b.finalizing_max_s >= 1_065.0);
    }

    fn check_upstream(toml_src: &str, expect: &str) {
        let got = match UpstreamConfig::from_toml(toml_src).and_then(|u| u.validate()) {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect, "{toml_src}");
    }

    #[test]
    fn upstream_validation() {
        check_upstream("", "ok");
        check_upstream(
            "server_error_rate = 1.5",
            "upstream.server_error_rate: must be within 0..=1, got 1.5",
        );
        check_upstream(
            "server_error_rate = 0.6\ntimeout_rate = 0.6",
            "upstream.timeout_rate: server_error_rate + overloaded_rate + timeout_rate must be at most 1, got 1.2",
        );
        check_upstream(
            "[batch]\nline_failure_rate = -0.1",
            "upstream.batch.line_failure_rate: must be within 0..=1, got -0.1",
        );
        check_upstream(
            "[batch]\ncancel_delay_s = 601",
            "upstream.batch.cancel_delay_s: must be at most 600 (facts §5: cancelling lasts up to 10 minutes), got 601",
        );
        check_upstream(
            "[latency]\nkind = \"uniform\"\nmin_ms = 9\nmax_ms = 1",
            "upstream.latency.max_ms: must be finite and ≥ min_ms (9), got 1",
        );
        check_upstream("[[faults]]\noutcome = \"429\"\ntimes = 2", "ok");
        check_upstream("[[faults]]\nfirst_n = 3\nthen = \"500\"", "ok");
        check_upstream(
            "[[faults]]\ntimes = 2",
            "upstream.faults[0]: needs `outcome` (alias `then`) or a non-empty `sequence`",
        );
        check_upstream(
            "[batch]\nbatch_outcomes = [\"completed\", \"expired\", \"failed\", \"stuck\"]",
            "ok",
        );
        assert!(
            UpstreamConfig::from_toml("bogus = 1")
                .unwrap_err()
                .to_string()
                .starts_with("upstream: ")
        );
    }
}
