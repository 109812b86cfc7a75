//! `tagstorm-sim report`: the capacity planner's report (SPEC §3, job 3). How much load each
//! account tier carries before a latency's p95 passes a limit, what the next tier buys, and what
//! 1,000 images cost through the realtime and the Batch API.
//!
//! The capacity of a tier is found by a bounded, deterministic search over runs. What it varies
//! depends on the scenario's first `[[uploads]]` group:
//!
//! - A group with `users` (`at_s` or `every_s` arrivals): [`Search`] doubles its `users` from 1
//!   until a run's p95 passes the limit (or `--max-users` is reached), then bisects the gap
//!   between the last passing and the first failing count. The answer `N` is a boundary: N users
//!   pass and N + 1 do not. Every run is what `run --set account.tier=T --set uploads.0.users=N`
//!   gives.
//! - A group with `poisson` or `daily` arrivals: [`FactorSearch`] scales every group's arrival
//!   rate by one load factor ([`workload::scale`]), doubling from × 1 (halving when × 1 fails),
//!   then bisecting until the first failing factor is within [`FACTOR_PRECISION`] above the
//!   passing one. The answer is reported as the arrival rate it gives. Every run is what `run
//!   --set account.tier=T --set uploads.0.poisson.per_hour=R` (and so on per group) gives.
//!
//! A p95 need not grow strictly with the load, so a larger load past the boundary may pass
//! again; the search reports the first boundary it finds, and no run is made twice. The report
//! is one document, rendered to Markdown (stdout, `report.md`), to a self-contained HTML page
//! with the chart inline, and with `--json` to one `tagstorm.report.v1` object.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tagstorm_core::Policy;
use tagstorm_core::account::AccountLimits;
use tagstorm_core::tokens::Model;

use crate::cli::{self, CliError, Outcome, ReportArgs};
use crate::report::{self, count, fmt_ms, latency, thousands, usd};
use crate::results::{Results, Summary};
use crate::scenario::{FieldPath, Scenario, ScenarioError, ScenarioFile, SetArg, mean_count};
use crate::workload;

/// The most runs one report makes; `--max-users` (at most 100,000), `--max-factor` (at most
/// 100,000) and the five published tiers keep every report under it, and it is checked before
/// anything runs.
pub const MAX_RUNS: usize = 200;

/// The field the search varies when the first group has users.
pub const USERS_KEY: &str = "uploads.0.users";

/// `--max-users` when not given.
pub const DEFAULT_MAX_USERS: u64 = 10_000;

/// `--max-factor` when not given: halved until the scaled workload is one the simulator holds.
pub const DEFAULT_MAX_FACTOR: f64 = 64.0;

/// The smallest load factor a search tries: 1/1024 of the scenario's arrival rates.
pub const MIN_FACTOR: f64 = 1.0 / 1024.0;

/// A load factor search stops when the first failing factor is at most this fraction above the
/// passing one.
pub const FACTOR_PRECISION: f64 = 0.01;

/// Images in the cost comparison.
pub const COST_IMAGES: u64 = 1_000;

/// The schema tag of `report --json`.
pub const SCHEMA: &str = "tagstorm.report.v1";

/// The `report --help` text after the options.
pub const REPORT_HELP: &str = "\
Examples:
  tagstorm-sim report scenarios/ten-users-fifteen-images.toml
  tagstorm-sim report scenarios/ten-users-fifteen-images.toml --tiers all --out out/capacity
  tagstorm-sim report scenarios/single-300-upload.toml --tiers 1,2,3 --p95-limit-s 600 \\
      --metric upload-first-tag --out capacity.html
  tagstorm-sim report scenarios/workday.toml --tiers 2,3 --out out/workday
  tagstorm-sim report scenarios/staggered-small-uploads.toml --json > capacity.json

What is varied depends on the scenario's first [[uploads]] group:

  users (at_s or every_s arrivals): uploads.0.users, the number of users in that group (each
  uploads the group's images; with at_s they all start at once). Capacity is the largest user
  count whose p95 of --metric is at or under --p95-limit-s, found by doubling from 1 user, then
  bisecting: N users pass and N + 1 do not. \"≥ N (cap)\" means --max-users still passed; \"< 1\"
  that one user already fails.

  poisson or daily arrivals (scenarios/workday.toml, staggered-small-uploads.toml): a load
  factor that scales every group's arrivals at once, as bench scales a workload:
  uploads.N.poisson.per_hour, uploads.N.daily.uploads_per_day, and the users of any other group
  (rounded); × 1 is the scenario as written. Capacity is the largest factor whose p95 passes,
  found by doubling from × 1 (halving when × 1 fails, down to × 1/1024), then bisecting until the
  first failing factor is within 1% above it. It is reported as the arrival rate it gives:
  uploads and (at the mean upload size) images per hour for poisson, per day for daily. \"≥ × F
  (cap)\" means --max-factor still passed; \"< × F\" that the smallest factor already fails.
  The default --max-factor, 64, is halved until the scaled workload fits the simulator's
  20,000,000 images; a --max-factor whose workload does not fit is refused before any run.

Every other field stays as the scenario (and --set) says. A run that leaves images pending (its
uploads unfinished at sim.max_duration_s) never passes, whatever the p95 of the rest, and nor
does one that fails more than --max-failed-pct of its images (default 1%): a dropped image
finishes early and flatters the p95, so a policy that drops images has not carried the load.
The table marks such runs \"no (N pending)\" or \"no (N failed)\". A run whose
arrivals drew no upload passes, marked \"yes (no uploads)\": nothing arrived, so nothing waited. Next to the
capacity, each tier at the scenario's own load, and 1,000 images as one upload on the scenario's
account, once all realtime and once all through the Batch API (the policy with routing =
\"threshold\" and its thresholds set to 1,000 or 0), costed by the simulator's own billing.

At most 2 × log2(--max-users) + 2 runs per tier for users, 1 + max(log2(--max-factor), 10) + 7
for a load factor (18 at the default), plus one per tier and two: never more than 200. The same
inputs give byte-identical reports (no timestamps). Without --out the report prints as
Markdown; --json prints one JSON object instead (schema tagstorm.report.v1: the inputs, per tier
the capacity, the load that first failed and the sets that reproduce each with `run`, and every
run). --out FILE.html writes one self-contained page (tables and the chart inline, no scripts),
--out FILE.md the Markdown and --out FILE.json the JSON object (what stdout gets without and
with --json); any other --out is a folder: DIR/report.html, DIR/report.md and DIR/capacity.svg.

Exit codes: 0 ok; 1 a run finished with an invariant failed (the report is still written);
2 bad input, a tier the model has no published limits for or a cap whose workload is too large
included (nothing runs); 3 an output could not be written.";

/// The latency whose p95 the search holds to the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LatencyMetric {
    /// Upload start → every image of the upload tagged or failed.
    UploadComplete,
    /// Upload start → its first tag.
    UploadFirstTag,
    /// Upload start → image tagged, per image.
    ImageTagged,
}

impl LatencyMetric {
    /// The results key, as in `latency_ms.<key>`.
    pub fn key(self) -> &'static str {
        match self {
            LatencyMetric::UploadComplete => "upload_complete",
            LatencyMetric::UploadFirstTag => "upload_first_tag",
            LatencyMetric::ImageTagged => "image_tagged",
        }
    }

    /// What it measures, for people.
    pub fn label(self) -> &'static str {
        match self {
            LatencyMetric::UploadComplete => "upload complete",
            LatencyMetric::UploadFirstTag => "first tag",
            LatencyMetric::ImageTagged => "image tagged",
        }
    }

    fn of(self, r: &Results) -> Summary {
        match self {
            LatencyMetric::UploadComplete => r.latency_ms.upload_complete,
            LatencyMetric::UploadFirstTag => r.latency_ms.upload_first_tag,
            LatencyMetric::ImageTagged => r.latency_ms.image_tagged,
        }
    }
}

/// What a tier's search found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    /// Even one user passes the limit.
    BelowOne,
    /// `N` users pass and `N + 1` do not.
    Exactly(u64),
    /// The cap itself passes.
    AtLeast(u64),
}

impl Capacity {
    /// The passing user count, if any.
    pub fn users(self) -> Option<u64> {
        match self {
            Capacity::BelowOne => None,
            Capacity::Exactly(n) | Capacity::AtLeast(n) => Some(n),
        }
    }

    /// `13`, `≥ 10,000 (cap)`, `< 1`.
    pub fn text(self) -> String {
        match self {
            Capacity::BelowOne => "< 1".into(),
            Capacity::Exactly(n) => thousands(n),
            Capacity::AtLeast(n) => format!("≥ {} (cap)", thousands(n)),
        }
    }
}

/// The search for one tier's capacity, sans-IO: [`Search::next`] names the user count to run,
/// [`Search::record`] takes whether it passed. Doubling from 1 until a count fails or the cap
/// is reached, then bisection between the largest passing and the smallest failing count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Search {
    cap: u64,
    pass: Option<u64>,
    fail: Option<u64>,
}

impl Search {
    /// A search capped at `cap` users (at least 1).
    pub fn new(cap: u64) -> Search {
        Search {
            cap: cap.max(1),
            pass: None,
            fail: None,
        }
    }

    /// The next user count to run, or `None` when the answer is known.
    pub fn next(&self) -> Option<u64> {
        match (self.pass, self.fail) {
            (None, None) => Some(1),
            (None, Some(_)) => None,
            (Some(p), None) if p >= self.cap => None,
            (Some(p), None) => Some(p.saturating_mul(2).min(self.cap)),
            (Some(p), Some(f)) if f <= p + 1 => None,
            (Some(p), Some(f)) => Some(p + (f - p) / 2),
        }
    }

