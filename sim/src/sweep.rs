//! `tagstorm-sim sweep`: one scenario under one policy, run once per value of one field, printed
//! as one row per value, so a threshold's effect on latency, 429s and cost reads down a column.
//!
//! `--vary KEY=VALUES` names a field the way `--set` does and the values to give it: a comma
//! list (`5,10,20`, `0.5,1.5`, or any TOML values such as `"low","high"`) or an integer range
//! `START..=END:STEP`. Each value becomes one more `--set KEY=VALUE`, applied after every
//! `--set` and `--seed`, and every resulting scenario and policy is validated before anything
//! runs. The runs go on as many threads as the machine has, and come out in value order; each
//! is byte for byte what `run --set KEY=VALUE` gives.
//!
//! `--seeds` runs every value once per seed (each value's runs are the same seeds, so the
//! values face the same workloads), and each row shows the medians of its value's runs
//! ([`crate::seeds::median_results`]); `--json` then prints every run.
//!
//! `--json` prints one line per value: `{"vary":{"key":KEY,"value":VALUE},"results":{...}}`.
//! The results schema (`tagstorm.results.v1`) has no field for a swept value, so the line wraps
//! the results object, which is embedded verbatim (the same bytes `run --json` prints); `value`
//! is the value as JSON (a number for a number).

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

use crate::cli::{self, CliError, Outcome, SweepArgs};
use crate::report::{self, fmt_ms, latency, thousands, usd};
use crate::results::Results;
use crate::scenario::{FieldPath, Scenario, SetArg};

/// The most values one sweep takes.
pub const MAX_VALUES: usize = 200;

/// The `sweep --help` text after the options.
pub const SWEEP_HELP: &str = "\
Examples:
  # The SPEC's question: raise seed-current's realtime threshold (one batch from 20 images).
  tagstorm-sim sweep scenarios/single-300-upload.toml --policy seed-current \\
      --vary policy.realtime_chunked_max=19,50,100,200,300
  tagstorm-sim sweep scenarios/ten-users-fifteen-images.toml --vary account.tier=1..=3
  tagstorm-sim sweep scenarios/ten-users-fifteen-images.toml --vary uploads.0.users=5..=30:5 \\
      --set account.tier=2 --out out/users
  tagstorm-sim sweep scenarios/ten-users-fifteen-images.toml --vary seed=1..=10 --json
  # Each row the median over 10 seeds, so one lucky seed does not pick the threshold.
  tagstorm-sim sweep scenarios/workday.toml --vary policy.deadline_ms=300000,900000,1800000 \
      --set account.tier=1 --seeds 1..=10

Every value is one more --set KEY=VALUE after the others (a --set or --seed of the swept field
is refused). A comma inside a quoted string, an array or an inline table does not split the list:
--vary 'uploads.0.images=5,{ kind = \"pareto\", min = 5, alpha = 1.2, max = 50 }' is two values.
A value that makes the scenario or the policy invalid is reported, naming it, and nothing runs.
In the table, * marks the lowest figure of each column where lower is better, among the values
that drop the smallest share of their images (one that fails images finishes early and pays
less); the totals
(makespan, 429s, retries, failed, cost) only when the swept field leaves the workload as it is
(not an images.* or uploads.* field) and every value gives as many images.

--json prints one line per value, {\"vary\": {\"key\": KEY, \"value\": VALUE}, \"results\": {...}},
with the results object exactly as `run --set KEY=VALUE --json` prints it. --out DIR writes
summary.md, sweep.svg (image-tagged p95, 429s and cost against the value) and one folder of
results per value.

Exit codes: 0 ok; 1 a run finished with an invariant failed; 2 bad input (nothing runs); 3 an
output could not be written.";

/// A parsed `--vary KEY=VALUES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vary {
    /// The dotted path as given.
    pub key: String,
    /// The path, parsed as `--set` parses it.
    pub path: FieldPath,
    /// Each value's TOML text, in sweep order.
    pub values: Vec<String>,
}

