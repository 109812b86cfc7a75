//! `tagstorm-sim report`: the capacity planner's report (SPEC §3, job 3). How many concurrent
//! users each account tier carries before a latency's p95 passes a limit, what the next tier
//! buys, and what 1,000 images cost through the realtime and the Batch API.
//!
//! The capacity of a tier is found by a bounded, deterministic search over runs ([`Search`]):
//! the first `[[uploads]]` group's `users` is doubled from 1 until a run's p95 passes the limit
//! (or `--max-users` is reached), then the gap between the last passing and the first failing
//! count is bisected. The answer `N` is a boundary: N users pass and N + 1 do not. A p95 need
//! not grow strictly with the load, so a larger count past the boundary may pass again; the
//! search reports the first boundary it finds. Every run is what `run --set account.tier=T --set
//! uploads.0.users=N` gives, and no run is made twice. The report is one document, rendered to
//! Markdown (stdout, `report.md`) and to a self-contained HTML page with the chart inline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

use tagstorm_core::Policy;
use tagstorm_core::account::AccountLimits;
use tagstorm_core::tokens::Model;

use crate::cli::{self, CliError, Outcome, ReportArgs};
use crate::report::{self, fmt_ms, latency, thousands, usd};
use crate::results::{Results, Summary};
use crate::scenario::{FieldPath, Scenario, ScenarioError, SetArg};

/// The most runs one report makes; `--max-users` (at most 100,000) and the five published tiers
/// keep every report under it, and it is checked before anything runs.
pub const MAX_RUNS: usize = 200;

/// The field the search varies.
pub const USERS_KEY: &str = "uploads.0.users";

/// Images in the cost comparison.
pub const COST_IMAGES: u64 = 1_000;

/// The `report --help` text after the options.
pub const REPORT_HELP: &str = "\
Examples:
  tagstorm-sim report scenarios/ten-users-fifteen-images.toml
  tagstorm-sim report scenarios/ten-users-fifteen-images.toml --tiers all --out out/capacity
  tagstorm-sim report scenarios/single-300-upload.toml --tiers 1,2,3 --p95-limit-s 600 \\
      --metric upload-first-tag --out capacity.html

What is varied: uploads.0.users, the number of users in the scenario's first [[uploads]] group
(each uploads that group's images; with at_s they all start at once). Every other field,
other groups included, stays as the scenario (and --set) says. The group must have users
(at_s or every_s arrivals, not poisson or daily).

For each tier, capacity is the largest user count whose p95 of --metric is at or under
--p95-limit-s, found by doubling from 1 user, then bisecting: N users pass and N + 1 do not.
\"≥ N (cap)\" means --max-users still passed; \"< 1\" that one user already fails. Next to it, each
tier at the scenario's own user count, and 1,000 images as one upload on the scenario's account,
once all realtime and once all through the Batch API (the policy with routing = \"threshold\"
and its thresholds set to 1,000 or 0), costed by the simulator's own billing.

At most 2 × log2(--max-users) + 2 runs per tier, plus one per tier and two: never more than
200. The same inputs give byte-identical reports (no timestamps). Without --out the report
prints as Markdown; --out FILE.html writes one self-contained page (tables and the chart
inline, no scripts), --out DIR writes DIR/report.html, DIR/report.md and DIR/capacity.svg.

Exit codes: 0 ok; 1 a run finished with an invariant failed (the report is still written);
2 bad input, a tier the model has no published limits for included (nothing runs); 3 an output
could not be written.";

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

    /// The most runs a search capped at `cap` can take: doubling reaches the cap in
    /// ⌈log2 cap⌉ + 1 runs, and the gap it leaves is bisected in at most ⌈log2 cap⌉ more.
    pub fn max_runs(cap: u64) -> usize {
        let bits = (64 - cap.max(1).saturating_sub(1).leading_zeros()) as usize;
        2 * bits + 2
    }
}

/// One run of the report: which tier, how many users, and its results.
struct Point {
    tier: u8,
    users: u64,
    results: Results,
}

/// The inputs, validated.
struct Plan {
    file: String,
    text: String,
    sets: Vec<SetArg>,
    base: Policy,
    tiers: Vec<u8>,
    model: Model,
    own_users: u64,
    limit_ms: u64,
}

