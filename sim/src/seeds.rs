//! `compare --seeds`: one scenario under several policies over many seeds, each metric's median
//! and range per policy, and a seed-by-seed count of where each policy beat the first one.
//!
//! One seed is one draw of the workload, the latencies and the faults. A routing change can move
//! one seed's p95 by half and the next seed's the other way, so a threshold is tuned on many
//! seeds. Every policy runs on the same seeds, and a seed gives every policy the same work, so
//! the policies are compared seed by seed (paired), and a sign test says whether a count of
//! "lower" is more than a coin would give.

use std::fmt::Write as _;

use std::io::Write;

use crate::cli::{self, CliError, CompareArgs, Outcome};
use crate::plot::{SeedPanel, seeds_svg};
use crate::report::{self, fmt_ms, thousands, usd};
use crate::results::Results;
use crate::scenario::{FieldPath, Scenario, SetArg};
use crate::sweep::{Vary, VaryError};

/// Fewest seeds `--seeds` takes: one seed is `--seed`.
pub const MIN_SEEDS: usize = 2;

/// The seeds of `compare --seeds`, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

impl Seeds {
    /// Parses `--seeds` for clap, which names the flag and exits 2 on an error.
    pub fn parse_arg(raw: &str) -> Result<Seeds, String> {
        parse_arg(raw).map(Seeds)
    }
}

/// Parses `--seeds`: `1..=10`, `1..=100:10` or `3,7,11`, each a whole number, at least two.
pub fn parse_arg(raw: &str) -> Result<Vec<u64>, String> {
    // `--vary`'s parser, with messages about seeds rather than field values.
    const FORMS: &str = "seeds are whole numbers from 0: 1..=10, 1..=100:10 or 3,7,11";
    let vary = Vary::parse(&format!("seed={raw}")).map_err(|e| match e {
        VaryError::TooMany(n) => format!("{n} seeds; --seeds takes at most 200"),
        VaryError::Shape => format!("no seeds given: {FORMS}"),
        VaryError::Empty => format!("a seed in the list is empty: {FORMS}"),
        VaryError::NotInteger(v) => format!("`{v}` is not a seed: {FORMS}"),
        VaryError::RangeShape => format!("a range includes its end: {FORMS}"),
        e => e.to_string(),
    })?;
    let mut seeds = Vec::with_capacity(vary.values.len());
    for v in &vary.values {
        let seed = v
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("`{v}` is not a seed: {FORMS}"))?;
        if seeds.contains(&seed) {
            return Err(format!("seed {seed} is listed twice"));
        }
        seeds.push(seed);
    }
    if seeds.len() < MIN_SEEDS {
        return Err("give at least two seeds (for one, use --seed)".into());
    }
    Ok(seeds)
}

