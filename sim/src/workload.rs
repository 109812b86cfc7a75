//! The workload: every upload of a scenario (when, which workspace, how many images), drawn from
//! the workload's own random streams so that a policy change never changes the workload.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};
use rand_pcg::Pcg64;
use tagstorm_core::Time;

use crate::scenario::{ImageCount, MAX_UPLOADS, ScenarioFile, SizeDist, UploadGroup, secs};

/// One upload of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// When it starts.
    pub at: Time,
    /// The workspace it belongs to (groups use disjoint ranges).
    pub workspace: u32,
    /// Images in it.
    pub images: u32,
    /// Its deadline, if the group sets one.
    pub deadline: Option<Duration>,
}

/// The standard normal quantile at 0.99.
const Z_P99: f64 = 2.326_347_874;

/// Derives an independent seed for stream `name` of `seed` (SplitMix64 finalizer).
pub fn derive_seed(seed: u64, name: u64) -> u64 {
    let mut z = seed ^ name.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stream names: the workload's groups use `WORKLOAD + group index`.
pub mod streams {
    /// Workload groups (plus the group index).
    pub const WORKLOAD: u64 = 0x1000;
    /// The upstream model.
    pub const MODEL: u64 = 0x2000;
    /// Core's backoff jitter.
    pub const CORE: u64 = 0x3000;

    // Every group's stream stays below the model's (the scenario refuses more groups).
    const _: () = assert!(WORKLOAD + crate::scenario::MAX_GROUPS as u64 <= MODEL);
}

/// Every upload of `s`, sorted by start time (ties in group order, then draw order).
pub fn generate(s: &ScenarioFile) -> Vec<Arrival> {
    let mut out = Vec::new();
    let mut ws_base = 0u32;
    for (gi, g) in s.uploads.iter().enumerate() {
        let mut rng = Pcg64::seed_from_u64(derive_seed(s.seed, streams::WORKLOAD + gi as u64));
        let workspaces = group_workspaces(g);
        let deadline = g.deadline_s.map(secs);
        let start = g.start_s.unwrap_or(0.0);
        let mut times: Vec<f64> = Vec::new();
        if let (Some(at), Some(users)) = (g.at_s, g.users) {
            times.extend(std::iter::repeat_n(at, users as usize));
        } else if let (Some(every), Some(users)) = (g.every_s, g.users) {
            times.extend((0..users).map(|i| start + i as f64 * every));
        } else if let Some(p) = &g.poisson {
            poisson(&mut rng, start, p.for_s, p.per_hour / 3600.0, &mut times);
        } else if let Some(d) = &g.daily {
            let total: f64 = d.hourly_weights.iter().sum();
            for day in 0..d.days {
                for (h, w) in d.hourly_weights.iter().enumerate() {
                    let per_s = d.uploads_per_day * w / total / 3600.0;
                    let from = start + f64::from(day) * 86_400.0 + h as f64 * 3600.0;
                    poisson(&mut rng, from, 3600.0, per_s, &mut times);
                }
            }
        }
        let random_ws = g.poisson.is_some() || g.daily.is_some();
        for (i, t) in times.into_iter().enumerate() {
            if out.len() as u64 >= MAX_UPLOADS {
                break;
            }
            let ws = if random_ws {
                rng.random_range(0..workspaces)
            } else {
                (i as u64 % u64::from(workspaces)) as u32
            };
            let images = draw_count(&mut rng, &g.images);
            out.push(Arrival {
                at: Time::ZERO + secs(t),
                workspace: ws_base.saturating_add(ws),
                images,
                deadline,
            });
        }
        ws_base = ws_base.saturating_add(workspaces);
    }
    // Stable: equal times keep group and draw order.
    out.sort_by_key(|a| a.at);
    out
}

fn group_workspaces(g: &UploadGroup) -> u32 {
    match (g.workspaces, g.users) {
        (Some(w), _) => w.max(1),
        (None, Some(u)) => u32::try_from(u).unwrap_or(u32::MAX).max(1),
        (None, None) => 1,
    }
}

/// Appends the arrival times of a Poisson process of `per_s` on `[from, from + len)`.
fn poisson(rng: &mut Pcg64, from: f64, len: f64, per_s: f64, out: &mut Vec<f64>) {
    let Ok(exp) = Exp::new(per_s) else {
        return;
    };
    if per_s <= 0.0 {
        return;
    }
    let mut t = from;
    loop {
        t += exp.sample(rng);
        if t >= from + len || out.len() as u64 >= MAX_UPLOADS {
            return;
        }
        out.push(t);
    }
}

/// One upload size.
pub fn draw_count(rng: &mut Pcg64, c: &ImageCount) -> u32 {
    match c {
        ImageCount::Fixed(n) => *n,
        ImageCount::Dist(SizeDist::Lognormal {
            median,
            p99,
            min,
            max,
        }) => {
            let sigma = (p99 / median).ln() / Z_P99;
            let v = match LogNormal::new(median.ln(), sigma.max(0.0)) {
                Ok(d) if sigma > 0.0 => d.sample(rng),
                _ => *median,
            };
            clamp_round(v, *min, *max)
        }
        ImageCount::Dist(SizeDist::Pareto { min, alpha, max }) => {
            // Inverse CDF: x = xm / u^(1/alpha), u in (0, 1].
            let u: f64 = 1.0 - rng.random::<f64>();
            let v = f64::from(*min) / u.powf(1.0 / alpha);
            clamp_round(v, *min, *max)
        }
        ImageCount::Dist(SizeDist::Uniform { min, max }) => rng.random_range(*min..=*max),
    }
}

fn clamp_round(v: f64, min: u32, max: u32) -> u32 {
    if !v.is_finite() {
        return max;
    }
    (v.round().clamp(f64::from(min), f64::from(max))) as u32
}

/// Multiplies every group's upload count or rate by `factor` (for scaled benchmarks).
pub fn scale(s: &mut ScenarioFile, factor: f64) {
    for g in &mut s.uploads {
        if let Some(u) = g.users.as_mut() {
            *u = ((*u as f64) * factor).round().max(1.0) as u64;
        }
        if let Some(p) = g.poisson.as_mut() {
            p.per_hour *= factor;
        }
        if let Some(d) = g.daily.as_mut() {
            d.uploads_per_day *= factor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, mean_count};

    const HEAD: &str = "name = \"w\"\nseed = 1\n[account]\nmodel = \"gpt-4o-mini\"\ntier = 1\n\
        [images]\nwidth_px = 1024\nheight_px = 768\noutput_tokens = 60\n";

    /// Flat hourly weights: 24 ones.
    const FLAT: &str = "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]";

    /// A validated scenario of `HEAD` and `groups` (its `[[uploads]]` tables).
    fn spec(groups: &str) -> ScenarioFile {
        match Scenario::from_text("w.toml", &format!("{HEAD}{groups}"), &[]) {
            Ok(s) => s.spec,
            Err(e) => panic!("{e}"),
        }
    }

    fn with_seed(s: &ScenarioFile, seed: u64) -> ScenarioFile {
        let mut s = s.clone();
        s.seed = seed;
        s
    }

    fn at_s(a: &Arrival) -> f64 {
        a.at.since_epoch().as_secs_f64()
    }

    /// Mean and unbiased variance.
    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    /// Sorted upload sizes of one large draw of `images`.
    fn sizes(images: &str, per_day: u32) -> Vec<u32> {
        let s = spec(&format!(
            "[[uploads]]\nimages = {images}\n\
             daily = {{ uploads_per_day = {per_day}, hourly_weights = {FLAT} }}\n"
        ));
        let mut v: Vec<u32> = generate(&s).iter().map(|a| a.images).collect();
        v.sort_unstable();
        v
    }

    /// The validated form of `images = {c}`.
    fn count(c: &str) -> ImageCount {
        spec(&format!(
            "[[uploads]]\nimages = {c}\npoisson = {{ per_hour = 1, for_s = 3600 }}\n"
        ))
        .uploads[0]
            .images
            .clone()
    }

    #[test]
    fn poisson_counts_and_gaps_follow_the_rate_inside_the_window() {
        // 120 an hour for 30 minutes from t = 100 s: 60 expected, a gap of 30 s on average.
        let s = spec(
            "[[uploads]]\nimages = 1\nstart_s = 100\npoisson = { per_hour = 120, for_s = 1800 }\n",
        );
        let (mut counts, mut gaps) = (Vec::new(), Vec::new());
        for seed in 0..1000 {
            let a = generate(&with_seed(&s, seed));
            counts.push(a.len() as f64);
            let t: Vec<f64> = a.iter().map(at_s).collect();
            assert!(
                t.iter().all(|t| (100.0..1900.0).contains(t)),
                "seed {seed}: an arrival outside [100, 1900)"
            );
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "seed {seed}: unsorted");
            // Gaps from the window's start: the first one is exponential too.
            gaps.extend(
                std::iter::once(100.0)
                    .chain(t)
                    .collect::<Vec<_>>()
                    .windows(2)
                    .map(|w| w[1] - w[0]),
            );
        }
        // Count: mean = variance = 60 (standard error of the mean 0.25, of the variance ~3.5).
        let (mean, var) = mean_var(&counts);
        assert!((58.5..61.5).contains(&mean), "mean count {mean}");
        assert!((48.0..72.0).contains(&var), "count variance {var}");
        // Exponential gaps: P(gap > 30 s) = 1/e (gaps cut by the window's end are not seen,
        // which lowers it slightly).
        let over = gaps.iter().filter(|g| **g > 30.0).count() as f64 / gaps.len() as f64;
        assert!((0.35..0.38).contains(&over), "P(gap > 30 s) = {over}");
        let (mean_gap, var_gap) = mean_var(&gaps);
        assert!((28.5..31.0).contains(&mean_gap), "mean gap {mean_gap}");
        assert!((820.0..960.0).contains(&var_gap), "gap variance {var_gap}");
    }

    #[test]
    fn a_short_window_keeps_every_arrival_inside_it() {
        // 36,000 an hour for 10 s from t = 5 s: ~100 arrivals, all in [5, 15).
        let s = spec(
            "[[uploads]]\nimages = 1\nstart_s = 5\npoisson = { per_hour = 36000, for_s = 10 }\n",
        );
        for seed in 0..200 {
            let a = generate(&with_seed(&s, seed));
            assert!(!a.is_empty());
            assert!(
                a.iter()
                    .all(|a| a.at >= Time::from_secs(5) && a.at < Time::from_secs(15))
            );
        }
    }

    #[test]
    fn a_daily_curve_follows_its_weights_hour_by_hour_and_day_by_day() {
        // Weights summing to 27, zeros included, over 3 days from t = 1,800 s: an hour of
        // weight 1 expects 2,000 / 27 = 74.07 uploads a day.
        let w = "[0, 0, 1, 1, 2, 2, 0, 0, 4, 4, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 3]";
        let weights: Vec<f64> = w
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|x| x.trim().parse().unwrap())
            .collect();
        let s = spec(&format!(
            "[[uploads]]\nimages = 1\nworkspaces = 4\nstart_s = 1800\n\
             daily = {{ uploads_per_day = 2000, days = 3, hourly_weights = {w} }}\n"
        ));
        let seeds = 200;
        let mut per_hour = [0.0f64; 72];
        let mut per_ws = [0.0f64; 4];
        let mut totals = Vec::new();
        for seed in 0..seeds {
            let a = generate(&with_seed(&s, seed));
            totals.push(a.len() as f64);
            for x in &a {
                let t = at_s(x) - 1800.0;
                assert!((0.0..3.0 * 86_400.0).contains(&t), "{t}");
                per_hour[(t / 3600.0) as usize] += 1.0;
                per_ws[x.workspace as usize] += 1.0;
            }
        }
        // 6,000 a run, Poisson: variance 6,000 too.
        let (mean, var) = mean_var(&totals);
        assert!((5_980.0..6_020.0).contains(&mean), "uploads per run {mean}");
        assert!((4_800.0..7_200.0).contains(&var), "variance {var}");
        for (h, n) in per_hour.iter().enumerate() {
            let expect = 2_000.0 * weights[h % 24] / 27.0 * f64::from(seeds as u32);
            if expect == 0.0 {
                assert_eq!(*n, 0.0, "hour {h} has weight 0");
            } else {
                // Standard error sqrt(expect) <= 2.2% of it here: allow 8%.
                assert!(
                    (n / expect - 1.0).abs() < 0.08,
                    "hour {h}: {n} for {expect}"
                );
            }
        }
        // Random workspaces are uniform: 300,000 each (standard error 0.2%).
        for n in per_ws {
            assert!((n / 300_000.0 - 1.0).abs() < 0.01, "{per_ws:?}");
        }
    }

    #[test]
    fn lognormal_sizes_have_the_median_and_p99_they_are_given() {
        // 100,000 draws of median 20, p99 2,000 (workday's sizes).
        let v = sizes(
            "{ kind = \"lognormal\", median = 20, p99 = 2000, max = 10000 }",
            100_000,
        );
        let n = v.len();
        assert!((95_000..105_000).contains(&n), "{n}");
        assert!((19..=21).contains(&v[n / 2]), "median {}", v[n / 2]);
        let p99 = v[n * 99 / 100];
        assert!((1_800..2_200).contains(&p99), "p99 {p99}");
        assert!(v[0] >= 1 && v[n - 1] <= 10_000);
        // A tighter cap clamps: median 8, p99 60, within [2, 80] (staggered-small-uploads).
        let v = sizes(
            "{ kind = \"lognormal\", median = 8, p99 = 60, min = 2, max = 80 }",
            100_000,
        );
        let n = v.len();
        assert_eq!(v[n / 2], 8);
        assert!(
            (55..66).contains(&v[n * 99 / 100]),
            "p99 {}",
            v[n * 99 / 100]
        );
        assert_eq!((v[0], v[n - 1]), (2, 80));
        // p99 = median: every upload is the median.
        let v = sizes(
            "{ kind = \"lognormal\", median = 7, p99 = 7, max = 10 }",
            1_000,
        );
        assert!(v.iter().all(|x| *x == 7));
    }

    #[test]
    fn mean_count_of_a_lognormal_is_the_mean_of_its_clamped_draws() {
        // Workday's sizes: median 20, p99 2,000, cut at 10,000. The unclamped law's mean
        // (141.9) overstated the draws' (about 133.7, with rounding to whole images).
        let c = "{ kind = \"lognormal\", median = 20, p99 = 2000, max = 10000 }";
        let v = sizes(c, 100_000);
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
        let expect = mean_count(&count(c));
        assert!(
            (mean / expect - 1.0).abs() < 0.02,
            "mean {mean}, mean_count {expect}"
        );
    }

    #[test]
    fn pareto_and_uniform_sizes_follow_their_laws() {
        // Pareto(5, 1.2): P(X >= 10) = P(x >= 9.5 before rounding) = (5 / 9.5)^1.2 = 0.4630.
        let c = "{ kind = \"pareto\", min = 5, alpha = 1.2, max = 10000 }";
        let v = sizes(c, 200_000);
        let n = v.len() as f64;
        let over = v.iter().filter(|x| **x >= 10).count() as f64 / n;
        assert!((over - 0.463).abs() < 0.005, "P(X >= 10) = {over}");
        assert_eq!(v[0], 5);
        assert!(*v.last().unwrap() <= 10_000);
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
        let expect = mean_count(&count(c));
        assert!(
            (mean / expect - 1.0).abs() < 0.03,
            "mean {mean}, mean_count {expect}"
        );
        // Uniform 3..=7: each value a fifth of the draws, nothing outside.
        let v = sizes("{ kind = \"uniform\", min = 3, max = 7 }", 100_000);
        let n = v.len() as f64;
        for k in 3..=7 {
            let share = v.iter().filter(|x| **x == k).count() as f64 / n;
            assert!((share - 0.2).abs() < 0.01, "{k}: {share}");
        }
        assert_eq!((v[0], *v.last().unwrap()), (3, 7));
    }

    #[test]
    fn the_seed_fixes_the_workload_and_groups_draw_from_their_own_streams() {
        let two = |g1: &str| {
            spec(&format!(
                "[[uploads]]\nworkspaces = 5\nimages = {{ kind = \"lognormal\", median = 8, p99 = 60, max = 80 }}\n\
                 poisson = {{ per_hour = 600, for_s = 3600 }}\n[[uploads]]\n{g1}\n"
            ))
        };
        let s = two("images = 3\npoisson = { per_hour = 60, for_s = 3600 }");
        assert_eq!(generate(&s), generate(&s));
        assert_ne!(generate(&s), generate(&with_seed(&s, 2)));
        // Another rate, sizes or pattern in group 1 leaves group 0 (workspaces 0..5) as it was.
        let group0 = |s: &ScenarioFile| -> Vec<Arrival> {
            generate(s)
                .into_iter()
                .filter(|a| a.workspace < 5)
                .collect()
        };
        let before = group0(&s);
        assert!(before.len() > 400);
        for g1 in [
            "images = 3\npoisson = { per_hour = 6000, for_s = 600 }",
            "images = { kind = \"uniform\", min = 1, max = 90 }\npoisson = { per_hour = 60, for_s = 3600 }",
            "users = 40\nimages = 2\nevery_s = 7",
            &format!("images = 1\ndaily = {{ uploads_per_day = 500, hourly_weights = {FLAT} }}"),
        ] {
            assert_eq!(group0(&two(g1)), before, "{g1}");
        }
    }

    #[test]
    fn at_and_every_arrivals_are_exact_and_take_workspaces_in_turn() {
        let s = spec(
            "[[uploads]]\nusers = 5\nworkspaces = 2\nimages = 4\nevery_s = 2.5\nstart_s = 10\n\
             [[uploads]]\nusers = 3\nimages = 9\nat_s = 11\n",
        );
        let got: Vec<(u64, u32, u32)> = generate(&s)
            .iter()
            .map(|a| (a.at.as_millis(), a.workspace, a.images))
            .collect();
        assert_eq!(
            got,
            [
                (10_000, 0, 4),
                (11_000, 2, 9),
                (11_000, 3, 9),
                (11_000, 4, 9),
                (12_500, 1, 4),
                (15_000, 0, 4),
                (17_500, 1, 4),
                (20_000, 0, 4),
            ]
        );
    }
}
