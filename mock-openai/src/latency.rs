//! Latency distributions (fixed, uniform, lognormal, empirical), sampled from the model's
//! seeded RNG, with the fastest possible value exposed for the simulator's physical bound.

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, LogNormal, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The standard normal quantile at 0.99, used to turn a p99 into a lognormal sigma.
pub const Z_P99: f64 = 2.3263;

/// Upper bound on any sampled latency, one week in milliseconds: keeps samples finite and
/// every `Duration` conversion in range whatever the configuration.
const MAX_SAMPLE_MS: f64 = 7.0 * 86_400_000.0;

/// A latency distribution, in milliseconds. TOML: `{ kind = "lognormal", median_ms = 3000,
/// p99_ms = 8000, min_ms = 1000 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LatencyConfig {
    /// Always `ms` milliseconds.
    Fixed {
        /// The latency, in milliseconds.
        ms: f64,
    },
    /// Uniform between `min_ms` and `max_ms` milliseconds.
    Uniform {
        /// Smallest value, in milliseconds.
        min_ms: f64,
        /// Largest value, in milliseconds.
        max_ms: f64,
    },
    /// Lognormal with the given median and 99th percentile (sigma = ln(p99/median) / 2.3263),
    /// clamped to `[min_ms, max_ms]`.
    Lognormal {
        /// Median, in milliseconds.
        median_ms: f64,
        /// 99th percentile, in milliseconds; must be at least the median.
        p99_ms: f64,
        /// Fastest possible value, in milliseconds (samples below are raised to it).
        #[serde(default)]
        min_ms: f64,
        /// Slowest possible value, in milliseconds (samples above are lowered to it);
        /// default one week.
        #[serde(default = "default_max_ms")]
        max_ms: f64,
    },
    /// Drawn uniformly from recorded samples, in milliseconds.
    Empirical {
        /// The recorded latencies, in milliseconds; at least one.
        samples_ms: Vec<f64>,
    },
}

fn default_max_ms() -> f64 {
    MAX_SAMPLE_MS
}

impl Default for LatencyConfig {
    /// A realtime vision call: median 3 s, p99 8 s, never under 1 s. Source: SPEC §5 ("the
    /// seed quotes 2–5 s per image; heavy-tailed") — the median sits mid-range, and the p99
    /// leaves a tail well past 5 s. Not measured against the real API.
    fn default() -> Self {
        LatencyConfig::Lognormal {
            median_ms: 3_000.0,
            p99_ms: 8_000.0,
            min_ms: 1_000.0,
            max_ms: MAX_SAMPLE_MS,
        }
    }
}

/// Converts milliseconds to a `Duration`, mapping NaN and negatives to zero and capping at
/// one week, so no input can panic.
pub fn ms_to_duration(ms: f64) -> Duration {
    if ms.is_nan() || ms <= 0.0 {
        return Duration::ZERO;
    }
    let ms = ms.min(MAX_SAMPLE_MS);
    Duration::from_nanos((ms * 1_000_000.0) as u64)
}

