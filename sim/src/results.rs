//! The results of a run (SPEC §7, schema `tagstorm.results.v1`), latency summaries from
//! HdrHistogram, and the `.hgrm` percentile-distribution files the standard plotters read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The schema tag every results object carries.
pub const SCHEMA: &str = "tagstorm.results.v1";

/// Significant digits of every latency histogram.
pub const SIGFIG: u8 = 3;

/// Everything a run measured. Field order is the JSON order; maps are ordered, so the same run
/// serializes to the same bytes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Results {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// The scenario's name.
    pub scenario: String,
    /// The policy's name.
    pub policy: String,
    /// The scenario seed.
    pub seed: u64,
    /// The `--set` overrides applied to the scenario file, in order, as given (`KEY=VALUE`):
    /// with the scenario file and policy they reproduce the run.
    pub sets: Vec<String>,
    /// The account the run used.
    pub account: AccountSummary,
    /// Image counts.
    pub images: ImageCounts,
    /// Upload counts.
    pub uploads: UploadCounts,
    /// Latencies, in milliseconds.
    pub latency_ms: Latencies,
    /// What the upstream saw.
    pub upstream: UpstreamCounts,
    /// Billed tokens.
    pub tokens: Tokens,
    /// Total cost, US dollars.
    pub cost_usd: f64,
    /// Cost of realtime requests, US dollars.
    pub cost_usd_realtime: f64,
    /// Cost of batch requests, US dollars.
    pub cost_usd_batch: f64,
    /// First upload start to the last image terminal, ms.
    pub makespan_ms: u64,
    /// The shortest makespan the account's RPM/TPM allow for this work, ms.
    pub bound_ms: u64,
    /// `makespan_ms / bound_ms`.
    pub bound_ratio: f64,
    /// Checks the simulator makes on every result.
    pub verification: Verification,
    /// About the run itself.
    pub sim: SimInfo,
}

/// The account's resolved limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountSummary {
    /// Model name.
    pub model: String,
    /// The tier, if the scenario named one.
    pub tier: Option<u8>,
    /// Requests per minute.
    pub rpm: u64,
    /// Tokens per minute.
    pub tpm: u64,
    /// Requests per day, if limited.
    pub rpd: Option<u64>,
    /// Enqueued batch input tokens.
    pub batch_queue_tokens: u64,
}

/// Image counts; `total = tagged + failed + pending`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageCounts {
    /// Images in the workload.
    pub total: u64,
    /// Tagged.
    pub tagged: u64,
    /// Tagged through the realtime API.
    pub tagged_realtime: u64,
    /// Tagged through the Batch API.
    pub tagged_batch: u64,
    /// Failed for good.
    pub failed: u64,
    /// Neither, when the run ended (must be 0).
    pub pending: u64,
    /// Failures by reason code.
    pub failures: BTreeMap<String, u64>,
}

/// Upload counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UploadCounts {
    /// Uploads in the workload.
    pub total: u64,
    /// Uploads that started before the run ended.
    pub started: u64,
    /// Uploads with every image terminal.
    pub complete: u64,
}

/// The three latency metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latencies {
    /// Upload start → image tagged, per tagged image.
    pub image_tagged: Summary,
    /// Upload start → its first tag, per upload with a tag.
    pub upload_first_tag: Summary,
    /// Upload start → every image terminal, per complete upload.
    pub upload_complete: Summary,
}

/// A latency distribution's summary, in milliseconds, as HdrHistogram gives it at [`SIGFIG`]
/// significant digits: `min` is the lowest value of its bucket, the percentiles and `max` the
/// highest of theirs (one sample of 603,200 reads min 603,136 and max 603,647).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Mean (three decimals).
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Summary {
    /// The summary of `h` (all zeros when empty).
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            min: h.min(),
            mean: round(h.mean(), 1e3),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Upstream traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamCounts {
    /// Realtime requests sent.
    pub requests: u64,
    /// Realtime answers that were 429.
    pub rate_limited: u64,
    /// Realtime answers that were 5xx.
    pub server_errors: u64,
    /// Realtime requests that timed out.
    pub timeouts: u64,
    /// Retries core scheduled (realtime re-sends and batch re-submissions).
    pub retries: u64,
    /// Images core moved from realtime to batch after failures.
    pub fallbacks_to_batch: u64,
    /// Batches the upstream accepted.
    pub batches_created: u64,
    /// Batches that ended `failed` (validation or `token_limit_exceeded`).
    pub batches_failed: u64,
    /// Of those, failed on the enqueued-token limit.
    pub batches_token_limit: u64,
    /// Batches that ended `expired`.
    pub batches_expired: u64,
    /// Batches still running past `policy.batch_overdue_ms`, which core asked upstream to
    /// cancel.
    pub batches_overdue: u64,
    /// Batch status polls.
    pub batch_polls: u64,
}

/// Billed tokens (of tagged images).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// Input tokens.
    pub billed_input: u64,
    /// Output tokens.
    pub billed_output: u64,
    /// Input tokens billed at realtime prices.
    pub realtime_input: u64,
    /// Output tokens billed at realtime prices.
    pub realtime_output: u64,
    /// Input tokens billed at batch prices.
    pub batch_input: u64,
    /// Output tokens billed at batch prices.
    pub batch_output: u64,
}