/// Why a `--vary` argument is unusable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaryError {
    /// No `=`, or nothing before it.
    #[error("expected KEY=VALUES, e.g. policy.realtime_max_images=5,10,20 or 10..=100:10")]
    Shape,
    /// The key is not a field path.
    #[error("`{0}` is not a field path (e.g. policy.chunk_size or uploads.0.images)")]
    Key(String),
    /// A list with an empty item (`5,,10`, a trailing comma, nothing at all).
    #[error("a value in the list is empty")]
    Empty,
    /// `START..END` or anything else that is not `START..=END`.
    #[error("a range includes its end: write START..=END:STEP, e.g. 10..=100:10")]
    RangeShape,
    /// A range bound or step that is not an integer.
    #[error(
        "`{0}` is not an integer: a range is START..=END:STEP in integers (list other values: 0.5,1,1.5)"
    )]
    NotInteger(String),
    /// A step of 0 or less.
    #[error("the step must be at least 1, got {0}")]
    Step(i128),
    /// `START` past `END`.
    #[error("the range is empty: its start ({start}) is past its end ({end})")]
    Backwards {
        /// The start.
        start: i128,
        /// The end.
        end: i128,
    },
    /// More than [`MAX_VALUES`] values.
    #[error("{0} values; a sweep takes at most 200 (raise the step or list fewer)")]
    TooMany(u128),
}

impl Vary {
    /// Parses `KEY=VALUES`.
    pub fn parse(raw: &str) -> Result<Vary, VaryError> {
        let (key, values) = raw.split_once('=').ok_or(VaryError::Shape)?;
        let key = key.trim();
        if key.is_empty() {
            return Err(VaryError::Shape);
        }
        let path = FieldPath::parse_strict(key).ok_or_else(|| VaryError::Key(key.to_owned()))?;
        let values = values.trim();
        if values.is_empty() {
            return Err(VaryError::Shape);
        }
        let (items, range_shaped) = top_level(values);
        let values = if range_shaped {
            range(values)?
        } else {
            let list: Vec<String> = items.iter().map(|v| v.trim().to_owned()).collect();
            if list.iter().any(String::is_empty) {
                return Err(VaryError::Empty);
            }
            if list.len() > MAX_VALUES {
                return Err(VaryError::TooMany(list.len() as u128));
            }
            list
        };
        Ok(Vary {
            key: key.to_owned(),
            path,
            values,
        })
    }

    /// [`Vary::parse`] for clap, which names `--vary` and exits 2 on an error.
    pub fn parse_arg(raw: &str) -> Result<Vary, String> {
        Vary::parse(raw).map_err(|e| e.to_string())
    }

    /// The `--set` argument that gives the field `value`.
    fn set(&self, value: &str) -> String {
        format!("{}={value}", self.key)
    }
}

/// The items of a comma list, split at the commas outside any TOML string, array or inline
/// table (`{ kind = "fixed", n = 5 },[1, 2]` is two items), and whether `..` stands outside
/// them too (the text is a range, not a list).
fn top_level(text: &str) -> (Vec<&str>, bool) {
    let mut items = Vec::new();
    let (mut start, mut depth, mut dots) = (0, 0i32, false);
    let (mut quote, mut escaped, mut prev) = (None::<char>, false, ' ');
    for (i, c) in text.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&text[start..i]);
                    start = i + 1;
                }
                '.' if depth == 0 && prev == '.' => dots = true,
                _ => {}
            },
        }
        prev = c;
    }
    items.push(&text[start..]);
    (items, dots)
}

/// `START..=END` or `START..=END:STEP`, every number an integer.
fn range(text: &str) -> Result<Vec<String>, VaryError> {
    let (start, rest) = text.split_once("..").ok_or(VaryError::RangeShape)?;
    let rest = rest.strip_prefix('=').ok_or(VaryError::RangeShape)?;
    let (end, step) = rest.split_once(':').unwrap_or((rest, "1"));
    let int = |s: &str| {
        let s = s.trim();
        if s.is_empty() {
            return Err(VaryError::RangeShape);
        }
        // In 128 bits: a TOML integer is an `i64`, and a seed (`--seeds`) any `u64`.
        s.parse::<i128>()
            .ok()
            .filter(|n| (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(n))
            .ok_or_else(|| VaryError::NotInteger(s.to_owned()))
    };
    let (start, end, step) = (int(start)?, int(end)?, int(step)?);
    if step < 1 {
        return Err(VaryError::Step(step));
    }
    if start > end {
        return Err(VaryError::Backwards { start, end });
    }
    // Both ends lie within 65 bits, so neither this nor the values below can overflow, and
    // i64::MIN..=u64::MAX:1 is refused rather than counted out.
    let count = (end - start) / step + 1;
    if count > MAX_VALUES as i128 {
        return Err(VaryError::TooMany(count as u128));
    }
    Ok((0..count).map(|i| (start + i * step).to_string()).collect())
}

/// A value's TOML text as JSON: `10` → `10`, `"low"` → `"low"`; text that is not TOML stays a
/// string (it cannot get here: such a value fails validation first).
fn json_value(text: &str) -> serde_json::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_else(|| serde_json::Value::String(text.to_owned()))
}

/// Invalid values reported one per line before the command fails; the rest are counted.
const SHOW_INVALID: usize = 5;