impl LatencyConfig {
    /// Checks the parameters; `field` is the path used in the error (`upstream.latency`).
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let bad = |sub: &str, why: String| Err(ConfigError::invalid(format!("{field}.{sub}"), why));
        let ok_ms = |v: f64| v.is_finite() && v >= 0.0;
        match self {
            LatencyConfig::Fixed { ms } if !ok_ms(*ms) => {
                bad("ms", format!("must be a finite number ≥ 0, got {ms}"))
            }
            LatencyConfig::Uniform { min_ms, .. } if !ok_ms(*min_ms) => bad(
                "min_ms",
                format!("must be a finite number ≥ 0, got {min_ms}"),
            ),
            LatencyConfig::Uniform { min_ms, max_ms } if !ok_ms(*max_ms) || max_ms < min_ms => bad(
                "max_ms",
                format!("must be finite and ≥ min_ms ({min_ms}), got {max_ms}"),
            ),
            LatencyConfig::Lognormal { median_ms, .. }
                if !(median_ms.is_finite() && *median_ms > 0.0) =>
            {
                bad(
                    "median_ms",
                    format!("must be a finite number > 0, got {median_ms}"),
                )
            }
            LatencyConfig::Lognormal {
                median_ms, p99_ms, ..
            } if !p99_ms.is_finite() || p99_ms < median_ms => bad(
                "p99_ms",
                format!("must be finite and ≥ median_ms ({median_ms}), got {p99_ms}"),
            ),
            LatencyConfig::Lognormal { min_ms, .. } if !ok_ms(*min_ms) => bad(
                "min_ms",
                format!("must be a finite number ≥ 0, got {min_ms}"),
            ),
            LatencyConfig::Lognormal { min_ms, max_ms, .. }
                if !ok_ms(*max_ms) || max_ms < min_ms =>
            {
                bad(
                    "max_ms",
                    format!("must be finite and ≥ min_ms ({min_ms}), got {max_ms}"),
                )
            }
            LatencyConfig::Empirical { samples_ms } if samples_ms.is_empty() => {
                bad("samples_ms", "must hold at least one sample".to_owned())
            }
            LatencyConfig::Empirical { samples_ms } => {
                match samples_ms.iter().position(|v| !ok_ms(*v)) {
                    Some(i) => bad(
                        &format!("samples_ms[{i}]"),
                        format!("must be a finite number ≥ 0, got {}", samples_ms[i]),
                    ),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Draws one latency.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        self.sampler().sample(rng)
    }

    /// Draws one latency in milliseconds (not yet clamped to the one-week cap).
    pub fn sample_ms<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        self.sampler().sample_ms(rng)
    }

    /// This distribution with its logarithms worked out once, for drawing many samples; it
    /// draws exactly what [`LatencyConfig::sample`] does.
    pub fn sampler(&self) -> Sampler {
        Sampler(match self {
            LatencyConfig::Fixed { ms } => Draw::Fixed(*ms),
            LatencyConfig::Uniform { min_ms, max_ms } => Draw::Uniform {
                min: *min_ms,
                span: (max_ms - min_ms).max(0.0),
            },
            LatencyConfig::Lognormal {
                median_ms,
                p99_ms,
                min_ms,
                max_ms,
            } => {
                let sigma = sigma_from_p99(*median_ms, *p99_ms);
                let max = max_ms.max(*min_ms);
                Draw::Lognormal {
                    dist: lognormal(*median_ms, sigma),
                    otherwise: if median_ms.is_finite() && *median_ms > 0.0 {
                        *median_ms
                    } else {
                        0.0
                    },
                    min: *min_ms,
                    max,
                    // A NaN bound clamps nothing (`f64::max` and `f64::min` ignore it), and
                    // `f64::min` caps a NaN `max` at the one-week cap, as the conversion would.
                    min_capped: if min_ms.is_nan() {
                        f64::NEG_INFINITY
                    } else {
                        min_ms.min(MAX_SAMPLE_MS)
                    },
                    max_capped: max.min(MAX_SAMPLE_MS),
                }
            }
            LatencyConfig::Empirical { samples_ms } => Draw::Empirical(samples_ms.clone()),
        })
    }

    /// The fastest latency this distribution can produce.
    pub fn min(&self) -> Duration {
        ms_to_duration(match self {
            LatencyConfig::Fixed { ms } => *ms,
            LatencyConfig::Uniform { min_ms, .. } | LatencyConfig::Lognormal { min_ms, .. } => {
                *min_ms
            }
            LatencyConfig::Empirical { samples_ms } => {
                samples_ms.iter().copied().fold(f64::INFINITY, f64::min)
            }
        })
    }

    /// The median, in milliseconds (for reports and sanity checks).
    pub fn median_ms(&self) -> f64 {
        match self {
            LatencyConfig::Fixed { ms } => *ms,
            LatencyConfig::Uniform { min_ms, max_ms } => (min_ms + max_ms) / 2.0,
            LatencyConfig::Lognormal {
                median_ms,
                min_ms,
                max_ms,
                ..
            } => median_ms.max(*min_ms).min(*max_ms),
            LatencyConfig::Empirical { samples_ms } => {
                let mut s: Vec<f64> = samples_ms
                    .iter()
                    .copied()
                    .filter(|v| v.is_finite())
                    .collect();
                s.sort_by(f64::total_cmp);
                s.get(s.len() / 2).copied().unwrap_or(0.0)
            }
        }
    }
}

/// The lognormal sigma whose 99th percentile is `p99` when the median is `median`.
pub fn sigma_from_p99(median: f64, p99: f64) -> f64 {
    if median > 0.0 && p99 > median {
        (p99 / median).ln() / Z_P99
    } else {
        0.0
    }
}

/// One lognormal draw with the given median and sigma; non-finite parameters give the median.
pub fn lognormal_ms<R: Rng + ?Sized>(rng: &mut R, median: f64, sigma: f64) -> f64 {
    if !(median.is_finite() && median > 0.0) {
        return 0.0;
    }
    match lognormal(median, sigma) {
        Some(dist) => dist.sample(rng),
        None => median,
    }
}

/// The lognormal distribution with this median and sigma, if both make one with any spread.
fn lognormal(median: f64, sigma: f64) -> Option<LogNormal<f64>> {
    if !(median.is_finite() && median > 0.0 && sigma.is_finite() && sigma > 0.0) {
        return None;
    }
    LogNormal::new(median.ln(), sigma).ok()
}

/// A [`LatencyConfig`] ready to draw from: see [`LatencyConfig::sampler`].
#[derive(Clone, Debug)]
pub struct Sampler(Draw);

#[derive(Clone, Debug)]
enum Draw {
    Fixed(f64),
    Uniform {
        min: f64,
        span: f64,
    },
    Lognormal {
        dist: Option<LogNormal<f64>>,
        /// The value when there is no spread (or no valid median: 0).
        otherwise: f64,
        min: f64,
        max: f64,
        /// `min` (NaN: -inf) and `max` capped at [`MAX_SAMPLE_MS`]: clamping to these is
        /// clamping to `[min, max]` and then capping, as [`ms_to_duration`] does, in one step.
        min_capped: f64,
        max_capped: f64,
    },
    Empirical(Vec<f64>),
}

impl Sampler {
    /// Draws one latency.
    ///
    /// Inline, with a path of its own for a lognormal with spread (every realtime answer of
    /// the default configuration): out of line, the call saved five registers, dispatched on
    /// the kind through a jump table and clamped with `f64::max` and `f64::min`'s NaN
    /// handling; on this path a sample fell from 192 to 167 instructions on the million-image
    /// day.
    #[inline]
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        match &self.0 {
            Draw::Lognormal {
                dist: Some(dist),
                min_capped,
                max_capped,
                ..
            } => lognormal_duration(dist, *min_capped, *max_capped, rng),
            _ => self.sample_other(rng),
        }
    }