    /// Records whether `users` passed.
    pub fn record(&mut self, users: u64, passed: bool) {
        if passed {
            self.pass = Some(self.pass.map_or(users, |p| p.max(users)));
        } else {
            self.fail = Some(self.fail.map_or(users, |f| f.min(users)));
        }
    }

    /// The answer so far (final once [`Search::next`] is `None`).
    pub fn capacity(&self) -> Capacity {
        match self.pass {
            None => Capacity::BelowOne,
            Some(p) if p >= self.cap => Capacity::AtLeast(p),
            Some(p) => Capacity::Exactly(p),
        }
    }

    /// The smallest count that failed, if any.
    pub fn first_failing(&self) -> Option<u64> {
        self.fail
    }

    /// The most runs a search capped at `cap` can take: doubling reaches the cap in
    /// ⌈log2 cap⌉ + 1 runs, and the gap it leaves is bisected in at most ⌈log2 cap⌉ more.
    pub fn max_runs(cap: u64) -> usize {
        let bits = (64 - cap.max(1).saturating_sub(1).leading_zeros()) as usize;
        2 * bits + 2
    }
}

/// What a tier's load factor search found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FactorCapacity {
    /// Even the smallest factor tried (this one) passes the limit.
    Below(f64),
    /// This factor passes, and the first failing factor is at most [`FACTOR_PRECISION`] above.
    Exactly(f64),
    /// The cap itself passes.
    AtLeast(f64),
}

impl FactorCapacity {
    /// The passing factor, if any.
    pub fn factor(self) -> Option<f64> {
        match self {
            FactorCapacity::Below(_) => None,
            FactorCapacity::Exactly(f) | FactorCapacity::AtLeast(f) => Some(f),
        }
    }

    /// `× 2.55`, `≥ × 64 (cap)`, `< × 0.000977`.
    pub fn text(self) -> String {
        match self {
            FactorCapacity::Below(f) => format!("< × {}", sig3(f)),
            FactorCapacity::Exactly(f) => format!("× {}", sig3(f)),
            FactorCapacity::AtLeast(f) => format!("≥ × {} (cap)", sig3(f)),
        }
    }
}

/// The search for one tier's capacity as a load factor, sans-IO like [`Search`]: from × 1
/// (or the cap, if lower), doubling until a factor fails or the cap is reached, or halving until
/// one passes or the floor is reached; then bisection until the smallest failing factor is at
/// most [`FACTOR_PRECISION`] above the largest passing one.
#[derive(Clone, Debug, PartialEq)]
pub struct FactorSearch {
    cap: f64,
    floor: f64,
    pass: Option<f64>,
    fail: Option<f64>,
}

impl FactorSearch {
    /// A search between `floor` and `cap` (both positive, `floor` ≤ `cap`).
    pub fn new(cap: f64, floor: f64) -> FactorSearch {
        FactorSearch {
            cap,
            floor: floor.min(cap),
            pass: None,
            fail: None,
        }
    }

    /// The next factor to run, or `None` when the answer is known.
    pub fn next(&self) -> Option<f64> {
        match (self.pass, self.fail) {
            (None, None) => Some(self.cap.min(1.0)),
            (None, Some(f)) if f <= self.floor => None,
            (None, Some(f)) => Some((f / 2.0).max(self.floor)),
            (Some(p), None) if p >= self.cap => None,
            (Some(p), None) => Some((p * 2.0).min(self.cap)),
            (Some(p), Some(f)) if f - p <= p * FACTOR_PRECISION => None,
            (Some(p), Some(f)) => Some(p + (f - p) / 2.0),
        }
    }

    /// Records whether `factor` passed.
    pub fn record(&mut self, factor: f64, passed: bool) {
        if passed {
            self.pass = Some(self.pass.map_or(factor, |p| p.max(factor)));
        } else {
            self.fail = Some(self.fail.map_or(factor, |f| f.min(factor)));
        }
    }

    /// The answer so far (final once [`FactorSearch::next`] is `None`).
    pub fn capacity(&self) -> FactorCapacity {
        match self.pass {
            None => FactorCapacity::Below(self.fail.unwrap_or(self.floor)),
            Some(p) if p >= self.cap => FactorCapacity::AtLeast(p),
            Some(p) => FactorCapacity::Exactly(p),
        }
    }

    /// The smallest factor that failed, if any.
    pub fn first_failing(&self) -> Option<f64> {
        self.fail
    }

    /// The most runs a search between `floor` and `cap` can take: × 1, then doubling to the
    /// cap or halving to the floor, whichever is longer; the bracket that leaves is at most as
    /// wide as its passing end, and halving it 7 times brings it under 1% of that end.
    pub fn max_runs(cap: f64, floor: f64) -> usize {
        let steps = |ratio: f64| ratio.log2().ceil().max(0.0) as usize;
        let bisect = steps(1.0 / FACTOR_PRECISION);
        1 + steps(cap).max(steps(1.0 / floor)) + bisect
    }
}

/// One load a search runs: a user count or a load factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// `uploads.0.users`.
    Users(u64),
    /// Every group's arrivals times this.
    Factor(f64),
}

impl Load {
    /// The load as a number: users, or the factor (for ordering).
    fn value(self) -> f64 {
        match self {
            Load::Users(n) => n as f64,
            Load::Factor(f) => f,
        }
    }
}

/// One tier's search, of either kind.
enum Searcher {
    Users(Search),
    Factor(FactorSearch),
}

impl Searcher {
    fn next(&self) -> Option<Load> {
        match self {
            Searcher::Users(s) => s.next().map(Load::Users),
            Searcher::Factor(s) => s.next().map(Load::Factor),
        }
    }

    fn record(&mut self, load: Load, passed: bool) {
        match (self, load) {
            (Searcher::Users(s), Load::Users(n)) => s.record(n, passed),
            (Searcher::Factor(s), Load::Factor(f)) => s.record(f, passed),
            _ => {}
        }
    }

    fn found(&self) -> Found {
        match self {
            Searcher::Users(s) => Found::Users(s.capacity(), s.first_failing()),
            Searcher::Factor(s) => Found::Factor(s.capacity(), s.first_failing()),
        }
    }
}

/// A tier's answer and the smallest load that failed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Found {
    Users(Capacity, Option<u64>),
    Factor(FactorCapacity, Option<f64>),
}

impl Found {
    /// The load at capacity, if one passed.
    fn load(self) -> Option<Load> {
        match self {
            Found::Users(c, _) => c.users().map(Load::Users),
            Found::Factor(c, _) => c.factor().map(Load::Factor),
        }
    }

    /// The smallest load that failed, if any.
    fn failing(self) -> Option<Load> {
        match self {
            Found::Users(_, f) => f.map(Load::Users),
            Found::Factor(_, f) => f.map(Load::Factor),
        }
    }

    fn at_cap(self) -> bool {
        matches!(
            self,
            Found::Users(Capacity::AtLeast(_), _) | Found::Factor(FactorCapacity::AtLeast(_), _)
        )
    }

    fn text(self) -> String {
        match self {
            Found::Users(c, _) => c.text(),
            Found::Factor(c, _) => c.text(),
        }
    }

    /// `exact`, `at_least` or `below`, for `--json`.
    fn bound(self) -> &'static str {
        match self {
            Found::Users(Capacity::Exactly(_), _)
            | Found::Factor(FactorCapacity::Exactly(_), _) => "exact",
            Found::Users(Capacity::AtLeast(_), _)
            | Found::Factor(FactorCapacity::AtLeast(_), _) => "at_least",
            Found::Users(Capacity::BelowOne, _) | Found::Factor(FactorCapacity::Below(_), _) => {
                "below"
            }
        }
    }
}

/// Parses `--max-factor`: a finite factor from 1 to 100,000.
pub fn parse_max_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0..=100_000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a factor from 1 to 100000, such as 64 or 2.5, got {s:?}"
        )),
    }
}