/// Runs `sweep`.
pub fn cmd_sweep(
    a: &SweepArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let vary = &a.vary;
    let seed_path = FieldPath::parse("seed");
    if a.flags.seed.is_some() && vary.path == seed_path {
        return Err(CliError::Invalid(
            "--seed and --vary seed=… both set the seed; give one".into(),
        ));
    }
    if a.seeds.is_some() && vary.path == seed_path {
        return Err(CliError::Invalid(
            "--seeds and --vary seed=… both set the seed; give one".into(),
        ));
    }
    let sets = cli::set_args(&a.flags)?;
    if let Some(clash) = sets.iter().find(|s| s.path == vary.path) {
        return Err(CliError::Invalid(format!(
            "--set {} and --vary {} set the same field; give one",
            clash.raw, vary.key
        )));
    }
    if let (Some(_), Some(clash)) = (&a.seeds, sets.iter().find(|s| s.path == seed_path)) {
        return Err(CliError::Invalid(format!(
            "--set {} and --seeds both set the seed; give one",
            clash.raw
        )));
    }
    // Without --seeds, one run per value on the scenario's own seed (or --seed's).
    let seeds: Vec<Option<u64>> = match &a.seeds {
        Some(list) => list.0.iter().copied().map(Some).collect(),
        None => vec![None],
    };
    let base = cli::load_policy(&a.policy)?;
    let file = cli::display_path(&a.scenario);
    // The scenario as given first, so its own errors read as in every other command.
    Scenario::load(&file, &sets)?.policy(&base)?;
    let mut points = Vec::new();
    let mut invalid = Vec::new();
    'values: for v in &vary.values {
        for seed in &seeds {
            // In the order `run --set KEY=VALUE --seed N` gives, so each run is its twin.
            let mut all = sets.clone();
            all.push(SetArg::parse(&vary.set(v))?);
            if let Some(seed) = seed {
                all.push(SetArg::parse(&format!("seed={seed}"))?);
            }
            match Scenario::load(&file, &all).and_then(|s| {
                let p = s.policy(&base)?;
                Ok((s, p))
            }) {
                Ok(point) => points.push(point),
                Err(e) => {
                    invalid.push((v.as_str(), e));
                    continue 'values;
                }
            }
        }
    }
    if !invalid.is_empty() {
        for (_, e) in invalid.iter().take(SHOW_INVALID) {
            let _ = writeln!(err, "{e}");
        }
        if invalid.len() > SHOW_INVALID {
            let _ = writeln!(err, "… and {} more", invalid.len() - SHOW_INVALID);
        }
        let names: Vec<&str> = invalid.iter().map(|(v, _)| *v).collect();
        return Err(CliError::Invalid(format!(
            "--vary {}: {} of {} values invalid ({}); nothing ran",
            vary.key,
            invalid.len(),
            vary.values.len(),
            names.join(", ")
        )));
    }
    let short = match vary.path.0.last() {
        Some(crate::scenario::Seg::Key(k)) => k.clone(),
        _ => vary.key.clone(),
    };
    // Value by value, each over every seed.
    let short_ref = short.as_str();
    let seeds_ref = &seeds;
    let labels = vary.values.iter().flat_map(|v| {
        let short = short_ref;
        seeds_ref.iter().map(move |seed| match seed {
            Some(seed) => format!("{short}={v} seed {seed}"),
            None => format!("{short}={v}"),
        })
    });
    let jobs: Vec<_> = points
        .iter()
        .zip(labels)
        .map(|((s, p), label)| (s, p.clone(), label))
        .collect();
    if let Some(dir) = &a.out {
        cli::check_out(dir, true)?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runs = cli::run_jobs(&jobs, threads, err)?;
    // With --seeds, each row stands for its value's runs: their medians.
    let medians: Vec<Results> = if a.seeds.is_some() {
        runs.chunks(seeds.len())
            .filter_map(|c| {
                crate::seeds::median_results(&c.iter().map(|r| &r.results).collect::<Vec<_>>())
            })
            .collect()
    } else {
        Vec::new()
    };
    let row_results: Vec<&Results> = if a.seeds.is_some() {
        medians.iter().collect()
    } else {
        runs.iter().map(|r| &r.results).collect()
    };
    let rows: Vec<(&str, &Results)> = vary
        .values
        .iter()
        .map(String::as_str)
        .zip(row_results)
        .collect();
    let seed_list = a.seeds.as_ref().map(|s| s.0.as_slice());
    let scenario = &points[0].0;
    let policy = &points[0].1.name;
    if a.json {
        let key = serde_json::Value::String(vary.key.clone());
        // One line per run: with --seeds, each value's runs in seed order.
        let values = vary
            .values
            .iter()
            .flat_map(|v| seeds.iter().map(move |_| v));
        let all: Vec<(&String, &Results)> = values.zip(runs.iter().map(|r| &r.results)).collect();
        for (v, r) in all {
            cli::write_line(
                out,
                &format!(
                    "{{\"vary\":{{\"key\":{key},\"value\":{}}},\"results\":{}}}",
                    json_value(v),
                    cli::json_line(r)
                ),
            )?;
        }
    } else {
        cli::write_line(out, &table(scenario, policy, &vary.key, &rows, seed_list))?;
    }
    if let Some(dir) = &a.out {
        // `detail="low"` → `detail-low`: quotes would only become dashes.
        let labels: Vec<String> = vary
            .values
            .iter()
            .map(|v| format!("{short}={}", v.trim_matches('"')))
            .collect();
        let folders = cli::folder_names(labels.iter().map(String::as_str));
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for (chunk, folder) in runs.chunks(seeds.len()).zip(&folders) {
            for (r, seed) in chunk.iter().zip(&seeds) {
                let dir = match seed {
                    Some(seed) => dir.join(folder).join(format!("seed-{seed}")),
                    None => dir.join(folder),
                };
                files.extend(cli::run_files(&dir, r)?);
            }
        }
        files.push((
            dir.join("summary.md"),
            markdown(scenario, policy, &vary.key, &rows, seed_list),
        ));
        files.push((dir.join("sweep.svg"), plot(scenario, policy, vary, &rows)));
        cli::write_all(&files)?;
    }
    let mut outcome = Outcome::Ok;
    let values = vary
        .values
        .iter()
        .flat_map(|v| seeds.iter().map(move |s| (v, s)));
    for ((v, seed), r) in values.zip(runs.iter().map(|r| &r.results)) {
        let seed = seed.map_or(String::new(), |s| format!(", seed {s}"));
        for why in r.invariant_failures() {
            let _ = writeln!(
                err,
                "invariant failed: {} under {} with {}={v}{seed}: {why}",
                r.scenario, r.policy, vary.key
            );
            outcome = Outcome::InvariantFailed;
        }
    }
    Ok(outcome)
}