    /// [`Sampler::sample`] for every other distribution.
    #[inline(never)]
    fn sample_other<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        ms_to_duration(self.sample_ms(rng))
    }

    /// Draws one latency in milliseconds (not yet clamped to the one-week cap).
    pub fn sample_ms<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match &self.0 {
            Draw::Fixed(ms) => *ms,
            Draw::Uniform { min, span } => {
                let u: f64 = rng.random();
                min + u * span
            }
            Draw::Lognormal {
                dist,
                otherwise,
                min,
                max,
                ..
            } => {
                let v = dist.map_or(*otherwise, |d| d.sample(rng));
                v.max(*min).min(*max)
            }
            Draw::Empirical(samples) => {
                if samples.is_empty() {
                    0.0
                } else {
                    samples[rng.random_range(0..samples.len())]
                }
            }
        }
    }
}

/// One lognormal latency, clamped to `[lo, hi]` (the configured bounds, capped at
/// [`MAX_SAMPLE_MS`]): the same draw and the same value as `dist.sample(rng)` clamped and
/// converted by [`ms_to_duration`]: `LogNormal::sample` is `from_zscore` of a standard normal
/// draw, as here. A lognormal draw is finite or +inf, never NaN, so plain comparisons clamp it
/// as `f64::max` and `f64::min` would, without their NaN handling, and the clamped value needs
/// no NaN check either. Out of line: the standard normal draw (a call LLVM keeps out of line)
/// and `exp` dominate, and the simulator's loop stays smaller.
#[inline(never)]
fn lognormal_duration<R: Rng + ?Sized>(
    dist: &LogNormal<f64>,
    lo: f64,
    hi: f64,
    rng: &mut R,
) -> Duration {
    let v = dist.from_zscore(rng.sample(StandardNormal));
    let ms = if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    };
    if ms > 0.0 {
        Duration::from_nanos((ms * 1_000_000.0) as u64)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_pcg::Pcg64;

    fn quantiles(cfg: &LatencyConfig) -> (f64, f64) {
        let mut rng = Pcg64::seed_from_u64(7);
        let mut v: Vec<f64> = (0..20_000)
            .map(|_| cfg.sample(&mut rng).as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() * 99 / 100])
    }

    #[test]
    fn default_lognormal_hits_median_and_p99() {
        let cfg = LatencyConfig::default();
        cfg.validate("upstream.latency").unwrap();
        let (p50, p99) = quantiles(&cfg);
        assert!((p50 - 3000.0).abs() < 100.0, "p50 {p50}");
        assert!((p99 - 8000.0).abs() < 600.0, "p99 {p99}");
        assert_eq!(cfg.min(), Duration::from_secs(1));
    }

    #[test]
    fn kinds_parse_from_toml_and_respect_min() {
        let check = |toml_src: &str, min_ms: u64| {
            let cfg: LatencyConfig = toml::from_str(toml_src).unwrap();
            cfg.validate("x").unwrap();
            assert_eq!(cfg.min(), Duration::from_millis(min_ms));
            let mut rng = Pcg64::seed_from_u64(1);
            for _ in 0..1000 {
                assert!(cfg.sample(&mut rng) >= cfg.min());
            }
        };
        check("kind = \"fixed\"\nms = 250", 250);
        check("kind = \"uniform\"\nmin_ms = 100\nmax_ms = 200", 100);
        check(
            "kind = \"lognormal\"\nmedian_ms = 100\np99_ms = 900\nmin_ms = 20",
            20,
        );
        check("kind = \"empirical\"\nsamples_ms = [300, 120, 900]", 120);
    }

    #[test]
    fn validation_names_the_field() {
        let check = |cfg: LatencyConfig, expect: &str| {
            assert_eq!(
                cfg.validate("upstream.latency").unwrap_err().to_string(),
                expect
            );
        };
        check(
            LatencyConfig::Uniform {
                min_ms: 5.0,
                max_ms: 1.0,
            },
            "upstream.latency.max_ms: must be finite and ≥ min_ms (5), got 1",
        );
        check(
            LatencyConfig::Lognormal {
                median_ms: 100.0,
                p99_ms: 50.0,
                min_ms: 0.0,
                max_ms: 1e6,
            },
            "upstream.latency.p99_ms: must be finite and ≥ median_ms (100), got 50",
        );
        check(
            LatencyConfig::Empirical {
                samples_ms: vec![1.0, f64::NAN],
            },
            "upstream.latency.samples_ms[1]: must be a finite number ≥ 0, got NaN",
        );
        assert!(toml::from_str::<LatencyConfig>("kind = \"fixed\"\nms = 1\nextra = 2").is_err());
    }

    #[test]
    fn the_lognormal_path_draws_what_sample_ms_does() {
        let cases = [
            (3_000.0, 8_000.0, 1_000.0, MAX_SAMPLE_MS),
            (100.0, 900.0, 20.0, 150.0),
            (100.0, 900.0, 0.0, 0.0),
            (1e9, 1e10, 0.0, 1e12),
            (1e9, 1e10, 1e10, 1e12),
            (3_000.0, 8_000.0, f64::NAN, 5_000.0),
            (3_000.0, 8_000.0, 2_000.0, f64::NAN),
            (3_000.0, 8_000.0, f64::NAN, f64::NAN),
        ];
        for (median_ms, p99_ms, min_ms, max_ms) in cases {
            let s = LatencyConfig::Lognormal {
                median_ms,
                p99_ms,
                min_ms,
                max_ms,
            }
            .sampler();
            let mut a = Pcg64::seed_from_u64(3);
            let mut b = a.clone();
            for _ in 0..5_000 {
                assert_eq!(s.sample(&mut a), ms_to_duration(s.sample_ms(&mut b)));
            }
        }
    }

    #[test]
    fn conversion_never_panics() {
        assert_eq!(ms_to_duration(f64::NAN), Duration::ZERO);
        assert_eq!(ms_to_duration(-5.0), Duration::ZERO);
        assert_eq!(
            ms_to_duration(f64::INFINITY),
            Duration::from_secs(7 * 86_400)
        );
    }
}