/// Result checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Tagged images whose tags are not the model's tags for that image (must be 0).
    pub tag_mismatches: u64,
    /// Images core reported terminal more than once (must be 0).
    pub duplicate_terminal: u64,
}

/// About the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SimInfo {
    /// Events processed (arrivals, upstream answers, core timers).
    pub events: u64,
    /// Virtual time when the run ended, ms.
    pub end_ms: u64,
    /// The bound on virtual time, ms.
    pub max_duration_ms: u64,
    /// Whether the run stopped at the bound with work left.
    pub hit_max_duration: bool,
}

impl Results {
    /// Whether every invariant held: nothing pending, no tag mismatch, nothing terminal twice.
    pub fn invariants_ok(&self) -> bool {
        self.images.pending == 0
            && self.verification.tag_mismatches == 0
            && self.verification.duplicate_terminal == 0
    }

    /// What failed, one phrase per invariant, for the exit message.
    pub fn invariant_failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.images.pending > 0 && self.sim.hit_max_duration {
            // The clock stands at the last event handled; the next one lay past the bound.
            out.push(format!(
                "{} still pending when the run stopped at its bound of {} \
                 (sim.max_duration_s; the last event handled was at {})",
                crate::report::count(self.images.pending, "image"),
                crate::report::fmt_ms(self.sim.max_duration_ms),
                crate::report::fmt_ms(self.sim.end_ms)
            ));
        } else if self.images.pending > 0 {
            out.push(format!(
                "{} still pending after the last event, at {}",
                crate::report::count(self.images.pending, "image"),
                crate::report::fmt_ms(self.sim.end_ms)
            ));
        }
        if self.verification.tag_mismatches > 0 {
            out.push(crate::report::count(
                self.verification.tag_mismatches,
                "tag mismatch",
            ));
        }
        if self.verification.duplicate_terminal > 0 {
            out.push(format!(
                "{} terminal twice",
                crate::report::count(self.verification.duplicate_terminal, "image")
            ));
        }
        out
    }
}

/// `v` rounded to `1/scale`.
pub fn round(v: f64, scale: f64) -> f64 {
    if v.is_finite() {
        (v * scale).round() / scale
    } else {
        0.0
    }
}

/// A latency histogram in milliseconds, 3 significant digits, growing as needed.
pub fn new_histogram() -> Histogram<u64> {
    // 1 ms to 1 hour to start; auto-resize covers longer values.
    let mut h =
        Histogram::new_with_bounds(1, 3_600_000, SIGFIG).expect("constant bounds are valid");
    h.auto(true);
    h
}

/// The rows of Java's `PercentileIterator` over `h`: (value, quantile, count up to the value).
///
/// The levels are stepped in percent as Java steps them (0, 10, …, 50, 55, …, 90, 91.25, …),
/// which stay exact in binary; the hdrhistogram crate's `iter_quantiles` steps fractions of 1,
/// whose sums drift above the level (0.9000000000000002), so at a level that falls exactly on a
/// sample (the 270th of 300 at 90%) it reported the next sample, not the percentile that
/// `value_at_quantile` and results.json give.
fn percentile_rows(h: &Histogram<u64>, ticks_per_half: u64) -> Vec<(u64, f64, u64)> {
    let mut rows = Vec::new();
    let total = h.len();
    let mut level = 0.0f64;
    let mut below = 0u64;
    for v in h.iter_recorded() {
        below += v.count_at_value();
        let value = v.value_iterated_to();
        let percent = 100.0 * below as f64 / total as f64;
        while percent >= level {
            rows.push((value, level / 100.0, below));
            let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as u32;
            level += 100.0 / (ticks_per_half << (halvings + 1)) as f64;
            if below == total {
                // Past the last value Java takes one more step, straight to 100%.
                rows.push((value, 1.0, below));
                break;
            }
        }
    }
    rows
}