/// One column of the sweep table: its header (two lines), its cell, and the figure that
/// decides the best row, for columns where lower is better.
struct Column {
    top: &'static str,
    bottom: &'static str,
    cell: fn(&Results) -> String,
    lower_is_better: Option<fn(&Results) -> Option<f64>>,
    /// A total over the run's work (its makespan, counts, cost): only rows with as many images
    /// are ranked, since a sweep that changes the workload makes a smaller one look best.
    total: bool,
}

/// A latency's figure for ranking: none when the distribution is empty.
fn ranked(count: u64, v: u64) -> Option<f64> {
    (count > 0).then_some(v as f64)
}

/// A latency column: `latency_ms.$hist.$pct`, lower is better, `–` when nothing was measured.
macro_rules! latency_column {
    ($top:literal, $hist:ident, $pct:ident) => {
        Column {
            top: $top,
            bottom: stringify!($pct),
            cell: |r| latency(r.latency_ms.$hist.count, r.latency_ms.$hist.$pct),
            lower_is_better: Some(|r| ranked(r.latency_ms.$hist.count, r.latency_ms.$hist.$pct)),
            total: false,
        }
    };
}

fn columns() -> Vec<Column> {
    vec![
        latency_column!("first tag", upload_first_tag, p50),
        latency_column!("first tag", upload_first_tag, p95),
        latency_column!("tagged", image_tagged, p95),
        latency_column!("complete", upload_complete, p95),
        Column {
            top: "",
            bottom: "makespan",
            cell: |r| fmt_ms(r.makespan_ms),
            lower_is_better: Some(|r| Some(r.makespan_ms as f64)),
            total: true,
        },
        Column {
            top: "",
            bottom: "429s",
            cell: |r| thousands(r.upstream.rate_limited),
            lower_is_better: Some(|r| Some(r.upstream.rate_limited as f64)),
            total: true,
        },
        Column {
            top: "",
            bottom: "retries",
            cell: |r| thousands(r.upstream.retries),
            lower_is_better: Some(|r| Some(r.upstream.retries as f64)),
            total: true,
        },
        Column {
            top: "",
            bottom: "failed",
            cell: |r| thousands(r.images.failed),
            lower_is_better: Some(|r| Some(r.images.failed as f64)),
            total: true,
        },
        Column {
            top: "",
            bottom: "pending",
            cell: |r| thousands(r.images.pending),
            lower_is_better: None,
            total: false,
        },
        Column {
            top: "",
            bottom: "batches",
            cell: |r| thousands(r.upstream.batches_created),
            lower_is_better: None,
            total: false,
        },
        Column {
            top: "tagged",
            bottom: "rt / batch",
            cell: |r| {
                format!(
                    "{} / {}",
                    thousands(r.images.tagged_realtime),
                    thousands(r.images.tagged_batch)
                )
            },
            lower_is_better: None,
            total: false,
        },
        Column {
            top: "",
            bottom: "cost",
            cell: |r| usd(r.cost_usd),
            lower_is_better: Some(|r| Some(r.cost_usd)),
            total: true,
        },
        Column {
            top: "bound",
            bottom: "ratio",
            cell: |r| {
                if r.bound_ms == 0 {
                    "–".into()
                } else {
                    format!("{:.2}", r.bound_ratio)
                }
            },
            lower_is_better: Some(|r| (r.bound_ms > 0).then_some(r.bound_ratio)),
            total: false,
        },
    ]
}

