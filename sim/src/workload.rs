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