/// Three significant digits, trailing zeros dropped, thousands separated from 1,000:
/// `2.55`, `64`, `0.000977`, `1,527`.
pub fn sig3(v: f64) -> String {
    if !v.is_finite() || v <= 0.0 {
        return format!("{v}");
    }
    if v >= 999.5 {
        return thousands(v.round() as u64);
    }
    let decimals = (2 - v.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// One run of the report: which tier, which load, and its results.
struct Point {
    tier: u8,
    load: Load,
    results: Results,
}

/// How a field a load factor scales counts its load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// `poisson.per_hour`: uploads per hour.
    PerHour,
    /// `daily.uploads_per_day`: uploads per day.
    PerDay,
    /// The `users` of an `at_s` or `every_s` group (scaled and rounded).
    Users,
}

/// One field a load factor scales.
struct Scaled {
    /// Its `--set` path: `uploads.0.poisson.per_hour`.
    key: String,
    /// Its group.
    group: usize,
    unit: Unit,
    /// Its value in the scenario.
    value: f64,
    /// The group's mean upload size, in images.
    mean_images: f64,
    /// What it is in the scenario, for people.
    what: String,
}

/// What the report varies.
enum Vary {
    /// `uploads.0.users`, up to `cap`; the scenario has `own`.
    Users { own: u64, cap: u64 },
    /// Every group's arrivals, by a factor up to `cap`, with [`workload::scale`] on `spec` (the
    /// scenario with `--set` applied).
    Factor {
        cap: f64,
        spec: Box<ScenarioFile>,
        fields: Vec<Scaled>,
    },
}

/// The inputs, validated.
struct Plan {
    file: String,
    text: String,
    sets: Vec<SetArg>,
    base: Policy,
    tiers: Vec<u8>,
    model: Model,
    vary: Vary,
    limit_ms: u64,
    /// `--max-failed-pct`.
    max_failed_pct: f64,
}

impl Plan {
    /// Whether run `r` keeps the p95 of `metric` at or under the limit. A run that left images
    /// pending did not finish its uploads: their latencies are missing from the p95, so it does
    /// not pass, however low the p95 of the rest. Nor does a run that failed more than
    /// `--max-failed-pct` of its images: a failed image finishes early and pulls the p95 down.
    fn passes(&self, metric: LatencyMetric, r: &Results) -> bool {
        // A run that drew no images passes: nothing arrived, so nothing waited. (It failed
        // for want of a p95, so a light poisson day whose × 1 drew no upload searched down to
        // "< × 0.000977" on every tier.)
        if r.images.total == 0 {
            return true;
        }
        let l = metric.of(r);
        l.count > 0 && l.p95 <= self.limit_ms && r.images.pending == 0 && !self.too_many_failed(r)
    }

    /// Whether run `r` failed more than `--max-failed-pct` of its images.
    fn too_many_failed(&self, r: &Results) -> bool {
        // Integer counts against a percentage: failed / total > pct / 100, without dividing.
        r.images.failed as f64 * 100.0 > self.max_failed_pct * r.images.total as f64
    }

    /// The scenario's own load.
    fn own(&self) -> Load {
        match &self.vary {
            Vary::Users { own, .. } => Load::Users(*own),
            Vary::Factor { .. } => Load::Factor(1.0),
        }
    }

    /// The search for one tier.
    fn search(&self) -> Searcher {
        match &self.vary {
            Vary::Users { cap, .. } => Searcher::Users(Search::new(*cap)),
            Vary::Factor { cap, .. } => Searcher::Factor(FactorSearch::new(*cap, MIN_FACTOR)),
        }
    }

    /// The `--set` arguments that put `load` into the scenario.
    fn load_sets(&self, load: Load) -> Vec<String> {
        let f = match load {
            Load::Users(n) => return vec![format!("{USERS_KEY}={n}")],
            Load::Factor(f) => f,
        };
        let Vary::Factor { spec, fields, .. } = &self.vary else {
            return Vec::new();
        };
        let mut spec = spec.as_ref().clone();
        workload::scale(&mut spec, f);
        fields
            .iter()
            .map(|s| {
                let g = &spec.uploads[s.group];
                // `{:?}` writes a float as TOML reads it back, bit for bit.
                let value = match s.unit {
                    Unit::PerHour => g.poisson.map(|p| format!("{:?}", p.per_hour)),
                    Unit::PerDay => g.daily.as_ref().map(|d| format!("{:?}", d.uploads_per_day)),
                    Unit::Users => g.users.map(|u| u.to_string()),
                };
                format!("{}={}", s.key, value.unwrap_or_default())
            })
            .collect()
    }

    /// Every `--set` of the run at `tier` and `load`, as `run` takes them.
    fn run_sets(&self, tier: u8, load: Load) -> Vec<String> {
        let mut out: Vec<String> = self.sets.iter().map(|s| s.raw.clone()).collect();
        out.push(format!("account.tier={tier}"));
        out.extend(self.load_sets(load));
        out
    }

    /// The scenario at `tier` with `load`.
    fn scenario(&self, tier: u8, load: Load) -> Result<Scenario, ScenarioError> {
        let mut sets = self.sets.clone();
        sets.push(SetArg::parse(&format!("account.tier={tier}"))?);
        for set in self.load_sets(load) {
            sets.push(SetArg::parse(&set)?);
        }
        Scenario::from_text(&self.file, &self.text, &sets)
    }

    /// The scenario as one upload of [`COST_IMAGES`] images, all realtime or all batch.
    fn cost_scenario(&self, batch: bool) -> Result<Scenario, ScenarioError> {
        let threshold = if batch { 0 } else { COST_IMAGES };
        let mut sets = self.sets.clone();
        for set in [
            format!("uploads=[{{ users = 1, images = {COST_IMAGES}, at_s = 0 }}]"),
            "policy.routing=\"threshold\"".to_owned(),
            format!("policy.realtime_max_images={threshold}"),
            format!("policy.realtime_chunked_max={threshold}"),
        ] {
            sets.push(SetArg::parse(&set)?);
        }
        Scenario::from_text(&self.file, &self.text, &sets)
    }

    /// The most runs one tier's search takes.
    fn max_runs(&self) -> usize {
        match &self.vary {
            Vary::Users { cap, .. } => Search::max_runs(*cap),
            Vary::Factor { cap, .. } => FactorSearch::max_runs(*cap, MIN_FACTOR),
        }
    }

    /// The expected arrivals at `factor`, summed over the scaled fields of `unit`: uploads and
    /// images (at each group's mean upload size). `None` when no field has that unit.
    fn rate(&self, unit: Unit, factor: f64) -> Option<(f64, f64)> {
        let Vary::Factor { fields, .. } = &self.vary else {
            return None;
        };
        let mut of = fields.iter().filter(|s| s.unit == unit).peekable();
        of.peek()?;
        Some(of.fold((0.0, 0.0), |(u, i), s| {
            let v = s.value * factor;
            (u + v, i + v * s.mean_images)
        }))
    }

    /// The rate units the report shows: per hour (poisson) and per day (daily), where present.
    fn units(&self) -> Vec<(Unit, &'static str, &'static str)> {
        [
            (Unit::PerHour, "uploads/h", "≈ images/h"),
            (Unit::PerDay, "uploads/day", "≈ images/day"),
        ]
        .into_iter()
        .filter(|(u, _, _)| self.rate(*u, 1.0).is_some())
        .collect()
    }
}

/// The fields a load factor scales in `s`, as [`workload::scale`] does: each group's Poisson
/// rate, daily uploads or users.
fn scaled_fields(s: &ScenarioFile) -> Vec<Scaled> {
    let mut out = Vec::new();
    for (i, g) in s.uploads.iter().enumerate() {
        let mean_images = mean_count(&g.images);
        let images = |uploads: f64| thousands((uploads * mean_images).round() as u64);
        if let Some(p) = &g.poisson {
            out.push(Scaled {
                key: format!("uploads.{i}.poisson.per_hour"),
                group: i,
                unit: Unit::PerHour,
                value: p.per_hour,
                mean_images,
                what: format!(
                    "{} uploads an hour for {}, ≈ {} images an hour",
                    sig3(p.per_hour),
                    fmt_ms((p.for_s * 1000.0).round() as u64),
                    images(p.per_hour)
                ),
            });
        }
        if let Some(d) = &g.daily {
            out.push(Scaled {
                key: format!("uploads.{i}.daily.uploads_per_day"),
                group: i,
                unit: Unit::PerDay,
                value: d.uploads_per_day,
                mean_images,
                what: format!(
                    "{} uploads a day on the group's hourly curve, ≈ {} images a day{}",
                    sig3(d.uploads_per_day),
                    images(d.uploads_per_day),
                    match d.days {
                        1 => String::new(),
                        n => format!(", for {n} days"),
                    }
                ),
            });
        }
        if let Some(u) = g.users {
            out.push(Scaled {
                key: format!("uploads.{i}.users"),
                group: i,
                unit: Unit::Users,
                value: u as f64,
                mean_images,
                what: format!("{}, rounded", count(u, "user")),
            });
        }
    }
    out
}

/// The tiers `--tiers` names, ascending and each once; empty means the model's first two.
fn tiers(specs: &[String], model: Model) -> Result<Vec<u8>, CliError> {
    let published: Vec<u8> = (0..=9)
        .filter(|t| AccountLimits::tier(model, *t).is_ok())
        .collect();
    let known = || {
        published
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if specs.is_empty() {
        return Ok(published.iter().take(2).copied().collect());
    }
    // A stray comma (`1,,2`, `1,`) is no tier; `--tiers ,` names none.
    let specs: Vec<&str> = specs
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if specs.is_empty() {
        return Err(CliError::Invalid(format!(
            "--tiers: name at least one tier (known: {}; or all)",
            known()
        )));
    }
    if specs == ["all"] {
        return Ok(published);
    }
    let mut out = Vec::new();
    for s in specs {
        let tier = s.parse::<u8>().ok().filter(|t| published.contains(t));
        match tier {
            Some(t) => out.push(t),
            None => {
                return Err(CliError::Invalid(format!(
                    "--tiers {s}: no published limits for {model} tier {s} (known: {}; or all)",
                    known()
                )));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Checks every input and builds every scenario the report can run, before anything runs.
fn plan(a: &ReportArgs) -> Result<Plan, CliError> {
    let sets = cli::set_args(&a.flags)?;
    let tier_path = FieldPath::parse("account.tier");
    if let Some(clash) = sets.iter().find(|s| s.path == tier_path) {
        return Err(CliError::Invalid(format!(
            "--set {}: the report varies account.tier; name tiers with --tiers",
            clash.raw
        )));
    }
    let base = cli::load_policy(&a.policy)?;
    let file = cli::display_path(&a.scenario);
    let s = Scenario::load(&file, &sets)?;
    s.policy(&base)?;
    let text = std::fs::read_to_string(&a.scenario).map_err(|e| ScenarioError::Io {
        file: file.clone(),
        message: format!("cannot read: {}", e.to_string().to_lowercase()),
    })?;
    let Some(group) = s.spec.uploads.first() else {
        return Err(CliError::Invalid(format!(
            "{file}: uploads: needs at least one [[uploads]] group"
        )));
    };
    let vary = match (group.users, a.max_factor) {
        (Some(own), None) => Vary::Users {
            own,
            cap: a.max_users.unwrap_or(DEFAULT_MAX_USERS),
        },
        (Some(_), Some(f)) => {
            return Err(CliError::Invalid(format!(
                "--max-factor {f}: {file}: uploads[0] has users, so the report varies \
                 {USERS_KEY}; bound it with --max-users"
            )));
        }
        (None, _) if a.max_users.is_some() => {
            return Err(CliError::Invalid(format!(
                "--max-users {}: {file}: uploads[0] has {} arrivals, so the report scales \
                 every group's arrivals by a load factor; bound it with --max-factor",
                a.max_users.unwrap_or_default(),
                if group.daily.is_some() {
                    "daily"
                } else {
                    "poisson"
                },
            )));
        }
        (None, cap) => Vary::Factor {
            cap: cap.unwrap_or(DEFAULT_MAX_FACTOR),
            spec: Box::new(s.spec.clone()),
            fields: scaled_fields(&s.spec),
        },
    };
    let model = s.spec.account.model;
    let mut plan = Plan {
        tiers: tiers(&a.tiers, model)?,
        file,
        text,
        sets,
        base,
        model,
        vary,
        limit_ms: (a.p95_limit_s * 1000.0).round() as u64,
        max_failed_pct: a.max_failed_pct,
    };
    let runs = plan.tiers.len() * (plan.max_runs() + 1) + 2;
    if runs > MAX_RUNS {
        let (up_to, flag) = match &plan.vary {
            Vary::Users { cap, .. } => (count(*cap, "user"), "--max-users"),
            Vary::Factor { cap, .. } => (format!("× {}", sig3(*cap)), "--max-factor"),
        };
        return Err(CliError::Invalid(format!(
            "{} tiers up to {up_to} may take {runs} runs; a report makes at most {MAX_RUNS} \
             (lower {flag} or name fewer --tiers)",
            plan.tiers.len(),
        )));
    }
    // A scaled-up workload can outgrow what the simulator holds: the default cap is halved until
    // it fits; a cap given with --max-factor is checked below like every other.
    if let (Vary::Factor { .. }, None, Some(&tier)) = (&plan.vary, a.max_factor, plan.tiers.first())
    {
        let mut cap = DEFAULT_MAX_FACTOR;
        while cap > 1.0 && plan.scenario(tier, Load::Factor(cap)).is_err() {
            cap /= 2.0;
        }
        if let Vary::Factor { cap: c, .. } = &mut plan.vary {
            *c = cap;
        }
    }
    // The largest runs first: a cap whose workload is too large is refused before any run.
    let loads = match &plan.vary {
        Vary::Users { own, cap } => vec![Load::Users(*cap), Load::Users(*own)],
        Vary::Factor { cap, .. } => vec![
            Load::Factor(*cap),
            Load::Factor(1.0),
            Load::Factor(MIN_FACTOR),
        ],
    };
    for &tier in &plan.tiers {
        for &load in &loads {
            match plan.scenario(tier, load).and_then(|s| s.policy(&plan.base)) {
                Ok(_) => {}
                Err(e) => match (load, a.max_factor) {
                    (Load::Factor(f), Some(cap)) if f == cap => {
                        return Err(CliError::Invalid(format!(
                            "--max-factor {cap}: {e} (lower --max-factor)"
                        )));
                    }
                    _ => return Err(e.into()),
                },
            }
        }
    }
    for batch in [false, true] {
        plan.cost_scenario(batch)?.policy(&plan.base)?;
    }
    Ok(plan)
}

/// The results of the run at `tier` and `load`, if it ran.
fn ran(points: &[Point], tier: u8, load: Load) -> Option<&Results> {
    points
        .iter()
        .find(|p| p.tier == tier && p.load == load)
        .map(|p| &p.results)
}

/// Runs `report`.
pub fn cmd_report(
    a: &ReportArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let plan = plan(a)?;
    if let Some(path) = &a.out {
        cli::check_out(path, OutFile::of(path).is_none())?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let passes = |r: &Results| plan.passes(a.metric, r);
    let mut searches: Vec<Searcher> = plan.tiers.iter().map(|_| plan.search()).collect();
    let mut points: Vec<Point> = Vec::new();
    let mut cost: Vec<Results> = Vec::new();
    let own = plan.own();
    // Rounds: every unfinished search's next load, run side by side. The first round also runs
    // each tier at the scenario's own load and the two cost runs.
    let mut first = true;
    loop {
        for (&t, s) in plan.tiers.iter().zip(searches.iter_mut()) {
            while let Some(load) = s.next() {
                let Some(r) = ran(&points, t, load) else {
                    break;
                };
                s.record(load, passes(r));
            }
        }
        let mut wanted: Vec<(u8, Load)> = plan
            .tiers
            .iter()
            .zip(&searches)
            .filter_map(|(&t, s)| Some((t, s.next()?)))
            .collect();
        let with_cost = std::mem::take(&mut first);
        if with_cost {
            for &t in &plan.tiers {
                if !wanted.contains(&(t, own)) {
                    wanted.push((t, own));
                }
            }
        }
        if wanted.is_empty() {
            break;
        }
        let mut scenarios = Vec::new();
        for &(t, load) in &wanted {
            let label = match load {
                Load::Users(n) => format!("tier {t} × {n}"),
                Load::Factor(f) => format!("tier {t} load × {}", sig3(f)),
            };
            scenarios.push((plan.scenario(t, load)?, label));
        }
        if with_cost {
            scenarios.push((plan.cost_scenario(false)?, "1,000 realtime".to_owned()));
            scenarios.push((plan.cost_scenario(true)?, "1,000 batch".to_owned()));
        }
        let jobs = scenarios
            .iter()
            .map(|(s, label)| Ok((s, s.policy(&plan.base)?, label.clone())))
            .collect::<Result<Vec<_>, CliError>>()?;
        let mut runs = cli::run_jobs(&jobs, threads, err)?
            .into_iter()
            .map(|r| r.results);
        for (&(tier, load), results) in wanted.iter().zip(runs.by_ref()) {
            points.push(Point {
                tier,
                load,
                results,
            });
        }
        cost.extend(runs);
    }
    points.sort_by(|x, y| (x.tier.cmp(&y.tier)).then(x.load.value().total_cmp(&y.load.value())));
    let [realtime, batch] = <[Results; 2]>::try_from(cost)
        .map_err(|_| CliError::Invalid("the cost runs did not all finish".into()))?;
    let found: Vec<Found> = searches.iter().map(Searcher::found).collect();
    let s = plan.scenario(plan.tiers[0], own)?;
    let inputs = Inputs {
        a,
        plan: &plan,
        scenario: &s,
        found: &found,
        points: &points,
        realtime: &realtime,
        batch: &batch,
    };
    let doc = document(&inputs);
    if a.json {
        cli::write_line(out, &json_report(&inputs))?;
    } else {
        cli::write_line(out, &doc.markdown(None))?;
    }
    if let Some(path) = &a.out {
        let files: Vec<(PathBuf, String)> = match OutFile::of(path) {
            Some(OutFile::Html) => vec![(path.clone(), doc.html())],
            // Byte for byte what stdout gets (`write_line`).
            Some(OutFile::Markdown) => {
                vec![(path.clone(), format!("{}\n", doc.markdown(None).trim_end()))]
            }
            Some(OutFile::Json) => {
                vec![(
                    path.clone(),
                    format!("{}\n", json_report(&inputs).trim_end()),
                )]
            }
            None => vec![
                (path.join("report.html"), doc.html()),
                (path.join("report.md"), doc.markdown(Some("capacity.svg"))),
                (path.join("capacity.svg"), doc.svg().to_owned()),
            ],
        };
        cli::write_all(&files)?;
    }
    let mut all: Vec<&Results> = points.iter().map(|p| &p.results).collect();
    all.extend([&realtime, &batch]);
    Ok(cli::check_invariants(&all, err))
}

/// The one file `--out` names by its extension; any other path is a folder. (`--out
/// capacity.md` used to make a folder of that name.)
#[derive(Clone, Copy, Debug, PartialEq)]
enum OutFile {
    Html,
    Markdown,
    Json,
}

impl OutFile {
    fn of(path: &Path) -> Option<OutFile> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "html" | "htm" => Some(OutFile::Html),
            "md" => Some(OutFile::Markdown),
            "json" => Some(OutFile::Json),
            _ => None,
        }
    }
}

/// Everything the report says, before it is rendered.
struct Inputs<'a> {
    a: &'a ReportArgs,
    plan: &'a Plan,
    scenario: &'a Scenario,
    found: &'a [Found],
    points: &'a [Point],
    realtime: &'a Results,
    batch: &'a Results,
}

/// The `--json` object: the inputs, per tier the capacity and the load that first failed (each
/// with the `--set` arguments that reproduce it with `run`), the cost runs and every run.
fn json_report(i: &Inputs) -> String {
    let (a, plan) = (i.a, i.plan);
    let metric = |r: &Results| a.metric.of(r);
    let run = |r: &Results| {
        let l = metric(r);
        json!({
            "uploads": r.uploads.total,
            "images": r.images.total,
            "p95_ms": (l.count > 0).then_some(l.p95),
            "passes": plan.passes(a.metric, r),
            "rate_limited": r.upstream.rate_limited,
            "failed": r.images.failed,
            "pending": r.images.pending,
            "cost_usd": r.cost_usd,
        })
    };
    // A load as JSON fields: the users, or the factor and the rates it gives.
    let load = |tier: u8, l: Load| {
        let mut o = serde_json::Map::new();
        match l {
            Load::Users(n) => {
                o.insert("users".into(), json!(n));
            }
            Load::Factor(f) => {
                o.insert("factor".into(), json!(f));
                for (unit, uploads, images) in [
                    (Unit::PerHour, "uploads_per_hour", "images_per_hour"),
                    (Unit::PerDay, "uploads_per_day", "images_per_day"),
                ] {
                    if let Some((u, im)) = plan.rate(unit, f) {
                        o.insert(uploads.into(), json!(u));
                        o.insert(images.into(), json!(im));
                    }
                }
            }
        }
        o.insert("sets".into(), json!(plan.run_sets(tier, l)));
        Value::Object(o)
    };
    let tiers: Vec<Value> = plan
        .tiers
        .iter()
        .zip(i.found)
        .map(|(&t, f)| {
            let at = |l: Option<Load>| l.and_then(|l| ran(i.points, t, l)).map(run);
            let mut capacity = json!({ "bound": f.bound() });
            if let (Some(l), Value::Object(o)) = (f.load(), &mut capacity) {
                if let Value::Object(fields) = load(t, l) {
                    o.extend(fields);
                }
            }
            let limits = ran(i.points, t, plan.own()).map(|r| &r.account);
            json!({
                "tier": t,
                "rpm": limits.map(|l| l.rpm),
                "tpm": limits.map(|l| l.tpm),
                "capacity": capacity,
                "at_capacity": at(f.load()),
                "first_failing": f.failing().map(|l| load(t, l)),
                "at_first_failing": at(f.failing()),
                "at_scenario_load": at(Some(plan.own())),
                "runs": i.points.iter().filter(|p| p.tier == t).count(),
            })
        })
        .collect();
    let varied = match &plan.vary {
        Vary::Users { own, cap } => json!({
            "kind": "users",
            "key": USERS_KEY,
            "scenario": own,
            "max": cap,
        }),
        Vary::Factor { cap, fields, .. } => json!({
            "kind": "load_factor",
            "fields": fields.iter().map(|s| json!({
                "key": s.key,
                "scenario": s.value,
                "unit": match s.unit {
                    Unit::PerHour => "uploads per hour",
                    Unit::PerDay => "uploads per day",
                    Unit::Users => "users",
                },
                "mean_upload_images": s.mean_images,
            })).collect::<Vec<_>>(),
            "max": cap,
            "min": MIN_FACTOR,
            "precision": FACTOR_PRECISION,
        }),
    };
    let way = |r: &Results| {
        json!({
            "cost_usd": r.cost_usd,
            "tokens_billed_input": r.tokens.billed_input,
            "tokens_billed_output": r.tokens.billed_output,
            "first_tag_p50_ms": r.latency_ms.upload_first_tag.p50,
            "makespan_ms": r.makespan_ms,
            "failed": r.images.failed,
        })
    };
    let runs: Vec<Value> = i
        .points
        .iter()
        .map(|p| {
            let mut v = load(p.tier, p.load);
            if let (Value::Object(o), Value::Object(r)) = (&mut v, run(&p.results)) {
                o.insert("tier".into(), json!(p.tier));
                o.extend(r);
            }
            v
        })
        .collect();
    let spec = &i.scenario.spec;
    let v = json!({
        "schema": SCHEMA,
        "scenario": spec.name,
        "file": plan.file,
        "seed": spec.seed,
        "policy": plan.base.name,
        "metric": a.metric.key(),
        "p95_limit_ms": plan.limit_ms,
        "max_failed_pct": plan.max_failed_pct,
        "varied": varied,
        "tiers": tiers,
        "cost": {
            "images": COST_IMAGES,
            "realtime": way(i.realtime),
            "batch": way(i.batch),
        },
        "runs": runs,
        "run_count": i.points.len() + 2,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// A block of the report.
enum Block {
    Heading(u8, String),
    Para(String),
    List(Vec<String>),
    /// Header cells, whether each column is right-aligned, rows.
    Table(Vec<String>, Vec<bool>, Vec<Vec<String>>),
    /// The chart: its alt text and its SVG.
    Chart(String, String),
}

/// The report as blocks, rendered to Markdown or HTML. Text may hold `code` spans in
/// backticks; nothing else is markup.
struct Doc {
    title: String,
    blocks: Vec<Block>,
}

fn table(head: &[&str], right: &[bool], rows: Vec<Vec<String>>) -> Block {
    Block::Table(
        head.iter().map(|h| (*h).to_owned()).collect(),
        right.to_vec(),
        rows,
    )
}

/// The x axis of a chart over concurrent users.
const CHART_X: &str = "concurrent users";

fn document(i: &Inputs) -> Doc {
    let (a, plan, s) = (i.a, i.plan, i.scenario);
    let limit = fmt_ms(plan.limit_ms);
    let metric = a.metric.label();
    let mut b = Vec::new();
    let spec = &s.spec;
    let img = &spec.images;
    let own = plan.own();
    // The rate columns of a load factor report (none for users).
    let units = plan.units();
    let factor_of = |load: Option<Load>| match load {
        Some(Load::Factor(f)) => Some(f),
        _ => None,
    };
    let rate_cells = |f: Option<f64>| -> Vec<String> {
        let mut cells = Vec::new();
        for &(unit, _, _) in &units {
            match f.and_then(|f| plan.rate(unit, f)) {
                Some((uploads, images)) => {
                    cells.push(sig3(uploads));
                    cells.push(sig3(images));
                }
                None => cells.extend(["–".to_owned(), "–".to_owned()]),
            }
        }
        cells
    };
    let rate_heads: Vec<&str> = units.iter().flat_map(|(_, u, i)| [*u, *i]).collect();
    b.push(Block::Para(format!(
        "Scenario `{}` ({}, seed {}){}. Policy: {}. Model {}, {} detail {}×{} px, up to {} output \
         tokens per image.",
        spec.name,
        plan.file,
        spec.seed,
        match spec.description.trim() {
            "" => String::new(),
            d => format!(": {d}"),
        },
        plan.base.name,
        plan.model,
        img.detail.as_str(),
        img.width_px,
        img.height_px,
        thousands(u64::from(img.output_tokens)),
    )));
    match &plan.vary {
        Vary::Users { own, .. } => b.push(Block::Para(format!(
            "The question: how many users can upload at once (`{USERS_KEY}`, {} in the scenario) \
             before the p95 of {metric} passes {limit}? Everything else stays as the scenario \
             says.",
            thousands(*own)
        ))),
        Vary::Factor { fields, .. } => {
            b.push(Block::Para(format!(
                "The question: how much arrival load can the scenario take before the p95 of \
                 {metric} passes {limit}? The report scales every [[uploads]] group's arrivals \
                 by one load factor (× 1 is the scenario as written) and gives the capacity as \
                 the factor and the arrival rate it gives. Scaled: {}. Everything else stays as \
                 the scenario says; upload sizes keep their distribution.",
                fields
                    .iter()
                    .map(|f| format!("`{}` ({})", f.key, f.what))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
    }
    b.push(Block::Heading(2, "1. Capacity per tier".into()));
    let by_tier = |t: u8| i.points.iter().filter(move |p| p.tier == t);
    let at = |t: u8, l: Load| ran(i.points, t, l);
    let p95 = |r: &Results| {
        let l = a.metric.of(r);
        let cell = latency(l.count, l.p95);
        // A p95 just over the limit can read as the limit itself (120,703 ms is "2m 00s"): it
        // is then given in milliseconds, so the cell does not contradict the verdict beside it.
        if l.count > 0 && l.p95 > plan.limit_ms && cell == limit {
            format!("{} ms", thousands(l.p95))
        } else {
            cell
        }
    };
    let mut rows = Vec::new();
    for (&t, c) in plan.tiers.iter().zip(i.found) {
        let r = c.load().and_then(|l| at(t, l));
        // The limits the runs had: explicit account fields in the scenario override the tier's.
        // Every one of them, RPD and the batch queue included: either can be what binds.
        let limits = at(t, own)
            .map(|r| report::limits(&r.account))
            .unwrap_or_default();
        let cell = |f: &dyn Fn(&Results) -> String| r.map_or("–".into(), f);
        let mut row = vec![t.to_string(), limits, c.text()];
        row.extend(rate_cells(factor_of(c.load())));
        row.extend([
            cell(&|r| p95(r)),
            cell(&|r| thousands(r.upstream.rate_limited)),
            cell(&|r| thousands(r.images.failed)),
            cell(&|r| usd(r.cost_usd)),
            thousands(by_tier(t).count() as u64),
        ]);
        rows.push(row);
    }
    let capacity_head = match plan.vary {
        Vary::Users { .. } => "users (capacity)",
        Vary::Factor { .. } => "load (capacity)",
    };
    let mut head = vec!["tier", "limits", capacity_head];
    head.extend(&rate_heads);
    let p95_head = format!("{metric} p95");
    head.extend([p95_head.as_str(), "429s", "failed", "cost", "runs"]);
    let mut right = vec![true, false, true];
    right.extend(rate_heads.iter().map(|_| true));
    right.extend([true; 5]);
    b.push(table(&head, &right, rows));
    b.push(Block::Para(match &plan.vary {
        Vary::Users { cap, .. } => format!(
            "Capacity N: N users keep the p95 at or under {limit} and N + 1 do not (found by \
             doubling from 1, then bisecting). `≥ N (cap)`: even --max-users ({}) passed. `< 1`: \
             one user already fails. The other figures are of the run at capacity.",
            thousands(*cap)
        ),
        Vary::Factor { cap, .. } => format!(
            "Capacity × F: the scenario's arrivals times F keep the p95 at or under {limit}, and \
             the smallest factor the search found failing is at most {:.0}% higher (found by \
             doubling from × 1, or halving when × 1 already fails, then bisecting). `≥ × F \
             (cap)`: even --max-factor (× {}) passed. `< × F`: the smallest factor tried \
             already fails. Rates are expected arrivals while arrivals last; images at the mean \
             upload size. The other figures are of the run at capacity.",
            FACTOR_PRECISION * 100.0,
            sig3(*cap)
        ),
    }));
    // An explicit account limit overrides every tier's: the tiers do not differ in it.
    let acct = &spec.account;
    let pinned: Vec<String> = [
        ("rpm", acct.rpm),
        ("tpm", acct.tpm),
        ("rpd", acct.rpd),
        ("batch_queue_tokens", acct.batch_queue_tokens),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_some())
    .map(|(k, _)| format!("`account.{k}`"))
    .collect();
    if !pinned.is_empty() {
        b.push(Block::Para(format!(
            "The scenario sets {} itself, which overrides every tier's: the tiers differ only in \
             the limits it leaves to them (the limits column shows what the runs had).",
            pinned.join(", ")
        )));
    }
    b.push(Block::Heading(2, "2. What the next tier buys".into()));
    let mut rows = Vec::new();
    let mut prev: Option<Found> = None;
    let size = |l: Load| l.value();
    for (&t, c) in plan.tiers.iter().zip(i.found) {
        // A capacity at the cap is a lower bound: over an exact one, so is the ratio; under an
        // exact one, the ratio is an upper bound; over another lower bound, it is unknown.
        let capped = (prev.is_some_and(Found::at_cap), c.at_cap());
        let ratio = match (prev.and_then(Found::load), c.load(), capped) {
            (Some(p), Some(n), (false, _) | (_, false)) if size(p) > 0.0 => {
                let bound = match capped {
                    (false, true) => "≥ ",
                    (true, false) => "≤ ",
                    _ => "",
                };
                format!("{bound}× {:.1}", size(n) / size(p))
            }
            _ => "–".into(),
        };
        prev = Some(*c);
        let r = at(t, own);
        let cell = |f: &dyn Fn(&Results) -> String| r.map_or("–".into(), f);
        rows.push(vec![
            t.to_string(),
            c.text(),
            ratio,
            cell(&|r| p95(r)),
            cell(&|r| thousands(r.upstream.rate_limited)),
            cell(&|r| thousands(r.images.failed)),
            cell(&|r| usd(r.cost_usd)),
        ]);
    }
    let own_text = match &plan.vary {
        Vary::Users { own, .. } => count(*own, "user"),
        Vary::Factor { .. } => "× 1".to_owned(),
    };
    b.push(table(
        &[
            "tier",
            "capacity",
            "× previous tier",
            &format!("p95 at {own_text}"),
            "429s",
            "failed",
            "cost",
        ],
        &[true, true, true, true, true, true, true],
        rows,
    ));
    b.push(Block::Para(format!(
        "The last four columns are the scenario's own load ({}) on each tier.",
        match &plan.vary {
            Vary::Users { .. } => own_text.clone(),
            Vary::Factor { fields, .. } => format!(
                "× 1: {}",
                fields
                    .iter()
                    .map(|f| f.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    )));
    b.push(Block::Heading(
        2,
        format!("3. {} images each way", thousands(COST_IMAGES)),
    ));
    let (rt, bt) = (i.realtime, i.batch);
    let way = |name: &str, r: &Results| {
        let l = &r.latency_ms.upload_first_tag;
        vec![
            name.to_owned(),
            usd(r.cost_usd),
            thousands(r.tokens.billed_input),
            thousands(r.tokens.billed_output),
            latency(l.count, l.p50),
            fmt_ms(r.makespan_ms),
            format!(
                "{} / {}",
                thousands(r.images.tagged_realtime),
                thousands(r.images.tagged_batch)
            ),
            thousands(r.images.failed),
            thousands(r.upstream.rate_limited),
            thousands(r.upstream.batches_created),
        ]
    };
    b.push(table(
        &[
            "way",
            "cost",
            "input tokens",
            "output tokens",
            "first tag",
            "every image",
            "tagged rt / batch",
            "failed",
            "429s",
            "batches",
        ],
        &[false, true, true, true, true, true, true, true, true, true],
        vec![way("realtime", rt), way("Batch API", bt)],
    ));
    let saved = rt.cost_usd - bt.cost_usd;
    let pct = if rt.cost_usd > 0.0 {
        100.0 * saved / rt.cost_usd
    } else {
        0.0
    };
    let dropped = |r: &Results| r.images.failed + r.images.pending;
    if dropped(rt) == 0 && dropped(bt) == 0 {
        b.push(Block::Para(format!(
            "The Batch API {} {} ({pct:.0}% of realtime) and tags every image in {} instead of {}.",
            if saved >= 0.0 { "saves" } else { "costs" },
            usd(saved.abs()),
            fmt_ms(bt.makespan_ms),
            fmt_ms(rt.makespan_ms),
        )));
    } else {
        // A way that drops images bills and waits only for the rest: its cost and makespan are
        // not those of 1,000 images, so the two ways compare per tagged image instead.
        let per_thousand_tagged = |r: &Results| match r.images.tagged {
            0 => "–".to_owned(),
            n => usd(r.cost_usd * COST_IMAGES as f64 / n as f64),
        };
        b.push(Block::Para(format!(
            "Not like for like: of the {} images, realtime left {} and the Batch API {} untagged \
             (failed or pending), so the cost and time of a way that drops images are not those \
             of {} images. Per {} tagged images: realtime {}, Batch API {}.",
            thousands(COST_IMAGES),
            thousands(dropped(rt)),
            thousands(dropped(bt)),
            thousands(COST_IMAGES),
            thousands(COST_IMAGES),
            per_thousand_tagged(rt),
            per_thousand_tagged(bt),
        )));
    }
    let price = spec.prices.price(plan.model);
    // Tokens per image are those of the images billed: the tagged ones (an image that failed
    // bills nothing), from the realtime run unless it tagged none.
    let billed = if rt.images.tagged > 0 { rt } else { bt };
    let per_image = |v: u64| v as f64 / billed.images.tagged.max(1) as f64;
    b.push(Block::Para(format!(
        "Assumptions: one upload of {} images at t = 0 on the scenario's account ({}); {} \
         detail {}×{} px, {} input tokens per image, up to {} output tokens per image \
         ({:.1} billed on average: the modelled answers); ${:.2} input and ${:.2} output per million \
         tokens, {:.0}% off through the Batch API (the scenario's price table). Policy {} with \
         `routing = \"threshold\"` and `realtime_max_images`, `realtime_chunked_max` set to {} \
         (realtime) or 0 (batch). Cost, tokens and times are the simulator's own billing and \
         clock; \"first tag\" is the upload's first tag, \"every image\" its makespan.",
        thousands(COST_IMAGES),
        report::account(&rt.account),
        img.detail.as_str(),
        img.width_px,
        img.height_px,
        thousands(per_image(billed.tokens.billed_input).round() as u64),
        thousands(u64::from(img.output_tokens)),
        per_image(billed.tokens.billed_output),
        price.input_usd_per_mtok,
        price.output_usd_per_mtok,
        spec.prices.batch_discount() * 100.0,
        plan.base.name,
        thousands(COST_IMAGES),
    )));
    // The chart's x axis: users, or the first rate column (per hour if any group is Poisson).
    let (x_name, x_of): (&str, Box<dyn Fn(Load) -> f64>) = match units.first() {
        Some(&(unit, _, _)) if matches!(plan.vary, Vary::Factor { .. }) => (
            if unit == Unit::PerHour {
                "uploads per hour"
            } else {
                "uploads per day"
            },
            Box::new(move |l: Load| {
                plan.rate(unit, l.value())
                    .map_or(l.value(), |(uploads, _)| uploads)
            }),
        ),
        _ => (CHART_X, Box::new(|l: Load| l.value())),
    };
    b.push(Block::Heading(
        2,
        format!("p95 of {metric} against {x_name}"),
    ));
    let labels: Vec<String> = plan.tiers.iter().map(|t| format!("tier {t}")).collect();
    let series: Vec<(&str, Vec<(f64, f64)>)> = labels
        .iter()
        .zip(&plan.tiers)
        .map(|(label, &t)| {
            let pts = by_tier(t)
                .filter(|p| a.metric.of(&p.results).count > 0)
                .map(|p| (x_of(p.load), a.metric.of(&p.results).p95 as f64 / 1000.0))
                .collect();
            (label.as_str(), pts)
        })
        .collect();
    let svg = crate::plot::capacity_svg(
        &format!("{}: p95 of {metric} under {}", spec.name, plan.base.name),
        x_name,
        &format!("p95 of {metric}"),
        &series,
        plan.limit_ms as f64 / 1000.0,
    );
    b.push(Block::Chart(
        format!("p95 of {metric} against {x_name}, one line per tier"),
        svg,
    ));
    let mut rows = Vec::new();
    for p in i.points {
        let r = &p.results;
        let mut row = vec![p.tier.to_string()];
        match p.load {
            Load::Users(n) => row.push(thousands(n)),
            Load::Factor(f) => {
                // Exact figures: a row is reproduced with these values.
                row.push(format!("× {f}"));
                for &(unit, _, _) in &units {
                    row.push(
                        plan.rate(unit, f)
                            .map_or("–".into(), |(u, _)| u.to_string()),
                    );
                }
                row.push(thousands(r.uploads.total));
            }
        }
        row.extend([
            thousands(r.images.total),
            p95(r),
            match (plan.passes(a.metric, r), r.images.pending) {
                (true, _) if r.images.total == 0 => "yes (no uploads)".into(),
                (true, _) => "yes".into(),
                (false, n) if n > 0 => format!("no ({} pending)", thousands(n)),
                (false, _) if plan.too_many_failed(r) => {
                    format!("no ({} failed)", thousands(r.images.failed))
                }
                (false, _) => "no".into(),
            },
            thousands(r.upstream.rate_limited),
            thousands(r.images.failed),
            usd(r.cost_usd),
        ]);
        rows.push(row);
    }
    let within = format!("≤ {limit}");
    let mut head = vec!["tier"];
    let mut right = vec![true];
    match plan.vary {
        Vary::Users { .. } => {
            head.push("users");
            right.push(true);
        }
        Vary::Factor { .. } => {
            head.push("load");
            head.extend(units.iter().map(|(_, u, _)| *u));
            head.push("uploads");
            right.extend(std::iter::repeat_n(true, units.len() + 2));
        }
    }
    head.extend([
        "images",
        p95_head.as_str(),
        within.as_str(),
        "429s",
        "failed",
        "cost",
    ]);
    right.extend([true, true, false, true, true, true]);
    b.push(table(&head, &right, rows));
    b.push(Block::Heading(2, "How to read this".into()));
    let user_sets: String = plan
        .sets
        .iter()
        .map(|s| format!(" --set {}", s.raw))
        .collect();
    let mut read = Vec::new();
    match &plan.vary {
        Vary::Users { .. } => read.push(format!(
            "Section 1 answers \"how many users at once before p95 passes {limit}\" per tier; \
             the chart and the table above show every run the search made, the dashed line is \
             the limit."
        )),
        Vary::Factor { .. } => read.push(format!(
            "Section 1 answers \"how much arrival load before p95 passes {limit}\" per tier, as \
             a factor of the scenario's arrivals and as the rates it gives; the chart and the \
             table above show every run the search made, the dashed line is the limit."
        )),
    }
    read.push(format!(
        "Section 2 divides each tier's capacity by the one before it and shows every tier at \
         the scenario's own load{}.",
        match plan.vary {
            Vary::Users { .. } => "",
            Vary::Factor { .. } => " (× 1)",
        }
    ));
    // The scenario's price table sets the discount; half price is only OpenAI's default.
    let discount = spec.prices.batch_discount();
    read.push(format!(
        "Section 3 prices the same 1,000 images both ways: the Batch API is {} and slow; \
         realtime is paced by the account's RPM and TPM.",
        if discount == 0.5 {
            "half price".to_owned()
        } else {
            format!("{:.0}% off", discount * 100.0)
        }
    ));
    read.push(format!(
        "A run with more than {}% of its images failed does not pass: a policy that drops \
         images finishes early and flatters its p95 (--max-failed-pct). {}",
        plan.max_failed_pct,
        match plan.vary {
            Vary::Users { .. } => {
                "A p95 need not grow strictly with users, so a count above a capacity may pass \
                 again; the search reports the first boundary it finds."
            }
            Vary::Factor { .. } => {
                "A p95 need not grow strictly with the load, so a factor above a capacity may \
                 pass again; the search reports the first boundary it finds. Arrivals are \
                 random: a scaled rate draws other arrival times and upload sizes from the same \
                 seed, so neighbouring factors can differ by more than their load."
            }
        }
    ));
    read.push(match &plan.vary {
        Vary::Users { .. } => format!(
            "{} runs (a report makes at most {MAX_RUNS}); the same scenario, seed, flags and \
             build give the same report byte for byte. Reproduce any row with `tagstorm-sim run \
             {} --policy {}{user_sets} --set account.tier=T --set {USERS_KEY}=N`.",
            i.points.len() + 2,
            plan.file,
            a.policy,
        ),
        Vary::Factor { fields, .. } => {
            let one = fields.len() == 1;
            let sets: String = fields
                .iter()
                .enumerate()
                .map(|(k, f)| match one {
                    true => format!(" --set {}=V", f.key),
                    false => format!(" --set {}=V{k}", f.key),
                })
                .collect();
            let what = match (one, units.first()) {
                (true, Some((_, u, _))) => format!("V the row's {u}"),
                _ => "each V the field's value in the scenario times the row's load".to_owned(),
            };
            format!(
                "{} runs (a report makes at most {MAX_RUNS}); the same scenario, seed, flags and \
                 build give the same report byte for byte. Reproduce any row with \
                 `tagstorm-sim run {} --policy {}{user_sets} --set account.tier=T{sets}`, {what}; \
                 `report --json` lists every run with its exact sets.",
                i.points.len() + 2,
                plan.file,
                a.policy,
            )
        }
    });
    b.push(Block::List(read));
    Doc {
        title: format!("Capacity report: {}", spec.name),
        blocks: b,
    }
}

/// Escapes text for HTML, turning `code` spans into `<code>`.
fn html_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (k, part) in s.split('`').enumerate() {
        let esc = part
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;");
        if k % 2 == 1 {
            let _ = write!(out, "<code>{esc}</code>");
        } else {
            out.push_str(&esc);
        }
    }
    out
}

/// Table cells may not hold a `|` in Markdown.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;\
padding:0 1em;line-height:1.45;color:#222}table{border-collapse:collapse;margin:.5em 0 1em}\
th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f4f4f4}.r{text-align:right}\
code{background:#f4f4f4;padding:0 .2em}svg{max-width:100%;height:auto}";

impl Doc {
    fn svg(&self) -> &str {
        self.blocks
            .iter()
            .find_map(|b| match b {
                Block::Chart(_, svg) => Some(svg.as_str()),
                _ => None,
            })
            .unwrap_or("")
    }

    /// Markdown; the chart is an image link to `chart` when given, else left out.
    fn markdown(&self, chart: Option<&str>) -> String {
        let mut out = format!("# {}\n", self.title);
        for b in &self.blocks {
            out.push('\n');
            match b {
                Block::Heading(level, t) => {
                    let _ = writeln!(out, "{} {t}", "#".repeat(usize::from(*level)));
                }
                Block::Para(t) => {
                    let _ = writeln!(out, "{t}");
                }
                Block::List(items) => {
                    for t in items {
                        let _ = writeln!(out, "- {t}");
                    }
                }
                Block::Table(head, right, rows) => {
                    let line = |cells: &[String]| {
                        let cells: Vec<String> = cells.iter().map(|c| md_cell(c)).collect();
                        format!("| {} |\n", cells.join(" | "))
                    };
                    out.push_str(&line(head));
                    let rule: Vec<String> = right
                        .iter()
                        .map(|r| if *r { "---:" } else { "---" }.to_owned())
                        .collect();
                    let _ = writeln!(out, "|{}|", rule.join("|"));
                    for row in rows {
                        out.push_str(&line(row));
                    }
                }
                Block::Chart(alt, _) => match chart {
                    Some(file) => {
                        let _ = writeln!(out, "![{alt}]({file})");
                    }
                    None => {
                        let _ = writeln!(out, "(The chart is in the HTML report: --out.)");
                    }
                },
            }
        }
        out
    }

    /// One self-contained HTML page: inline style and SVG, no scripts, no external assets.
    fn html(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            html_text(&self.title),
            html_text(&self.title)
        );
        for b in &self.blocks {
            match b {
                Block::Heading(level, t) => {
                    let _ = writeln!(out, "<h{level}>{}</h{level}>", html_text(t));
                }
                Block::Para(t) => {
                    let _ = writeln!(out, "<p>{}</p>", html_text(t));
                }
                Block::List(items) => {
                    out.push_str("<ul>\n");
                    for t in items {
                        let _ = writeln!(out, "<li>{}</li>", html_text(t));
                    }
                    out.push_str("</ul>\n");
                }
                Block::Table(head, right, rows) => {
                    let class = |k: usize| {
                        if right.get(k).copied().unwrap_or(false) {
                            " class=\"r\""
                        } else {
                            ""
                        }
                    };
                    out.push_str("<table>\n<tr>");
                    for (k, h) in head.iter().enumerate() {
                        let _ = write!(out, "<th{}>{}</th>", class(k), html_text(h));
                    }
                    out.push_str("</tr>\n");
                    for row in rows {
                        out.push_str("<tr>");
                        for (k, c) in row.iter().enumerate() {
                            let _ = write!(out, "<td{}>{}</td>", class(k), html_text(c));
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</table>\n");
                }
                Block::Chart(alt, svg) => {
                    let _ = writeln!(
                        out,
                        "<figure role=\"img\" aria-label=\"{}\">\n{}\n</figure>",
                        html_text(alt),
                        svg.trim()
                    );
                }
            }
        }
        out.push_str("</body>\n</html>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_skip_stray_commas_and_refuse_none() {
        // `--tiers ,` said "no published limits for gpt-4o-mini tier  (known: …)".
        let specs = |s: &[&str]| s.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let got = tiers(&specs(&["", ""]), Model::Gpt4oMini).unwrap_err();
        assert_eq!(
            got.to_string(),
            "--tiers: name at least one tier (known: 1, 2, 3, 4, 5; or all)"
        );
        assert_eq!(
            tiers(&specs(&["2", "", "1"]), Model::Gpt4oMini).unwrap(),
            [1, 2]
        );
    }

    /// Runs a search against `passes` and returns its answer and the counts it ran, in order.
    fn check(cap: u64, passes: impl Fn(u64) -> bool) -> (Capacity, Vec<u64>) {
        let mut s = Search::new(cap);
        let mut ran = Vec::new();
        while let Some(n) = s.next() {
            assert!(!ran.contains(&n), "{n} ran twice");
            ran.push(n);
            s.record(n, passes(n));
        }
        assert!(ran.len() <= Search::max_runs(cap), "{} runs", ran.len());
        (s.capacity(), ran)
    }

    #[test]
    fn doubling_then_bisection_finds_the_boundary() {
        let (c, ran) = check(10_000, |n| n <= 13);
        assert_eq!(c, Capacity::Exactly(13));
        assert_eq!(ran, [1, 2, 4, 8, 16, 12, 14, 13]);
        assert_eq!(check(10_000, |n| n <= 1).0, Capacity::Exactly(1));
        assert_eq!(check(10_000, |n| n <= 16).0, Capacity::Exactly(16));
        assert_eq!(check(10_000, |n| n <= 9_999).0, Capacity::Exactly(9_999));
        for boundary in 1..=300 {
            assert_eq!(
                check(300, |n| n <= boundary).0,
                if boundary >= 300 {
                    Capacity::AtLeast(300)
                } else {
                    Capacity::Exactly(boundary)
                }
            );
        }
    }

    #[test]
    fn the_cap_and_one_user_bound_the_answer() {
        let (c, ran) = check(10_000, |_| true);
        assert_eq!(c, Capacity::AtLeast(10_000));
        assert_eq!(ran.last(), Some(&10_000));
        assert_eq!(check(1, |_| true), (Capacity::AtLeast(1), vec![1]));
        assert_eq!(check(10_000, |_| false), (Capacity::BelowOne, vec![1]));
        assert_eq!(Capacity::AtLeast(10_000).text(), "≥ 10,000 (cap)");
        assert_eq!(Capacity::BelowOne.text(), "< 1");
    }

    #[test]
    fn an_answer_is_a_boundary_even_when_the_latency_is_not_monotone() {
        // Passes at 1–5 and 20–40 only: the first boundary found is kept, and N + 1 fails.
        let passes = |n: u64| n <= 5 || (20..=40).contains(&n);
        let (c, _) = check(1_000, passes);
        let n = c.users().unwrap();
        assert!(passes(n) && !passes(n + 1), "{n}");
    }

    #[test]
    fn the_run_bound_holds_for_every_cap() {
        assert_eq!(Search::max_runs(1), 2);
        assert_eq!(Search::max_runs(10_000), 30);
        assert_eq!(Search::max_runs(100_000), 36);
        // Five tiers at the largest --max-users, plus the fixed loads and the cost runs.
        assert!(5 * (Search::max_runs(100_000) + 1) + 2 <= MAX_RUNS);
        for cap in [2, 3, 5, 17, 1000, 4097] {
            for boundary in [0, 1, cap / 3, cap - 1, cap] {
                let _ = check(cap, |n| n <= boundary);
            }
        }
    }

    /// Runs a factor search against `passes` and returns its answer and the factors it ran.
    fn check_factor(cap: f64, passes: impl Fn(f64) -> bool) -> (FactorCapacity, Vec<f64>) {
        let mut s = FactorSearch::new(cap, MIN_FACTOR);
        let mut ran: Vec<f64> = Vec::new();
        while let Some(f) = s.next() {
            assert!(!ran.contains(&f), "{f} ran twice");
            assert!((MIN_FACTOR..=cap).contains(&f), "{f} out of range");
            ran.push(f);
            s.record(f, passes(f));
        }
        let bound = FactorSearch::max_runs(cap, MIN_FACTOR);
        assert!(ran.len() <= bound, "{} runs, bound {bound}", ran.len());
        (s.capacity(), ran)
    }

    #[test]
    fn a_factor_search_doubles_from_one_then_bisects_to_one_percent() {
        let (c, ran) = check_factor(64.0, |f| f <= 3.3);
        assert_eq!(ran, [1.0, 2.0, 4.0, 3.0, 3.5, 3.25, 3.375, 3.3125, 3.28125]);
        assert_eq!(c, FactorCapacity::Exactly(3.28125));
        assert_eq!(c.text(), "× 3.28");
        for boundary in [0.0011, 0.013, 0.4, 0.999, 1.0, 1.5, 7.77, 33.0, 63.9] {
            let (c, ran) = check_factor(64.0, |f| f <= boundary);
            let f = c.factor().unwrap();
            // A boundary: f passes, a factor at most 1% above it was run and failed.
            assert!(f <= boundary, "{boundary}: {f}");
            let failed = ran
                .iter()
                .copied()
                .filter(|&g| g > boundary)
                .fold(f64::MAX, f64::min);
            assert!(
                failed - f <= f * FACTOR_PRECISION,
                "{boundary}: {f} and {failed}"
            );
        }
    }

    #[test]
    fn a_factor_search_halves_from_one_when_the_scenario_fails() {
        let (c, ran) = check_factor(64.0, |f| f <= 0.3);
        assert_eq!(&ran[..3], [1.0, 0.5, 0.25]);
        assert_eq!(ran[3], 0.375);
        assert!(
            matches!(c, FactorCapacity::Exactly(f) if f <= 0.3 && f > 0.297),
            "{c:?}"
        );
    }

    #[test]
    fn the_cap_and_the_floor_bound_a_factor_search() {
        let (c, ran) = check_factor(64.0, |_| true);
        assert_eq!(c, FactorCapacity::AtLeast(64.0));
        assert_eq!(ran, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        assert_eq!(c.text(), "≥ × 64 (cap)");
        let (c, ran) = check_factor(64.0, |_| false);
        assert_eq!(c, FactorCapacity::Below(MIN_FACTOR));
        assert_eq!(ran.len(), 11);
        assert_eq!(c.text(), "< × 0.000977");
        assert_eq!(check_factor(10.0, |_| true).1.last(), Some(&10.0));
        assert_eq!(check_factor(1.0, |_| true).1, [1.0]);
        assert_eq!(FactorSearch::max_runs(64.0, MIN_FACTOR), 18);
        assert_eq!(FactorSearch::max_runs(100_000.0, MIN_FACTOR), 25);
        // Five tiers at the largest --max-factor, plus the fixed loads and the cost runs.
        assert!(5 * (FactorSearch::max_runs(100_000.0, MIN_FACTOR) + 1) + 2 <= MAX_RUNS);
        for cap in [1.0, 1.5, 3.7, 64.0, 100_000.0] {
            for boundary in [0.0, MIN_FACTOR, 0.01, 0.7, 1.0, cap / 3.0, cap * 0.995, cap] {
                let _ = check_factor(cap, |f| f <= boundary);
            }
        }
    }

    #[test]
    fn factors_and_rates_show_three_significant_digits() {
        let cases = [
            (3.296875, "3.3"),
            (2.546875, "2.55"),
            (64.0, "64"),
            (42.5, "42.5"),
            (0.0009765625, "0.000977"),
            (279.84375, "280"),
            (999.4, "999"),
            (1527.3, "1,527"),
            (332_564.77, "332,565"),
            (9.996, "10"),
        ];
        for (v, want) in cases {
            assert_eq!(sig3(v), want, "{v}");
        }
    }

    /// `report` arguments for `scenarios/NAME.toml` with `--set`s and a `--max-factor`.
    fn args(name: &str, sets: &[&str], max_factor: Option<f64>) -> ReportArgs {
        ReportArgs {
            scenario: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../scenarios/{name}.toml")),
            tiers: Vec::new(),
            policy: "tagstorm".into(),
            metric: LatencyMetric::UploadComplete,
            p95_limit_s: 120.0,
            max_failed_pct: 1.0,
            max_users: None,
            max_factor,
            json: false,
            out: None,
            flags: cli::ScenarioFlags {
                seed: None,
                set: sets.iter().map(|s| (*s).to_owned()).collect(),
            },
        }
    }

    #[test]
    fn the_default_max_factor_is_halved_until_the_workload_fits() {
        let cap = |a: &ReportArgs| match plan(a).map(|p| p.vary) {
            Ok(Vary::Factor { cap, .. }) => cap,
            _ => panic!("not a load factor plan"),
        };
        assert_eq!(cap(&args("workday", &[], None)), DEFAULT_MAX_FACTOR);
        // About 8.5 million images a day: × 2 fits in 20 million, × 4 does not.
        let big = ["uploads.0.daily.uploads_per_day=60000"];
        assert_eq!(cap(&args("workday", &big, None)), 2.0);
        let e = plan(&args("workday", &big, Some(4.0))).err().unwrap();
        assert_eq!(e.exit_code(), 2);
        let e = e.to_string();
        assert!(e.starts_with("--max-factor 4: "), "{e}");
        assert!(
            e.ends_with("images expected; at most 20,000,000 are supported (lower --max-factor)"),
            "{e}"
        );
        assert_eq!(cap(&args("workday", &big, Some(2.0))), 2.0);
    }

    #[test]
    fn a_load_factor_scales_every_rate_through_workload_scale() {
        let p = plan(&args("staggered-small-uploads", &[], None)).unwrap();
        assert_eq!(p.own(), Load::Factor(1.0));
        assert_eq!(
            p.load_sets(Load::Factor(2.5)),
            ["uploads.0.poisson.per_hour=225.0"]
        );
        assert_eq!(
            p.run_sets(2, Load::Factor(0.5)),
            ["account.tier=2", "uploads.0.poisson.per_hour=45.0"]
        );
        let s = p.scenario(1, Load::Factor(2.5)).unwrap();
        assert_eq!(s.spec.uploads[0].poisson.unwrap().per_hour, 225.0);
        let (uploads, images) = p.rate(Unit::PerHour, 2.5).unwrap();
        assert_eq!(uploads, 225.0);
        assert!(images > uploads * 2.0, "{images}");
        assert_eq!(p.rate(Unit::PerDay, 2.5), None);
        let p = plan(&args("workday", &["seed=9"], None)).unwrap();
        assert_eq!(
            p.run_sets(3, Load::Factor(0.25)),
            [
                "seed=9",
                "account.tier=3",
                "uploads.0.daily.uploads_per_day=150.0"
            ]
        );
        // A scenario whose first group has users keeps the users search.
        let p = plan(&args("ten-users-fifteen-images", &[], None)).unwrap();
        assert_eq!(p.own(), Load::Users(10));
        assert_eq!(p.load_sets(Load::Users(13)), ["uploads.0.users=13"]);
    }

    #[test]
    fn html_escapes_text_and_renders_code_spans() {
        assert_eq!(
            html_text("a <b> & `x<y` \"q\""),
            "a &lt;b&gt; &amp; <code>x&lt;y</code> &quot;q&quot;"
        );
        assert_eq!(md_cell("a|b"), "a\\|b");
    }
}