/// The cells of every row, each with whether it is the best of its column: the one with the
/// lowest figure and every cell that reads the same (so cells that look equal are marked
/// alike), and none in a column whose cells all read the same.
fn cells(key: &str, rows: &[(&str, &Results)]) -> (Vec<Column>, Vec<Vec<(String, bool)>>) {
    let cols = columns();
    let texts: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, r)| cols.iter().map(|c| (c.cell)(r)).collect())
        .collect();
    // The images and uploads fields change what is tagged (an image's detail its tokens, too),
    // not only how many images there are.
    let workload_key = key.starts_with("images.") || key.starts_with("uploads");
    let same_work = !workload_key
        && rows
            .iter()
            .all(|(_, r)| r.images.total == rows[0].1.images.total);
    // A value that drops images finishes early and pays less: only the values that drop the
    // smallest share of their images (failed or pending; usually none) compete for a star. A
    // share, not a count, since a swept images.* or uploads.* field changes the workload.
    let share = |r: &Results| {
        let dropped = r.images.failed.saturating_add(r.images.pending);
        (u128::from(dropped), u128::from(r.images.total.max(1)))
    };
    let least = rows
        .iter()
        .map(|(_, r)| share(r))
        .min_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)))
        .unwrap_or((0, 1));
    let competes: Vec<bool> = rows
        .iter()
        .map(|(_, r)| {
            let (d, t) = share(r);
            d * least.1 == least.0 * t
        })
        .collect();
    let best: Vec<Option<&str>> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = c.lower_is_better?;
            if texts.iter().all(|row| row[i] == texts[0][i]) || (c.total && !same_work) {
                return None;
            }
            let (_, at) = rows
                .iter()
                .enumerate()
                .filter(|&(k, _)| competes[k])
                .filter_map(|(k, (_, r))| Some((f(r)?, k)))
                .min_by(|a, b| a.0.total_cmp(&b.0))?;
            Some(texts[at][i].as_str())
        })
        .collect();
    let cells = texts
        .iter()
        .zip(&competes)
        .map(|(row, &competes)| {
            row.iter()
                .zip(&best)
                .map(|(text, b)| (text.clone(), competes && *b == Some(text.as_str())))
                .collect()
        })
        .collect();
    (cols, cells)
}

/// `x` if every row gives the same `x`, else `None`.
fn same<T: PartialEq>(rows: &[(&str, &Results)], f: impl Fn(&Results) -> T) -> Option<T> {
    let first = f(rows.first()?.1);
    rows.iter().all(|(_, r)| f(r) == first).then_some(first)
}

/// What the header says about the runs: the seed, the account and the workload, each either
/// shared by every row or said to vary. With --seeds, the seed line says each row is a median,
/// and so does the workload line.
fn about(rows: &[(&str, &Results)], seeds: Option<&[u64]>) -> (String, String, String) {
    let varies = || "varies with the value".to_owned();
    let seed = match seeds {
        Some(list) => format!(
            "seeds {}, each row the median of its {} runs",
            crate::seeds::seeds_text(list),
            list.len()
        ),
        None => same(rows, |r| r.seed).map_or("seed varies".into(), |s| format!("seed {s}")),
    };
    let account = same(rows, |r| r.account.clone()).map_or_else(varies, |a| report::account(&a));
    let mut workload = same(rows, |r| (r.images.total, r.uploads.total)).map_or_else(
        varies,
        |(images, uploads)| {
            format!(
                "{} in {}",
                report::count(images, "image"),
                report::count(uploads, "upload")
            )
        },
    );
    if seeds.is_some() {
        workload.push_str(" (medians: each seed draws its own)");
    }
    (seed, account, workload)
}