/// The histogram in HdrHistogram's percentile-distribution layout (Java's
/// `outputPercentileDistribution` with 5 ticks per half distance and values in ms).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for (value, q, total) in percentile_rows(h, 5) {
        // Java's `%12.3f` leaves no blank before a value of 10,000,000 ms (2.8 hours) or
        // more, and parsers that expect one (hdr-plot matches `\s+` at the line's start)
        // then skip the row: such a value gets one blank in front.
        let mut value = format!("{:12.3}", value as f64);
        if !value.starts_with(' ') {
            value.insert(0, ' ');
        }
        if q < 1.0 {
            let _ = writeln!(out, "{value} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(out, "{value} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        if h.is_empty() { 0.0 } else { h.mean() },
        if h.is_empty() { 0.0 } else { h.stdev() }
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64,
        h.len()
    );
    let sub_buckets = (2 * 10u32.pow(u32::from(SIGFIG))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_has_the_java_layout() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let text = hgrm(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        let last = lines.iter().rev().nth(3).unwrap();
        assert!(last.ends_with("1.000000000000       1000"), "{last}");
        assert!(lines[lines.len() - 3].starts_with("#[Mean    =      500.5"));
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =     1000.000, Total count    =         1000]"
        );
        assert_eq!(Summary::of(&h).p50, 500);
    }

    #[test]
    fn hgrm_rows_give_the_percentiles_the_summary_gives() {
        // 1..=1000 ms and 300 samples: 90% and 95% fall exactly on a sample (the 900th; the
        // 270th and 285th), where a level that drifted above them reported the next one.
        let mut uniform = new_histogram();
        for v in 1..=1000u64 {
            uniform.record(v).unwrap();
        }
        let mut spread = new_histogram();
        for i in 0..300u64 {
            spread.record(1_000 + i * i * 7).unwrap();
        }
        for h in [&uniform, &spread] {
            let text = hgrm(h);
            let rows: Vec<(f64, f64, u64)> = text
                .lines()
                .skip(2)
                .filter(|l| !l.starts_with('#'))
                .map(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    (
                        c[0].parse().unwrap(),
                        c[1].parse().unwrap(),
                        c[2].parse().unwrap(),
                    )
                })
                .collect();
            let s = Summary::of(h);
            for (q, want) in [(0.5, s.p50), (0.9, s.p90), (0.95, s.p95)] {
                let row = rows
                    .iter()
                    .find(|r| r.1 == q)
                    .unwrap_or_else(|| panic!("no row at {q}: {text}"));
                assert_eq!(row.0, want as f64, "at {q}: {row:?}\n{text}");
                assert_eq!(row.2, (q * h.len() as f64).ceil() as u64, "at {q}: {row:?}");
            }
            let last = rows.last().unwrap();
            assert_eq!((last.0, last.1, last.2), (s.max as f64, 1.0, h.len()));
        }
    }

    #[test]
    fn hgrm_rows_of_hours_still_start_with_a_blank() {
        // 3 hours and a day in ms: 8 digits and 3 decimals fill Java's 12 columns, and
        // hdr-plot reads a row only if it starts with whitespace.
        let mut h = new_histogram();
        for v in [1_000u64, 10_800_000, 86_400_000] {
            h.record(v).unwrap();
        }
        let text = hgrm(&h);
        let rows: Vec<&str> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#'))
            .collect();
        assert!(rows.len() > 3, "{text}");
        for row in &rows {
            assert!(
                row.starts_with(' '),
                "a row without a leading blank: {row:?}"
            );
        }
        let last = rows.last().unwrap();
        let max: f64 = last.split_whitespace().next().unwrap().parse().unwrap();
        assert!(max >= 86_400_000.0, "{last}");
        assert_eq!(last.split_whitespace().count(), 3, "{last}");
        // Values that fit keep Java's layout exactly.
        assert!(
            rows[0].starts_with("    1000.000 0.000000000000"),
            "{}",
            rows[0]
        );
    }
}