/// Runs `compare --seeds`: every policy once per seed, on as many threads as the machine has.
pub fn cmd_compare_seeds(
    a: &CompareArgs,
    seeds: &[u64],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let sets = cli::set_args(&a.flags)?;
    if let Some(clash) = sets.iter().find(|s| s.path == FieldPath::parse("seed")) {
        return Err(CliError::Invalid(format!(
            "--set {} and --seeds both set the seed; give one",
            clash.raw
        )));
    }
    let bases = cli::load_policies(&a.policies)?;
    let file = cli::display_path(&a.scenario);
    // The scenario as given first, so its own errors read as in every other command.
    let given = Scenario::load(&file, &sets)?;
    cli::resolve_policies(&given, &bases)?;
    let mut scenarios = Vec::with_capacity(seeds.len());
    for seed in seeds {
        let mut all = sets.clone();
        all.push(SetArg::parse(&format!("seed={seed}"))?);
        scenarios.push(Scenario::load(&file, &all)?);
    }
    let mut jobs = Vec::with_capacity(bases.len() * seeds.len());
    for b in &bases {
        for (s, seed) in scenarios.iter().zip(seeds) {
            let policy = s.policy(b)?;
            let label = format!("{} seed {seed}", policy.name);
            jobs.push((s, policy, label));
        }
    }
    if let Some(dir) = &a.out {
        cli::check_out(dir, true)?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runs = cli::run_jobs(&jobs, threads, err)?;
    // Jobs went policy by policy, each over every seed.
    let grid: Vec<Vec<&Results>> = runs
        .chunks(seeds.len())
        .map(|c| c.iter().map(|r| &r.results).collect())
        .collect();
    if a.json {
        for r in &runs {
            cli::write_line(out, &cli::json_line(&r.results))?;
        }
    } else {
        cli::write_line(out, &table(&given, seeds, &grid))?;
    }
    if let Some(dir) = &a.out {
        let mut files = Vec::new();
        let folders = cli::folder_names(
            grid.iter()
                .filter_map(|r| r.first())
                .map(|r| r.policy.as_str()),
        );
        for (p, folder) in folders.iter().enumerate() {
            for (k, seed) in seeds.iter().enumerate() {
                let dir = dir.join(folder).join(format!("seed-{seed}"));
                files.extend(cli::run_files(&dir, &runs[p * seeds.len() + k])?);
            }
        }
        files.push((dir.join("summary.md"), markdown(&given, seeds, &grid)));
        files.push((dir.join("seeds.svg"), chart(&given, seeds, &grid)));
        cli::write_all(&files)?;
    }
    let mut outcome = Outcome::Ok;
    for r in &runs {
        for why in r.results.invariant_failures() {
            let _ = writeln!(
                err,
                "invariant failed: {} under {}, seed {}: {why}",
                r.results.scenario, r.results.policy, r.results.seed
            );
            outcome = Outcome::InvariantFailed;
        }
    }
    Ok(outcome)
}

/// A stand-in for one value's runs over many seeds, for `sweep --seeds`: the first run with
/// every count, latency, cost and ratio replaced by its median over `runs` (rounded to a whole
/// number where the field is one), and its failures summed over every seed. Only tables read
/// it; `--json` prints the runs themselves.
pub fn median_results(runs: &[&Results]) -> Option<Results> {
    let first = *runs.first()?;
    let mut m = first.clone();
    let med = |f: &dyn Fn(&Results) -> f64| {
        let v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
        median(&v).unwrap_or(0.0)
    };
    let whole = |f: &dyn Fn(&Results) -> u64| med(&|r| f(r) as f64).round() as u64;
    m.images.total = whole(&|r| r.images.total);
    m.images.tagged = whole(&|r| r.images.tagged);
    m.images.tagged_realtime = whole(&|r| r.images.tagged_realtime);
    m.images.tagged_batch = whole(&|r| r.images.tagged_batch);
    m.images.failed = whole(&|r| r.images.failed);
    m.images.pending = whole(&|r| r.images.pending);
    m.images.failures.clear();
    for r in runs {
        for (k, v) in &r.images.failures {
            *m.images.failures.entry(k.clone()).or_default() += v;
        }
    }
    m.uploads.total = whole(&|r| r.uploads.total);
    m.uploads.started = whole(&|r| r.uploads.started);
    m.uploads.complete = whole(&|r| r.uploads.complete);
    type Pick = fn(&Results) -> &crate::results::Summary;
    let summaries: [(Pick, &mut crate::results::Summary); 3] = [
        (
            |r| &r.latency_ms.image_tagged,
            &mut m.latency_ms.image_tagged,
        ),
        (
            |r| &r.latency_ms.upload_first_tag,
            &mut m.latency_ms.upload_first_tag,
        ),
        (
            |r| &r.latency_ms.upload_complete,
            &mut m.latency_ms.upload_complete,
        ),
    ];
    for (pick, out) in summaries {
        // A run that measured nothing (every image failed) has no percentiles to offer.
        let measured: Vec<&Results> = runs.iter().copied().filter(|r| pick(r).count > 0).collect();
        let of = |f: &dyn Fn(&crate::results::Summary) -> u64| {
            let v: Vec<f64> = measured.iter().map(|r| f(pick(r)) as f64).collect();
            median(&v).unwrap_or(0.0).round() as u64
        };
        out.count = whole(&|r| pick(r).count);
        out.min = of(&|s| s.min);
        out.mean =
            median(&measured.iter().map(|r| pick(r).mean).collect::<Vec<_>>()).unwrap_or(0.0);
        out.p50 = of(&|s| s.p50);
        out.p90 = of(&|s| s.p90);
        out.p95 = of(&|s| s.p95);
        out.p99 = of(&|s| s.p99);
        out.p999 = of(&|s| s.p999);
        out.max = of(&|s| s.max);
    }
    let u = &mut m.upstream;
    u.requests = whole(&|r| r.upstream.requests);
    u.rate_limited = whole(&|r| r.upstream.rate_limited);
    u.server_errors = whole(&|r| r.upstream.server_errors);
    u.timeouts = whole(&|r| r.upstream.timeouts);
    u.retries = whole(&|r| r.upstream.retries);
    u.fallbacks_to_batch = whole(&|r| r.upstream.fallbacks_to_batch);
    u.batches_created = whole(&|r| r.upstream.batches_created);
    u.batches_failed = whole(&|r| r.upstream.batches_failed);
    u.batches_token_limit = whole(&|r| r.upstream.batches_token_limit);
    u.batches_expired = whole(&|r| r.upstream.batches_expired);
    u.batches_overdue = whole(&|r| r.upstream.batches_overdue);
    u.batch_polls = whole(&|r| r.upstream.batch_polls);
    m.tokens.billed_input = whole(&|r| r.tokens.billed_input);
    m.tokens.billed_output = whole(&|r| r.tokens.billed_output);
    m.cost_usd = med(&|r| r.cost_usd);
    m.cost_usd_realtime = med(&|r| r.cost_usd_realtime);
    m.cost_usd_batch = med(&|r| r.cost_usd_batch);
    m.makespan_ms = whole(&|r| r.makespan_ms);
    m.bound_ms = whole(&|r| r.bound_ms);
    let bounded: Vec<f64> = runs
        .iter()
        .filter(|r| r.bound_ms > 0)
        .map(|r| r.bound_ratio)
        .collect();
    m.bound_ratio = median(&bounded).unwrap_or(0.0);
    Some(m)
}

/// How a metric's value reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ms,
    Ratio,
    Count,
    Usd,
}