fn header(
    s: &Scenario,
    policy: &str,
    key: &str,
    rows: &[(&str, &Results)],
    seeds: Option<&[u64]>,
) -> String {
    let (seed, account, workload) = about(rows, seeds);
    let mut out = String::new();
    let _ = writeln!(out, "scenario  {} ({seed}, {})", s.spec.name, s.file);
    if !s.spec.description.trim().is_empty() {
        let _ = writeln!(out, "          {}", s.spec.description.trim());
    }
    let _ = writeln!(out, "account   {account}");
    let _ = writeln!(out, "workload  {workload}");
    let _ = writeln!(
        out,
        "sweep     {key} over {} under {policy}",
        report::count(rows.len() as u64, "value")
    );
    out
}

/// The sweep table: one row per value, in the order given.
pub fn table(
    s: &Scenario,
    policy: &str,
    key: &str,
    rows: &[(&str, &Results)],
    seeds: Option<&[u64]>,
) -> String {
    let mut out = header(s, policy, key, rows, seeds);
    out.push('\n');
    let (cols, cells) = cells(key, rows);
    let key_w = rows
        .iter()
        .map(|(v, _)| v.chars().count())
        .chain([key.chars().count()])
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| row[i].0.chars().count())
                .chain([c.top.chars().count(), c.bottom.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    // Each cell is right-aligned and followed by one marker column (`*` or a space).
    let line = |first: &str, texts: &mut dyn Iterator<Item = (String, bool)>| {
        let mut l = format!("{first:key_w$}");
        for ((text, best), w) in texts.zip(&widths) {
            let _ = write!(l, " {text:>w$}{}", if best { '*' } else { ' ' });
        }
        l.trim_end().to_owned() + "\n"
    };
    if cols.iter().any(|c| !c.top.is_empty()) {
        out.push_str(&line(
            "",
            &mut cols.iter().map(|c| (c.top.to_owned(), false)),
        ));
    }
    out.push_str(&line(
        key,
        &mut cols.iter().map(|c| (c.bottom.to_owned(), false)),
    ));
    for ((v, _), row) in rows.iter().zip(&cells) {
        out.push_str(&line(v, &mut row.iter().cloned()));
    }
    out.push('\n');
    for (v, r) in rows {
        if !r.images.failures.is_empty() {
            let why: Vec<String> = r
                .images
                .failures
                .iter()
                .map(|(k, n)| format!("{} {k}", thousands(*n)))
                .collect();
            let all = if seeds.is_some() {
                " (all seeds together)"
            } else {
                ""
            };
            let _ = writeln!(out, "failed at {key}={v}{all}: {}", why.join(", "));
        }
    }
    out.push_str(GUIDE);
    out
}

/// What the table's columns mean, under it.
const GUIDE: &str = "\
* marks the lowest figure of each column where lower is better (ties for it all marked; a
column where every value gives the same figure has none), among the values that drop the
smallest share of their images (failed or pending): one that drops images finishes early and
pays less, so it takes no star from one that tags them. The totals
(makespan, 429s, retries, failed, cost) are marked only when the swept field is not an
images.* or uploads.* field and every value gives as many images. Latencies run from the
upload's start: \"first tag\" is when its user first sees a result, \"tagged\" is per image,
\"complete\" when every image of the upload is tagged or failed. rt / batch: images tagged
through the realtime and the Batch API. bound ratio: makespan / the shortest the account's
RPM/TPM allow. Pending must be 0.
";

/// The sweep table in Markdown, for `summary.md`: the best figures in bold.
pub fn markdown(
    s: &Scenario,
    policy: &str,
    key: &str,
    rows: &[(&str, &Results)],
    seeds: Option<&[u64]>,
) -> String {
    let mut out = String::new();
    let (seed, account, workload) = about(rows, seeds);
    let _ = writeln!(
        out,
        "## {} ({seed}): sweep of `{key}` under {policy}\n",
        s.spec.name
    );
    if !s.spec.description.trim().is_empty() {
        let _ = writeln!(out, "{}\n", s.spec.description.trim());
    }
    let _ = writeln!(out, "Account: {account}. Workload: {workload}.\n");
    let (cols, cells) = cells(key, rows);
    let _ = write!(out, "| `{key}` |");
    for c in &cols {
        let _ = write!(out, " {} |", format!("{} {}", c.top, c.bottom).trim());
    }
    out.push_str("\n|---:|");
    for _ in &cols {
        out.push_str("---:|");
    }
    out.push('\n');
    for ((v, _), row) in rows.iter().zip(&cells) {
        // A `|` in a value (a string) would split its cell.
        let _ = write!(out, "| {} |", v.replace('|', "\\|"));
        for (text, best) in row {
            if *best {
                let _ = write!(out, " **{text}** |");
            } else {
                let _ = write!(out, " {text} |");
            }
        }
        out.push('\n');
    }
    out.push('\n');
    for (v, r) in rows {
        if !r.images.failures.is_empty() {
            let _ = writeln!(
                out,
                "Failed at `{key}={v}`: {}.  ",
                crate::sim::failures_line(&r.images.failures)
            );
        }
    }
    out.push_str(
        "Bold: the lowest figure of its column where lower is better, among the values that \
         drop the smallest share of their images.\n",
    );
    out
}