impl Plan {
    /// The scenario at `tier` with `users` in the first group.
    fn scenario(&self, tier: u8, users: u64) -> Result<Scenario, ScenarioError> {
        let mut sets = self.sets.clone();
        sets.push(SetArg::parse(&format!("account.tier={tier}"))?);
        sets.push(SetArg::parse(&format!("{USERS_KEY}={users}"))?);
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
    let specs: Vec<&str> = specs.iter().map(|s| s.trim()).collect();
    if specs.is_empty() {
        return Ok(published.iter().take(2).copied().collect());
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
    let group = s.spec.uploads.first();
    let Some(own_users) = group.and_then(|g| g.users) else {
        return Err(CliError::Invalid(format!(
            "{file}: uploads[0]: the report varies {USERS_KEY}, so the first [[uploads]] group \
             must have users (at_s or every_s arrivals, not poisson or daily)"
        )));
    };
    let model = s.spec.account.model;
    let plan = Plan {
        tiers: tiers(&a.tiers, model)?,
        file,
        text,
        sets,
        base,
        model,
        own_users,
        limit_ms: (a.p95_limit_s * 1000.0).round() as u64,
    };
    let runs = plan.tiers.len() * (Search::max_runs(a.max_users) + 1) + 2;
    if runs > MAX_RUNS {
        return Err(CliError::Invalid(format!(
            "{} tiers up to {} users may take {runs} runs; a report makes at most {MAX_RUNS} \
             (lower --max-users or name fewer --tiers)",
            plan.tiers.len(),
            thousands(a.max_users)
        )));
    }
    // The largest runs first: a cap whose workload is too large is refused before any run.
    for &tier in &plan.tiers {
        for users in [a.max_users, plan.own_users] {
            plan.scenario(tier, users)?.policy(&plan.base)?;
        }
    }
    for batch in [false, true] {
        plan.cost_scenario(batch)?.policy(&plan.base)?;
    }
    Ok(plan)
}

/// Runs `report`.
pub fn cmd_report(
    a: &ReportArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let plan = plan(a)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let passes = |r: &Results| {
        let l = a.metric.of(r);
        l.count > 0 && l.p95 <= plan.limit_ms
    };
    let mut searches: Vec<Search> = plan
        .tiers
        .iter()
        .map(|_| Search::new(a.max_users))
        .collect();
    let mut done: BTreeMap<(u8, u64), Results> = BTreeMap::new();
    let mut cost: Vec<Results> = Vec::new();
    // Rounds: every unfinished search's next count, run side by side. The first round also runs
    // each tier at the scenario's own users and the two cost runs.
    let mut first = true;
    loop {
        for (&t, s) in plan.tiers.iter().zip(searches.iter_mut()) {
            while let Some(n) = s.next() {
                let Some(r) = done.get(&(t, n)) else { break };
                s.record(n, passes(r));
            }
        }
        let mut wanted: Vec<(u8, u64)> = plan
            .tiers
            .iter()
            .zip(&searches)
            .filter_map(|(&t, s)| Some((t, s.next()?)))
            .collect();
        let with_cost = std::mem::take(&mut first);
        if with_cost {
            for &t in &plan.tiers {
                if !wanted.contains(&(t, plan.own_users)) {
                    wanted.push((t, plan.own_users));
                }
            }
        }
        if wanted.is_empty() {
            break;
        }
        let mut scenarios = Vec::new();
        for &(t, n) in &wanted {
            scenarios.push((plan.scenario(t, n)?, format!("tier {t} × {n}")));
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
        for (key, r) in wanted.iter().zip(runs.by_ref()) {
            done.insert(*key, r);
        }
        cost.extend(runs);
    }
    let points: Vec<Point> = done
        .into_iter()
        .map(|((tier, users), results)| Point {
            tier,
            users,
            results,
        })
        .collect();
    let [realtime, batch] = <[Results; 2]>::try_from(cost)
        .map_err(|_| CliError::Invalid("the cost runs did not all finish".into()))?;
    let capacities: Vec<Capacity> = searches.iter().map(Search::capacity).collect();
    let s = plan.scenario(plan.tiers[0], plan.own_users)?;
    let doc = document(&Inputs {
        a,
        plan: &plan,
        scenario: &s,
        capacities: &capacities,
        points: &points,
        realtime: &realtime,
        batch: &batch,
    });
    let md = doc.markdown(Some("capacity.svg"));
    cli::write_line(out, &doc.markdown(None))?;
    if let Some(path) = &a.out {
        let html = doc.html();
        let files: Vec<(PathBuf, String)> = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("html"))
        {
            vec![(path.clone(), html)]
        } else {
            vec![
                (path.join("report.html"), html),
                (path.join("report.md"), md),
                (path.join("capacity.svg"), doc.svg().to_owned()),
            ]
        };
        cli::write_all(&files)?;
    }
    let mut all: Vec<&Results> = points.iter().map(|p| &p.results).collect();
    all.extend([&realtime, &batch]);
    Ok(cli::check_invariants(&all, err))
}

/// Everything the report says, before it is rendered.
struct Inputs<'a> {
    a: &'a ReportArgs,
    plan: &'a Plan,
    scenario: &'a Scenario,
    capacities: &'a [Capacity],
    points: &'a [Point],
    realtime: &'a Results,
    batch: &'a Results,
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

fn document(i: &Inputs) -> Doc {
    let (a, plan, s) = (i.a, i.plan, i.scenario);
    let limit = fmt_ms(plan.limit_ms);
    let metric = a.metric.label();
    let mut b = Vec::new();
    let spec = &s.spec;
    let img = &spec.images;
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
    b.push(Block::Para(format!(
        "The question: how many users can upload at once (`{USERS_KEY}`, {} in the scenario) \
         before the p95 of {metric} passes {limit}? Everything else stays as the scenario says.",
        thousands(plan.own_users)
    )));
    b.push(Block::Heading(2, "1. Capacity per tier".into()));
    let by_tier = |t: u8| i.points.iter().filter(move |p| p.tier == t);
    let at = |t: u8, n: u64| by_tier(t).find(|p| p.users == n).map(|p| &p.results);
    let p95 = |r: &Results| {
        let l = a.metric.of(r);
        latency(l.count, l.p95)
    };
    let mut rows = Vec::new();
    for (&t, c) in plan.tiers.iter().zip(i.capacities) {
        let r = c.users().and_then(|n| at(t, n));
        // The limits the runs had: explicit account fields in the scenario override the tier's.
        let limits = at(t, plan.own_users)
            .map(|r| {
                format!(
                    "{} RPM, {} TPM",
                    thousands(r.account.rpm),
                    thousands(r.account.tpm)
                )
            })
            .unwrap_or_default();
        let cell = |f: &dyn Fn(&Results) -> String| r.map_or("–".into(), f);
        rows.push(vec![
            t.to_string(),
            limits,
            c.text(),
            cell(&|r| p95(r)),
            cell(&|r| thousands(r.upstream.rate_limited)),
            cell(&|r| thousands(r.images.failed)),
            cell(&|r| usd(r.cost_usd)),
            thousands(by_tier(t).count() as u64),
        ]);
    }
    b.push(table(
        &[
            "tier",
            "limits",
            "users (capacity)",
            &format!("{metric} p95"),
            "429s",
            "failed",
            "cost",
            "runs",
        ],
        &[true, false, true, true, true, true, true, true],
        rows,
    ));
    b.push(Block::Para(format!(
        "Capacity N: N users keep the p95 at or under {limit} and N + 1 do not (found by \
         doubling from 1, then bisecting). `≥ N (cap)`: even --max-users ({}) passed. `< 1`: one \
         user already fails. The other figures are of the run at capacity.",
        thousands(a.max_users)
    )));
    b.push(Block::Heading(2, "2. What the next tier buys".into()));
    let mut rows = Vec::new();
    let mut prev: Option<Capacity> = None;
    for (&t, c) in plan.tiers.iter().zip(i.capacities) {
        let ratio = match (prev.and_then(Capacity::users), c.users()) {
            (Some(p), Some(n)) if p > 0 => {
                let bound = if matches!(c, Capacity::AtLeast(_)) {
                    "≥ "
                } else {
                    ""
                };
                format!("{bound}× {:.1}", n as f64 / p as f64)
            }
            _ => "–".into(),
        };
        prev = Some(*c);
        let r = at(t, plan.own_users);
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
    let own = thousands(plan.own_users);
    b.push(table(
        &[
            "tier",
            "capacity",
            "× previous tier",
            &format!("p95 at {own} users"),
            "429s",
            "failed",
            "cost",
        ],
        &[true, true, true, true, true, true, true],
        rows,
    ));
    b.push(Block::Para(format!(
        "The last four columns are the scenario's own load ({own} users) on each tier."
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
    b.push(Block::Para(format!(
        "The Batch API {} {} ({pct:.0}% of realtime) and tags every image in {} instead of {}.",
        if saved >= 0.0 { "saves" } else { "costs" },
        usd(saved.abs()),
        fmt_ms(bt.makespan_ms),
        fmt_ms(rt.makespan_ms),
    )));
    let price = spec.prices.price(plan.model);
    let per_image = |v: u64| v as f64 / COST_IMAGES as f64;
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
        thousands(per_image(rt.tokens.billed_input).round() as u64),
        thousands(u64::from(img.output_tokens)),
        per_image(rt.tokens.billed_output),
        price.input_usd_per_mtok,
        price.output_usd_per_mtok,
        spec.prices.batch_discount() * 100.0,
        plan.base.name,
        thousands(COST_IMAGES),
    )));
    b.push(Block::Heading(
        2,
        format!("p95 of {metric} against concurrent users"),
    ));
    let labels: Vec<String> = plan.tiers.iter().map(|t| format!("tier {t}")).collect();
    let series: Vec<(&str, Vec<(f64, f64)>)> = labels
        .iter()
        .zip(&plan.tiers)
        .map(|(label, &t)| {
            let pts = by_tier(t)
                .filter(|p| a.metric.of(&p.results).count > 0)
                .map(|p| (p.users as f64, a.metric.of(&p.results).p95 as f64 / 1000.0))
                .collect();
            (label.as_str(), pts)
        })
        .collect();
    let svg = crate::plot::capacity_svg(
        &format!("{}: p95 of {metric} under {}", spec.name, plan.base.name),
        &format!("p95 of {metric}"),
        &series,
        plan.limit_ms as f64 / 1000.0,
    );
    b.push(Block::Chart(
        format!("p95 of {metric} against concurrent users, one line per tier"),
        svg,
    ));
    let mut rows = Vec::new();
    for p in i.points {
        let r = &p.results;
        let l = a.metric.of(r);
        rows.push(vec![
            p.tier.to_string(),
            thousands(p.users),
            thousands(r.images.total),
            p95(r),
            if l.count > 0 && l.p95 <= plan.limit_ms {
                "yes".into()
            } else {
                "no".into()
            },
            thousands(r.upstream.rate_limited),
            thousands(r.images.failed),
            usd(r.cost_usd),
        ]);
    }
    b.push(table(
        &[
            "tier",
            "users",
            "images",
            &format!("{metric} p95"),
            &format!("≤ {limit}"),
            "429s",
            "failed",
            "cost",
        ],
        &[true, true, true, true, false, true, true, true],
        rows,
    ));
    b.push(Block::Heading(2, "How to read this".into()));
    b.push(Block::List(vec![
        format!(
            "Section 1 answers \"how many users at once before p95 passes {limit}\" per tier; \
             the chart and the table above show every run the search made, the dashed line is \
             the limit."
        ),
        "Section 2 divides each tier's capacity by the one before it and shows every tier at \
         the scenario's own load."
            .into(),
        "Section 3 prices the same 1,000 images both ways: the Batch API is half price and \
         slow; realtime is paced by the account's RPM and TPM."
            .into(),
        "Read latencies with \"failed\": a policy that drops images finishes early. A p95 need \
         not grow strictly with users, so a count above a capacity may pass again; the search \
         reports the first boundary it finds."
            .into(),
        format!(
            "{} runs (a report makes at most {MAX_RUNS}); the same scenario, seed, flags and \
             build give the same report byte for byte. Reproduce any row with `tagstorm-sim run \
             {} --policy {}{} --set account.tier=T --set {USERS_KEY}=N`.",
            i.points.len() + 2,
            plan.file,
            a.policy,
            plan.sets
                .iter()
                .map(|s| format!(" --set {}", s.raw))
                .collect::<String>(),
        ),
    ]));
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

    #[test]
    fn html_escapes_text_and_renders_code_spans() {
        assert_eq!(
            html_text("a <b> & `x<y` \"q\""),
            "a &lt;b&gt; &amp; <code>x&lt;y</code> &quot;q&quot;"
        );
        assert_eq!(md_cell("a|b"), "a\\|b");
    }
}