/// One row: its label, how it reads, and its value in a run (`None` when the run has none, as
/// a first-tag latency when every image failed).
struct Metric {
    label: &'static str,
    kind: Kind,
    value: fn(&Results) -> Option<f64>,
}

fn some_ms(count: u64, v: u64) -> Option<f64> {
    (count > 0).then_some(v as f64)
}

/// A latency row: `latency_ms.$hist.$pct`, none when nothing was measured.
macro_rules! latency {
    ($label:literal, $hist:ident, $pct:ident) => {
        Metric {
            label: $label,
            kind: Kind::Ms,
            value: |r| some_ms(r.latency_ms.$hist.count, r.latency_ms.$hist.$pct),
        }
    };
}

/// A row of a count in the results, `$($field).+`.
macro_rules! count {
    ($label:literal, $($field:ident).+) => {
        Metric {
            label: $label,
            kind: Kind::Count,
            value: |r| Some(r.$($field).+ as f64),
        }
    };
}

const METRICS: &[Metric] = &[
    latency!("first tag, p50 (per upload)", upload_first_tag, p50),
    latency!("first tag, p95", upload_first_tag, p95),
    latency!("upload complete, p50", upload_complete, p50),
    latency!("upload complete, p95", upload_complete, p95),
    latency!("image tagged, p95 (per image)", image_tagged, p95),
    Metric {
        label: "makespan",
        kind: Kind::Ms,
        value: |r| Some(r.makespan_ms as f64),
    },
    Metric {
        label: "makespan / bound (1.00 = ideal)",
        kind: Kind::Ratio,
        value: |r| (r.bound_ms > 0).then_some(r.bound_ratio),
    },
    count!("429 responses", upstream.rate_limited),
    count!("5xx", upstream.server_errors),
    count!("timeouts", upstream.timeouts),
    count!("retries", upstream.retries),
    count!("batches created", upstream.batches_created),
    count!("tagged realtime", images.tagged_realtime),
    count!("tagged batch", images.tagged_batch),
    count!("failed", images.failed),
    count!("pending (must be 0)", images.pending),
    Metric {
        label: "cost",
        kind: Kind::Usd,
        value: |r| Some(r.cost_usd),
    },
];