/// `sweep.svg`: image-tagged p95, 429s and cost against the swept value.
fn plot(s: &Scenario, policy: &str, vary: &Vary, rows: &[(&str, &Results)]) -> String {
    let p95 = rows
        .iter()
        .map(|(_, r)| {
            let l = &r.latency_ms.image_tagged;
            (l.count > 0).then_some(l.p95 as f64 / 1000.0)
        })
        .collect();
    let rate_limited = rows
        .iter()
        .map(|(_, r)| Some(r.upstream.rate_limited as f64))
        .collect();
    let cost = rows.iter().map(|(_, r)| Some(r.cost_usd)).collect();
    crate::plot::sweep_svg(
        &format!("{} under {policy}: sweep of {}", s.spec.name, vary.key),
        &vary.key,
        &vary.values,
        &[
            ("image tagged p95 (s)", p95),
            ("429 responses", rate_limited),
            ("cost (USD)", cost),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(raw: &str) -> Result<Vec<String>, String> {
        Vary::parse(raw)
            .map(|v| v.values)
            .map_err(|e| e.to_string())
    }

    fn ok(raw: &str, want: &[&str]) {
        assert_eq!(
            values(raw),
            Ok(want.iter().map(|s| s.to_string()).collect()),
            "{raw}"
        );
    }

    fn bad(raw: &str, want: &str) {
        assert_eq!(values(raw), Err(want.to_owned()), "{raw}");
    }

    #[test]
    fn lists_and_ranges_parse_in_order() {
        ok(
            "policy.realtime_max_images=5,10,20,50",
            &["5", "10", "20", "50"],
        );
        ok("k=10..=50:10", &["10", "20", "30", "40", "50"]);
        ok("k=10..=45:10", &["10", "20", "30", "40"]);
        ok("k=1..=3", &["1", "2", "3"]);
        ok("k=-2..=2:2", &["-2", "0", "2"]);
        ok("k=7..=7:5", &["7"]);
        ok("k = 0.5, 1.5 ,2", &["0.5", "1.5", "2"]);
        ok("images.detail=\"low\",\"high\"", &["\"low\"", "\"high\""]);
        ok(
            "k=1..=200",
            &(1..=200)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let v = Vary::parse("uploads[0].users=1,2").unwrap();
        assert_eq!(v.key, "uploads[0].users");
        assert_eq!(v.path, FieldPath::parse("uploads.0.users"));
    }

    #[test]
    fn commas_inside_strings_arrays_and_tables_do_not_split_the_list() {
        ok(
            "uploads.0.images={ kind = \"pareto\", min = 5, alpha = 1.2, max = 50 }",
            &["{ kind = \"pareto\", min = 5, alpha = 1.2, max = 50 }"],
        );
        ok(
            "uploads.0.images=5, { kind = \"lognormal\", median = 8, p99 = 60 },10",
            &["5", "{ kind = \"lognormal\", median = 8, p99 = 60 }", "10"],
        );
        ok("k=[1, 2],[3]", &["[1, 2]", "[3]"]);
        ok(
            "name=\"a,b\",'c,d',\"e\\\",f\"",
            &["\"a,b\"", "'c,d'", "\"e\\\",f\""],
        );
        // `..` in a string is no range.
        ok("name=\"a..b\",\"c\"", &["\"a..b\"", "\"c\""]);
    }

    #[test]
    fn bad_ranges_and_lists_say_what_is_wrong() {
        bad("k=10..=100:0", "the step must be at least 1, got 0");
        bad("k=10..=100:-5", "the step must be at least 1, got -5");
        bad(
            "k=50..=10:10",
            "the range is empty: its start (50) is past its end (10)",
        );
        bad(
            "k=10..100:10",
            "a range includes its end: write START..=END:STEP, e.g. 10..=100:10",
        );
        let not_int = "is not an integer: a range is START..=END:STEP in integers (list other values: 0.5,1,1.5)";
        bad("k=a..=10", &format!("`a` {not_int}"));
        bad("k=0.5..=2:0.5", &format!("`0.5` {not_int}"));
        bad("k=1..=10:x", &format!("`x` {not_int}"));
        bad(
            "k=1..=",
            "a range includes its end: write START..=END:STEP, e.g. 10..=100:10",
        );
        bad(
            "k=1..=201",
            "201 values; a sweep takes at most 200 (raise the step or list fewer)",
        );
        bad(
            &format!("k={}..={}", i64::MIN, i64::MAX),
            "18446744073709551616 values; a sweep takes at most 200 (raise the step or list fewer)",
        );
        bad("k=5,,10", "a value in the list is empty");
        bad("k=5,", "a value in the list is empty");
        bad(
            "k=",
            "expected KEY=VALUES, e.g. policy.realtime_max_images=5,10,20 or 10..=100:10",
        );
        let many = (0..201)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        bad(
            &format!("k={many}"),
            "201 values; a sweep takes at most 200 (raise the step or list fewer)",
        );
        bad(
            "5,10",
            "expected KEY=VALUES, e.g. policy.realtime_max_images=5,10,20 or 10..=100:10",
        );
        bad(
            "=5,10",
            "expected KEY=VALUES, e.g. policy.realtime_max_images=5,10,20 or 10..=100:10",
        );
        bad(
            "policy..x=5",
            "`policy..x` is not a field path (e.g. policy.chunk_size or uploads.0.images)",
        );
    }

    /// A value that fails images is faster and cheaper on paper: it must not take the star from
    /// the values that tag every image.
    #[test]
    fn a_value_that_drops_images_takes_no_star() {
        let text = "name = \"t\"\nseed = 1\n[account]\nmodel = \"gpt-4o-mini\"\ntier = 1\n\
                    [images]\nwidth_px = 512\nheight_px = 512\ndetail = \"low\"\n\
                    output_tokens = 60\n[[uploads]]\nusers = 2\nimages = 5\nat_s = 0\n";
        let s = Scenario::from_text("t.toml", text, &[]).unwrap();
        let policy = s.policy(&tagstorm_core::Policy::tagstorm()).unwrap();
        let whole = crate::sim::run(&s, &policy).unwrap().results;
        let mut drops = whole.clone();
        drops.images.failed = 2;
        drops.images.tagged -= 2;
        drops.latency_ms.upload_complete.p95 /= 2;
        drops.makespan_ms /= 2;
        drops.cost_usd /= 2.0;
        let rows = [("10", &drops), ("20", &whole)];
        let (cols, marked) = cells("policy.realtime_max_images", &rows);
        let star = |row: usize, name: &str| {
            let i = cols
                .iter()
                .position(|c| format!("{} {}", c.top, c.bottom).trim() == name)
                .unwrap_or_else(|| panic!("no column {name}"));
            marked[row][i].1
        };
        for name in ["complete p95", "makespan", "cost", "failed"] {
            assert!(!star(0, name), "{name}: the dropping value is starred");
            assert!(star(1, name), "{name}: the whole value is not starred");
        }
        // A larger workload dropping the same share competes: its p95 star stands.
        let mut double = drops.clone();
        double.images.total *= 2;
        double.images.failed *= 2;
        let mut half_as_bad = whole.clone();
        half_as_bad.images.failed = 2;
        half_as_bad.latency_ms.upload_complete.p95 *= 2;
        let rows = [("10", &double), ("20", &half_as_bad)];
        let (_, shares) = cells("uploads.0.images", &rows);
        let p95 = cols
            .iter()
            .position(|c| format!("{} {}", c.top, c.bottom).trim() == "complete p95")
            .unwrap();
        assert!(shares[0][p95].1 && !shares[1][p95].1);
        // When every value drops as many, the fastest is starred again.
        let mut whole_drops = whole.clone();
        whole_drops.images.failed = 2;
        let rows = [("10", &drops), ("20", &whole_drops)];
        let (_, cells_same) = cells("policy.realtime_max_images", &rows);
        assert_ne!(cells_same[0], marked[0]);
    }

    #[test]
    fn values_become_json_as_toml_reads_them() {
        assert_eq!(json_value("10").to_string(), "10");
        assert_eq!(json_value("-3").to_string(), "-3");
        assert_eq!(json_value("0.5").to_string(), "0.5");
        assert_eq!(json_value("\"low\"").to_string(), "\"low\"");
        assert_eq!(json_value("true").to_string(), "true");
        assert_eq!(json_value("not toml").to_string(), "\"not toml\"");
    }
}