fn show(kind: Kind, v: f64) -> String {
    match kind {
        Kind::Ms => fmt_ms(v.round() as u64),
        Kind::Ratio => format!("{v:.2}"),
        // An even number of seeds can put a count's median halfway between two counts.
        Kind::Count if v.fract() != 0.0 => format!("{}.5", thousands(v.floor() as u64)),
        Kind::Count => thousands(v as u64),
        Kind::Usd => usd(v),
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` for none.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Two-sided exact sign test: the chance that a fair coin, tossed `n` times, lands one way
/// `k` times or fewer, or `n - k` times or more.
fn sign_test(k: u32, n: u32) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let low = k.min(n - k);
    // C(n, i) / 2^n, summed in floating point from C(n, 0) = 1; n ≤ 200 keeps it in range.
    let mut term = 1.0f64;
    let mut tail = 0.0f64;
    for i in 0..=low {
        if i > 0 {
            term = term * f64::from(n - i + 1) / f64::from(i);
        }
        tail += term;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

/// Level below which a seed-by-seed count is marked as more than chance.
const SIGNIFICANT: f64 = 0.05;

/// The counts of seeds in which `b` was lower and higher than `a`, over the seeds where both
/// have a value.
fn paired(a: &[Option<f64>], b: &[Option<f64>]) -> (u32, u32) {
    let (mut lower, mut higher) = (0, 0);
    for (x, y) in a.iter().zip(b) {
        if let (Some(x), Some(y)) = (x, y) {
            if y < x {
                lower += 1;
            } else if y > x {
                higher += 1;
            }
        }
    }
    (lower, higher)
}

fn paired_cell(lower: u32, higher: u32) -> String {
    if lower == 0 && higher == 0 {
        return "same".into();
    }
    let mut parts = Vec::new();
    if lower > 0 {
        parts.push(format!("{lower} lower"));
    }
    if higher > 0 {
        parts.push(format!("{higher} higher"));
    }
    let mark = if sign_test(lower, lower + higher) < SIGNIFICANT {
        " *"
    } else {
        ""
    };
    format!("{}{mark}", parts.join(", "))
}

/// The aggregate over seeds: per metric, per policy, the median cell, the range cell (empty
/// when every seed gave the same value) and, past the first policy, the seed-by-seed cell.
struct Rows {
    medians: Vec<(&'static str, Vec<String>)>,
    ranges: Vec<Vec<String>>,
    paired: Vec<(&'static str, Vec<String>)>,
}

/// `runs[p][k]` is policy `p`'s run with the `k`-th seed.
fn rows(runs: &[Vec<&Results>]) -> Rows {
    let mut medians = Vec::new();
    let mut ranges = Vec::new();
    let mut paired_rows = Vec::new();
    for m in METRICS {
        let values: Vec<Vec<Option<f64>>> = runs
            .iter()
            .map(|seeds| seeds.iter().map(|r| (m.value)(r)).collect())
            .collect();
        let mut med = Vec::new();
        let mut range = Vec::new();
        for v in &values {
            let present: Vec<f64> = v.iter().flatten().copied().collect();
            med.push(median(&present).map_or("–".into(), |x| show(m.kind, x)));
            let lo = present.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo_s, hi_s) = (show(m.kind, lo), show(m.kind, hi));
            range.push(if present.is_empty() || lo_s == hi_s {
                String::new()
            } else {
                format!("{lo_s}–{hi_s}")
            });
        }
        medians.push((m.label, med));
        ranges.push(range);
        if let Some((first, rest)) = values.split_first() {
            let cells: Vec<String> = rest
                .iter()
                .map(|v| {
                    let (lower, higher) = paired(first, v);
                    paired_cell(lower, higher)
                })
                .collect();
            paired_rows.push((m.label, cells));
        }
    }
    Rows {
        medians,
        ranges,
        paired: paired_rows,
    }
}

/// `1..=10` for consecutive seeds, else the list.
pub fn seeds_text(seeds: &[u64]) -> String {
    let consecutive = seeds.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
    match (seeds.first(), seeds.last()) {
        (Some(a), Some(b)) if consecutive && seeds.len() > 2 => format!("{a}..={b}"),
        _ => seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// `lo–hi` of a count of `noun`s over the seeds, or the count when it never changed:
/// `1 upload`, `586–650 uploads`.
fn spread(values: impl Iterator<Item = u64>, noun: &str) -> String {
    let v: Vec<u64> = values.collect();
    let lo = v.iter().copied().min().unwrap_or(0);
    let hi = v.iter().copied().max().unwrap_or(0);
    if lo == hi {
        report::count(lo, noun)
    } else {
        format!("{}–{} {noun}s", thousands(lo), thousands(hi))
    }
}

fn header(s: &Scenario, seeds: &[u64], runs: &[Vec<&Results>]) -> String {
    let mut out = String::new();
    let Some(first) = runs.first().and_then(|r| r.first()) else {
        return out;
    };
    let spec = &s.spec;
    let _ = writeln!(
        out,
        "scenario  {} (seeds {}, {})",
        spec.name,
        seeds_text(seeds),
        s.file
    );
    if !spec.description.trim().is_empty() {
        let _ = writeln!(out, "          {}", spec.description.trim());
    }
    // The seed is this command's own; the other overrides are the user's.
    let sets: Vec<String> = first
        .sets
        .iter()
        .filter(|a| !a.starts_with("seed="))
        .map(|a| format!("--set {a}"))
        .collect();
    if !sets.is_empty() {
        let _ = writeln!(out, "sets      {}", sets.join(" "));
    }
    let _ = writeln!(out, "account   {}", report::account(&first.account));
    let one = &runs[0];
    let _ = writeln!(
        out,
        "workload  {} in {}{}",
        spread(one.iter().map(|r| r.images.total), "image"),
        spread(one.iter().map(|r| r.uploads.total), "upload"),
        if one.iter().all(|r| r.images.total == first.images.total) {
            ""
        } else {
            ", by seed"
        }
    );
    let policies = match runs.len() {
        1 => "1 policy".to_owned(),
        n => format!("{n} policies"),
    };
    let _ = writeln!(
        out,
        "runs      {}: {policies} × {} seeds",
        runs.len() * seeds.len(),
        seeds.len()
    );
    out
}

/// Writes a block of rows under `title`, one column per policy in `names`, right-aligned.
fn block(out: &mut String, title: &str, names: &[&str], rows: &[(&str, &[String])]) {
    let label_w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .chain([title.chars().count()])
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..names.len())
        .map(|i| {
            rows.iter()
                .map(|(_, c)| c[i].chars().count())
                .chain([names[i].chars().count()])
                .max()
                .unwrap_or(0)
                .max(10)
        })
        .collect();
    let _ = write!(out, "{title:label_w$}");
    for (name, w) in names.iter().zip(&widths) {
        let _ = write!(out, "   {name:>w$}");
    }
    out.push('\n');
    for (label, cells) in rows {
        let mut line = format!("{label:label_w$}");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(line, "   {c:>w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The two tables `compare --seeds` prints: medians with their ranges, then seed by seed
/// against the first policy, with a short guide.
pub fn table(s: &Scenario, seeds: &[u64], runs: &[Vec<&Results>]) -> String {
    let mut out = header(s, seeds, runs);
    let names: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.first().map(|r| r.policy.as_str()))
        .collect();
    let Some(&first_name) = names.first() else {
        return out;
    };
    out.push('\n');
    let rows = rows(runs);
    // A range row shows only where some policy's value moved with the seed; there, a policy
    // whose value did not says so rather than leave a gap that reads as missing.
    let ranges: Vec<Vec<String>> = rows
        .ranges
        .iter()
        .map(|range| {
            range
                .iter()
                .map(|c| {
                    if c.is_empty() {
                        "all seeds".into()
                    } else {
                        c.clone()
                    }
                })
                .collect()
        })
        .collect();
    let mut lines: Vec<(&str, &[String])> = Vec::new();
    for (((label, med), range), shown) in rows.medians.iter().zip(&rows.ranges).zip(&ranges) {
        lines.push((label, med));
        if range.iter().any(|c| !c.is_empty()) {
            lines.push(("", shown));
        }
    }
    let title = format!("median of {} seeds, range below", seeds.len());
    block(&mut out, &title, &names, &lines);
    if names.len() > 1 {
        out.push('\n');
        let changed: Vec<(&str, &[String])> = rows
            .paired
            .iter()
            .filter(|(_, cells)| cells.iter().any(|c| c != "same"))
            .map(|(l, c)| (*l, c.as_slice()))
            .collect();
        let title = format!("seeds below {first_name}");
        if changed.is_empty() {
            let _ = writeln!(
                out,
                "{title}: none; every metric is the same in every seed."
            );
        } else {
            block(&mut out, &title, &names[1..], &changed);
        }
    }
    out.push('\n');
    for seeds_runs in runs {
        let mut failures = std::collections::BTreeMap::<&str, u64>::new();
        for r in seeds_runs {
            for (k, v) in &r.images.failures {
                *failures.entry(k).or_default() += v;
            }
        }
        if let (false, Some(r)) = (failures.is_empty(), seeds_runs.first()) {
            let why: Vec<String> = failures
                .iter()
                .map(|(k, v)| format!("{} {k}", thousands(*v)))
                .collect();
            let _ = writeln!(
                out,
                "failed under {}, all seeds together: {}",
                r.policy,
                why.join(", ")
            );
        }
    }
    let guide = format!(
        "Each seed draws its own workload, latencies and faults, and gives every policy the same \
         ones. A median's range is its lowest and highest seed (\"all seeds\": the same in \
         each). \"N lower\" counts the seeds in \
         which the column's policy came out below {first_name} (lower is better, except in \
         \"tagged\"); * marks a count a fair coin would give less than 5% of the time \
         (two-sided sign test, equal seeds left out). Rows that are the same in every seed are \
         left out of the second table."
    );
    out.push_str(&wrap(&guide, 96));
    out
}

/// `text` broken into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `seeds.svg`: the latencies, the makespan and the cost, a dot per seed and a bar at the median, policy by
/// policy, for the spread the table's ranges only bound.
fn chart(s: &Scenario, seeds: &[u64], runs: &[Vec<&Results>]) -> String {
    let names: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.first())
        .map(|r| r.policy.as_str())
        .collect();
    let panels: Vec<SeedPanel> = METRICS
        .iter()
        .filter(|m| matches!(m.kind, Kind::Ms | Kind::Usd))
        .map(|m| {
            let seconds = matches!(m.kind, Kind::Ms);
            SeedPanel {
                // The only other kind here is the cost.
                label: if seconds { m.label } else { "cost (USD)" },
                seconds,
                values: runs
                    .iter()
                    .map(|seeds| {
                        seeds
                            .iter()
                            .map(|r| (m.value)(r).map(|v| if seconds { v / 1000.0 } else { v }))
                            .collect()
                    })
                    .collect(),
            }
        })
        .collect();
    let title = format!("{}: seeds {}", s.name(), seeds_text(seeds));
    seeds_svg(&title, &names, &panels)
}

/// The same tables in Markdown, for `summary.md`.
pub fn markdown(s: &Scenario, seeds: &[u64], runs: &[Vec<&Results>]) -> String {
    let mut out = String::new();
    let names: Vec<String> = runs
        .iter()
        .filter_map(|r| r.first().map(|r| r.policy.replace('|', "\\|")))
        .collect();
    let name = s.spec.name.replace("\r\n", " ").replace(['\r', '\n'], " ");
    let _ = writeln!(out, "## {name} (seeds {})\n", seeds_text(seeds));
    let rows = rows(runs);
    let _ = writeln!(out, "| metric: median (range) |{}", cols(&names));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(names.len()));
    for ((label, med), range) in rows.medians.iter().zip(&rows.ranges) {
        let cells: Vec<String> = med
            .iter()
            .zip(range)
            .map(|(m, r)| {
                if r.is_empty() {
                    m.clone()
                } else {
                    format!("{m} ({r})")
                }
            })
            .collect();
        let _ = writeln!(out, "| {label} |{}", cols(&cells));
    }
    if let Some((first, rest)) = names.split_first() {
        if !rest.is_empty() {
            let _ = writeln!(out, "\n| seeds below {first} |{}", cols(rest));
            let _ = writeln!(out, "|---|{}", "---:|".repeat(rest.len()));
            for (label, cells) in &rows.paired {
                let _ = writeln!(out, "| {label} |{}", cols(cells));
            }
            let _ = writeln!(
                out,
                "\n\\* a fair coin would give the count less than 5% of the time (two-sided sign \
                 test, equal seeds left out)."
            );
        }
    }
    out
}

fn cols(cells: &[String]) -> String {
    cells.iter().map(|c| format!(" {c} |")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_ranges_and_lists_and_refuse_the_rest() {
        assert_eq!(parse_arg("1..=4"), Ok(vec![1, 2, 3, 4]));
        assert_eq!(parse_arg("10..=30:10"), Ok(vec![10, 20, 30]));
        assert_eq!(parse_arg("3, 7,11"), Ok(vec![3, 7, 11]));
        assert!(parse_arg("5").unwrap_err().contains("at least two"));
        assert!(parse_arg("1,1").unwrap_err().contains("twice"));
        assert!(
            parse_arg("1,-2")
                .unwrap_err()
                .contains("`-2` is not a seed")
        );
        assert!(parse_arg("1,x").unwrap_err().contains("`x` is not a seed"));
        assert!(parse_arg("1..=1000").unwrap_err().contains("at most 200"));
        assert!(parse_arg("").is_err());
    }

    #[test]
    fn the_sign_test_matches_the_binomial_tails() {
        // 9 of 10: 2 × (1 + 10) / 1024.
        assert!((sign_test(9, 10) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((sign_test(1, 10) - 22.0 / 1024.0).abs() < 1e-12);
        // 5 of 10 is the middle: the whole distribution, capped at 1.
        assert_eq!(sign_test(5, 10), 1.0);
        // 5 of 5: 2 / 32 = 0.0625, not below 5%; 6 of 6 is 2 / 64.
        assert!((sign_test(5, 5) - 0.0625).abs() < 1e-12);
        assert!(sign_test(6, 6) < SIGNIFICANT);
        assert_eq!(sign_test(0, 0), 1.0);
        // Large n stays finite and symmetric.
        let p = sign_test(60, 200);
        assert!(p > 0.0 && p < 1e-6 && (p - sign_test(140, 200)).abs() < 1e-18);
    }

    #[test]
    fn medians_take_the_middle_two_of_an_even_count() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn paired_counts_skip_ties_and_missing_values() {
        let a = [Some(1.0), Some(2.0), None, Some(4.0), Some(5.0)];
        let b = [Some(0.5), Some(2.0), Some(1.0), Some(9.0), Some(1.0)];
        assert_eq!(paired(&a, &b), (2, 1));
        assert_eq!(paired_cell(2, 1), "2 lower, 1 higher");
        assert_eq!(paired_cell(0, 0), "same");
        assert_eq!(paired_cell(6, 0), "6 lower *");
        assert_eq!(paired_cell(0, 5), "5 higher");
    }

    /// Ranges cover every `u64` seed, as lists and `--seed` do, and errors speak of seeds,
    /// not of `--vary`'s field values.
    #[test]
    fn seed_ranges_reach_the_largest_seed_and_errors_speak_of_seeds() {
        assert_eq!(
            parse_arg("18446744073709551614..=18446744073709551615"),
            Ok(vec![u64::MAX - 1, u64::MAX])
        );
        for (raw, expect) in [
            ("", "no seeds given"),
            ("1,,2", "a seed in the list is empty"),
            ("a..=b", "`a` is not a seed"),
            (
                "18446744073709551615..=18446744073709551616",
                "`18446744073709551616` is not a seed",
            ),
            ("-2..=-1", "`-2` is not a seed"),
            ("1..5", "a range includes its end"),
        ] {
            let e = parse_arg(raw).unwrap_err();
            assert!(e.starts_with(expect), "{raw}: {e}");
            assert!(!e.contains("0.5"), "{raw}: {e}");
        }
    }

    #[test]
    fn seed_lists_read_as_ranges_when_consecutive() {
        assert_eq!(seeds_text(&[1, 2, 3, 4]), "1..=4");
        assert_eq!(seeds_text(&[1, 2]), "1,2");
        assert_eq!(seeds_text(&[3, 7, 11]), "3,7,11");
    }

    #[test]
    fn long_guides_wrap_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), "aa bb\ncc\n");
        assert_eq!(wrap("", 5), "");
    }
}
