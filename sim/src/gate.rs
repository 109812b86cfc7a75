//! `tagstorm-sim gate`: the CI performance gate (SPEC §3, job 2). It runs scenarios under the
//! policies CI protects, compares a fixed set of metrics with a committed baseline
//! (`tagstorm.baseline.v1`) and fails (exit 4) when one got worse by more than the tolerance.
//!
//! `--update` writes the baseline from a run instead: pretty-printed JSON with a fixed key order,
//! so a change to it reads well in a pull request. A malformed baseline is bad input, refused
//! before anything runs with one error naming the file, the line and the field.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::cli::{
    CliError, GateArgs, Outcome, check_invariants, display_path, load_policies, run_policies,
    set_args, write_all, write_line,
};
use crate::report::thousands;
use crate::results::Results;
use crate::scenario::Scenario;

/// The schema tag of a baseline file.
pub const SCHEMA: &str = "tagstorm.baseline.v1";

/// Which direction of a metric is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Less is better (latencies, 429s, cost).
    Lower,
    /// More is better (images tagged).
    Higher,
}

/// One metric the gate compares.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Its dotted path in the results object, and its key in the baseline.
    pub key: &'static str,
    /// Which direction is good.
    pub better: Better,
    /// Whether it is a whole number (written as an integer, read as `u64`).
    pub integer: bool,
    /// Its value in a run's results.
    pub get: fn(&Results) -> f64,
}

/// The gated metrics, in the order a baseline lists them.
pub const METRICS: &[Metric] = &[
    Metric::count("images.tagged", Better::Higher, |r| r.images.tagged as f64),
    Metric::count("images.failed", Better::Lower, |r| r.images.failed as f64),
    Metric::count("images.pending", Better::Lower, |r| r.images.pending as f64),
    Metric::count("upstream.rate_limited", Better::Lower, |r| {
        r.upstream.rate_limited as f64
    }),
    Metric::count("upstream.server_errors", Better::Lower, |r| {
        r.upstream.server_errors as f64
    }),
    Metric::count("upstream.retries", Better::Lower, |r| {
        r.upstream.retries as f64
    }),
    Metric::count("latency_ms.image_tagged.p95", Better::Lower, |r| {
        r.latency_ms.image_tagged.p95 as f64
    }),
    Metric::count("latency_ms.image_tagged.p99", Better::Lower, |r| {
        r.latency_ms.image_tagged.p99 as f64
    }),
    Metric::count("latency_ms.upload_first_tag.p50", Better::Lower, |r| {
        r.latency_ms.upload_first_tag.p50 as f64
    }),
    Metric::count("latency_ms.upload_first_tag.p95", Better::Lower, |r| {
        r.latency_ms.upload_first_tag.p95 as f64
    }),
    Metric::count("latency_ms.upload_complete.p95", Better::Lower, |r| {
        r.latency_ms.upload_complete.p95 as f64
    }),
    Metric::count("makespan_ms", Better::Lower, |r| r.makespan_ms as f64),
    Metric::real("cost_usd", Better::Lower, |r| r.cost_usd),
    Metric::real("bound_ratio", Better::Lower, |r| r.bound_ratio),
];

impl Metric {
    /// A whole-number metric.
    const fn count(key: &'static str, better: Better, get: fn(&Results) -> f64) -> Metric {
        Metric {
            key,
            better,
            integer: true,
            get,
        }
    }

    /// A metric with a fractional part.
    const fn real(key: &'static str, better: Better, get: fn(&Results) -> f64) -> Metric {
        Metric {
            key,
            better,
            integer: false,
            get,
        }
    }
}

/// How a metric of a run compares with its baseline value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Exactly the baseline value.
    Unchanged,
    /// Better than the baseline.
    Improved,
    /// Worse, but by no more than the tolerance.
    Worse,
    /// Worse by more than the tolerance: the gate fails.
    Regressed,
}

/// Judges `now` against `base`: worse by more than `tolerance_pct` percent of `base` regresses.
/// The rule is relative, so from a baseline of 0 any worsening regresses (one 429 where there
/// were none fails at any tolerance).
pub fn judge(base: f64, now: f64, better: Better, tolerance_pct: f64) -> Verdict {
    let worse_by = match better {
        Better::Lower => now - base,
        Better::Higher => base - now,
    };
    if worse_by == 0.0 {
        Verdict::Unchanged
    } else if worse_by < 0.0 {
        Verdict::Improved
    } else if base == 0.0 || worse_by / base.abs() * 100.0 > tolerance_pct {
        Verdict::Regressed
    } else {
        Verdict::Worse
    }
}

/// The change from `base` to `now` in percent of `base`; `None` from a baseline of 0.
pub fn change_pct(base: f64, now: f64) -> Option<f64> {
    (base != 0.0).then(|| (now - base) / base.abs() * 100.0)
}

/// A baseline file: one entry per scenario and policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Baseline {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// Sorted by scenario, then policy.
    pub entries: Vec<Entry>,
}

/// The gated metrics of one scenario under one policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// The scenario's name.
    pub scenario: String,
    /// The policy's name.
    pub policy: String,
    /// The seed the values came from.
    pub seed: u64,
    /// One value per [`METRICS`] entry.
    pub metrics: Values,
}

/// One value per [`METRICS`] entry, in that order; written as a JSON object keyed by metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Values(pub Vec<f64>);

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(METRICS.len()))?;
        for (m, v) in METRICS.iter().zip(&self.0) {
            if m.integer {
                map.serialize_entry(m.key, &(*v as u64))?;
            } else {
                map.serialize_entry(m.key, v)?;
            }
        }
        map.end()
    }
}

impl Entry {
    /// The entry a run's results give.
    pub fn of(r: &Results) -> Entry {
        Entry {
            scenario: r.scenario.clone(),
            policy: r.policy.clone(),
            seed: r.seed,
            metrics: Values(METRICS.iter().map(|m| (m.get)(r)).collect()),
        }
    }
}

/// A baseline file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// The file is not a valid baseline.
    #[error("{file}:{line}: {}", at(field, message))]
    Invalid {
        /// The file.
        file: String,
        /// The line of the error (1-based).
        line: usize,
        /// The field at fault (`entries[2].metrics.cost_usd`), empty for a JSON syntax error
        /// outside any field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn at(field: &str, message: &str) -> String {
    if field.is_empty() {
        message.to_owned()
    } else {
        format!("{field}: {message}")
    }
}

impl Baseline {
    /// The baseline the given runs give, sorted so the file does not depend on argument order.
    pub fn of(runs: &[&Results]) -> Baseline {
        let mut entries: Vec<Entry> = runs.iter().map(|r| Entry::of(r)).collect();
        entries.sort_by(|a, b| (&a.scenario, &a.policy).cmp(&(&b.scenario, &b.policy)));
        Baseline {
            schema: SCHEMA,
            entries,
        }
    }

    /// The file's text: pretty-printed JSON with a fixed key order and a final newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The entry for `scenario` under `policy`, if any.
    pub fn find(&self, scenario: &str, policy: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.scenario == scenario && e.policy == policy)
    }

    /// Reads and validates a baseline file.
    pub fn load(file: &str) -> Result<Baseline, BaselineError> {
        let text = std::fs::read_to_string(file).map_err(|e| BaselineError::Read {
            file: file.to_owned(),
            message: match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "no such file (write one with `tagstorm-sim gate --update`)".to_owned()
                }
                _ => e.to_string().to_lowercase(),
            },
        })?;
        Baseline::parse(file, &text)
    }

    /// Parses and validates a baseline given as text; `file` is only used in messages.
    pub fn parse(file: &str, text: &str) -> Result<Baseline, BaselineError> {
        let path = FieldPath::default();
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = FileSeed(&path)
            .deserialize(&mut de)
            .and_then(|b| de.end().map(|()| b));
        parsed.map_err(|e| {
            // serde_json appends the position to its message; the error gives it up front.
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            BaselineError::Invalid {
                file: file.to_owned(),
                line: e.line(),
                field: path.show(),
                message: full.strip_suffix(&suffix).unwrap_or(&full).to_owned(),
            }
        })
    }
}

/// Where the parser is in a baseline (`entries`, `[2]`, `metrics`, `cost_usd`): serde_json
/// knows the line of an error but not the field, so the visitors below keep track of it.
#[derive(Debug, Default)]
struct FieldPath(RefCell<Vec<String>>);

impl FieldPath {
    fn enter(&self, part: String) {
        self.0.borrow_mut().push(part);
    }

    fn leave(&self) {
        self.0.borrow_mut().pop();
    }

    fn show(&self) -> String {
        let mut out = String::new();
        for part in self.0.borrow().iter() {
            if !out.is_empty() && !part.starts_with('[') {
                out.push('.');
            }
            out.push_str(part);
        }
        out
    }
}

// serde_json attaches a position to a visitor's own error only once the visitor returns, after
// it has read on to the object's end, which can be lines later. So every check below fails
// where serde_json is still at the fault: a repeated or unknown key right after the key, a bad
// value inside the value's own `Deserialize` ([`Tag`], [`NonNegative`]).

/// Refuses a field given twice (checked at its key).
fn not_yet<T, E: de::Error>(slot: &Option<T>) -> Result<(), E> {
    match slot {
        None => Ok(()),
        Some(_) => Err(E::custom("given twice")),
    }
}

/// A required field's value, or an error naming it.
fn required<T, E: de::Error>(path: &FieldPath, key: &str, slot: Option<T>) -> Result<T, E> {
    slot.ok_or_else(|| {
        path.enter(key.to_owned());
        E::custom("missing")
    })
}

fn unknown<E: de::Error>(what: &str, known: &[&str]) -> E {
    E::custom(format!(
        "unknown {what}, expected one of: {}",
        known.join(", ")
    ))
}

/// The `schema` value: exactly [`SCHEMA`].
struct Tag;

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tag, D::Error> {
        d.deserialize_str(Tag)
    }
}

impl Visitor<'_> for Tag {
    type Value = Tag;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "\"{SCHEMA}\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag, E> {
        if v == SCHEMA {
            Ok(Tag)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

/// A metric that is not a whole number: finite and ≥ 0.
struct NonNegative(f64);

impl<'de> Deserialize<'de> for NonNegative {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NonNegative, D::Error> {
        d.deserialize_f64(NonNegativeVisitor)
    }
}

struct NonNegativeVisitor;

impl Visitor<'_> for NonNegativeVisitor {
    type Value = NonNegative;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number ≥ 0")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NonNegative, E> {
        Ok(NonNegative(v as f64))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NonNegative, E> {
        match u64::try_from(v) {
            Ok(v) => Ok(NonNegative(v as f64)),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NonNegative, E> {
        if v.is_finite() && v >= 0.0 {
            Ok(NonNegative(v))
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

/// The whole file: `{ "schema": …, "entries": […] }`.
struct FileSeed<'p>(&'p FieldPath);

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = Baseline;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Baseline, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = Baseline;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {SCHEMA} object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Baseline, A::Error> {
        let (mut schema, mut entries) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            self.0.enter(key.clone());
            match key.as_str() {
                "schema" => {
                    not_yet(&schema)?;
                    schema = Some(map.next_value::<Tag>()?);
                }
                "entries" => {
                    not_yet(&entries)?;
                    entries = Some(map.next_value_seed(EntriesSeed(self.0))?);
                }
                _ => return Err(unknown("field", &["schema", "entries"])),
            }
            self.0.leave();
        }
        required(self.0, "schema", schema)?;
        Ok(Baseline {
            schema: SCHEMA,
            entries: required(self.0, "entries", entries)?,
        })
    }
}

/// `entries`: an array of entries, at most one per scenario and policy.
struct EntriesSeed<'p>(&'p FieldPath);

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Vec<Entry>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Entry>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Vec<Entry>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Entry>, A::Error> {
        let mut out: Vec<Entry> = Vec::new();
        loop {
            self.0.enter(format!("[{}]", out.len()));
            let Some(e) = seq.next_element_seed(EntrySeed(self.0, &out))? else {
                self.0.leave();
                return Ok(out);
            };
            out.push(e);
            self.0.leave();
        }
    }
}

/// One entry, `{ "scenario", "policy", "seed", "metrics" }`, given the entries before it (a
/// scenario and policy may have one entry only).
struct EntrySeed<'p>(&'p FieldPath, &'p [Entry]);

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Entry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = Entry;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an entry object (scenario, policy, seed, metrics)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        let (mut scenario, mut policy, mut seed, mut metrics) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            self.0.enter(key.clone());
            match key.as_str() {
                "scenario" => {
                    not_yet(&scenario)?;
                    scenario = Some(map.next_value::<String>()?);
                }
                "policy" => {
                    not_yet(&policy)?;
                    policy = Some(map.next_value::<String>()?);
                }
                "seed" => {
                    not_yet(&seed)?;
                    seed = Some(map.next_value::<u64>()?);
                }
                "metrics" => {
                    not_yet(&metrics)?;
                    metrics = Some(map.next_value_seed(ValuesSeed(self.0))?);
                }
                _ => {
                    let known = ["scenario", "policy", "seed", "metrics"];
                    return Err(unknown("field", &known));
                }
            }
            self.0.leave();
        }
        let e = Entry {
            scenario: required(self.0, "scenario", scenario)?,
            policy: required(self.0, "policy", policy)?,
            seed: required(self.0, "seed", seed)?,
            metrics: required(self.0, "metrics", metrics)?,
        };
        let same = |o: &Entry| o.scenario == e.scenario && o.policy == e.policy;
        if let Some(first) = self.1.iter().position(same) {
            return Err(de::Error::custom(format!(
                "a second entry for {} under {} (the first is entries[{first}])",
                e.scenario, e.policy
            )));
        }
        Ok(e)
    }
}

/// `metrics`: every metric of [`METRICS`] exactly once, nothing else.
struct ValuesSeed<'p>(&'p FieldPath);

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = Values;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Values, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = Values;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of metric values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Values, A::Error> {
        let mut values: Vec<Option<f64>> = vec![None; METRICS.len()];
        while let Some(key) = map.next_key::<String>()? {
            self.0.enter(key.clone());
            let Some(i) = METRICS.iter().position(|m| m.key == key) else {
                let known: Vec<&str> = METRICS.iter().map(|m| m.key).collect();
                return Err(unknown("metric", &known));
            };
            not_yet(&values[i])?;
            values[i] = Some(if METRICS[i].integer {
                map.next_value::<u64>()? as f64
            } else {
                map.next_value::<NonNegative>()?.0
            });
            self.0.leave();
        }
        let mut out = Vec::with_capacity(METRICS.len());
        for (m, v) in METRICS.iter().zip(values) {
            out.push(required(self.0, m.key, v)?);
        }
        Ok(Values(out))
    }
}

/// One metric of one run that differs from its baseline value.
#[derive(Clone, Copy, Debug)]
pub struct Moved {
    /// Which metric.
    pub metric: &'static Metric,
    /// The baseline value.
    pub base: f64,
    /// This run's value.
    pub now: f64,
    /// Improved, worse within the tolerance, or regressed.
    pub verdict: Verdict,
}

/// Every metric of `r` that differs from `entry`.
pub fn compare(entry: &Entry, r: &Results, tolerance_pct: f64) -> Vec<Moved> {
    METRICS
        .iter()
        .zip(&entry.metrics.0)
        .filter_map(|(metric, &base)| {
            let now = (metric.get)(r);
            let verdict = judge(base, now, metric.better, tolerance_pct);
            (verdict != Verdict::Unchanged).then_some(Moved {
                metric,
                base,
                now,
                verdict,
            })
        })
        .collect()
}

/// One run's line in the summary.
#[derive(Debug)]
struct Row<'a> {
    results: &'a Results,
    /// `None` when the baseline has no entry for the run.
    moved: Option<Vec<Moved>>,
}

impl Row<'_> {
    fn regressed(&self) -> usize {
        self.moved
            .iter()
            .flatten()
            .filter(|m| m.verdict == Verdict::Regressed)
            .count()
    }
}

/// A Markdown table cell: no `|` or line break can split the row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn value(m: &Metric, v: f64) -> String {
    if m.integer {
        thousands(v as u64)
    } else {
        format!("{v}")
    }
}

/// The Markdown summary of a gate run.
fn summary(baseline_file: &str, tolerance: f64, rows: &[Row], not_run: &[&Entry]) -> String {
    let regressed_runs = rows.iter().filter(|r| r.regressed() > 0).count();
    let broken = rows.iter().filter(|r| !r.results.invariants_ok()).count();
    let mut md = String::new();
    let verdict = match (broken, regressed_runs) {
        (0, 0) => "passed".to_owned(),
        (0, n) => format!("**failed**: {n} of {} runs regressed", rows.len()),
        (b, _) => format!(
            "**failed**: an invariant failed in {b} of {} runs",
            rows.len()
        ),
    };
    let _ = writeln!(md, "## tagstorm-sim gate: {verdict}\n");
    let _ = writeln!(
        md,
        "Baseline `{baseline_file}`, tolerance {tolerance}%: a metric regresses when it is more \
         than {tolerance}% worse than its baseline value (from 0, any increase regresses). \
         `images.tagged` is better higher, every other metric lower.\n"
    );
    let _ = writeln!(md, "| scenario | policy | seed | result |");
    let _ = writeln!(md, "|---|---|---:|---|");
    for row in rows {
        let r = row.results;
        let failures = r.invariant_failures();
        let result = if !failures.is_empty() {
            format!("**invariant failed**: {}", failures.join(", "))
        } else {
            match &row.moved {
                None => "new: no baseline entry".to_owned(),
                Some(_) if row.regressed() > 0 => {
                    let n = row.regressed();
                    format!(
                        "**regressed** ({n} metric{})",
                        if n == 1 { "" } else { "s" }
                    )
                }
                Some(_) => "pass".to_owned(),
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {result} |",
            cell(&r.scenario),
            cell(&r.policy),
            r.seed
        );
    }
    for e in not_run {
        let _ = writeln!(
            md,
            "| {} | {} | {} | not run (baseline only) |",
            cell(&e.scenario),
            cell(&e.policy),
            e.seed
        );
    }
    let moved: Vec<(&Results, &Moved)> = rows
        .iter()
        .flat_map(|row| row.moved.iter().flatten().map(|m| (row.results, m)))
        .collect();
    if moved.is_empty() {
        let _ = writeln!(md, "\nNo gated metric moved.");
        return md;
    }
    let _ = writeln!(md, "\n### Metrics that moved\n");
    let _ = writeln!(
        md,
        "| scenario | policy | metric | baseline | now | change | verdict |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---|");
    for (r, m) in moved {
        let change = match change_pct(m.base, m.now) {
            Some(pct) => format!("{pct:+.1}%"),
            None => "from 0".to_owned(),
        };
        let verdict = match m.verdict {
            Verdict::Regressed => "**regressed**",
            Verdict::Worse => "worse, within tolerance",
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
        };
        let _ = writeln!(
            md,
            "| {} | {} | `{}` | {} | {} | {change} | {verdict} |",
            cell(&r.scenario),
            cell(&r.policy),
            m.metric.key,
            value(m.metric, m.base),
            value(m.metric, m.now)
        );
    }
    md
}

/// The Markdown summary of `--update`.
fn update_summary(baseline_file: &str, baseline: &Baseline) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## tagstorm-sim gate: baseline written\n");
    let _ = writeln!(
        md,
        "`{baseline_file}`: {} entries of {} metrics each. Commit it; `gate` compares every run \
         with it.\n",
        baseline.entries.len(),
        METRICS.len()
    );
    let _ = writeln!(md, "| scenario | policy | seed |");
    let _ = writeln!(md, "|---|---|---:|");
    for e in &baseline.entries {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            cell(&e.scenario),
            cell(&e.policy),
            e.seed
        );
    }
    md
}

/// Runs the gate (or, with `--update`, writes the baseline).
pub fn cmd_gate(
    a: &GateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let sets = set_args(&a.flags)?;
    let bases = load_policies(&a.policies)?;
    let file = display_path(&a.baseline);
    // Every input is checked before anything runs: scenarios, policies, the baseline, and that
    // no two runs would share a baseline entry.
    let scenarios = a
        .scenarios
        .iter()
        .map(|p| Scenario::load(&display_path(p), &sets))
        .collect::<Result<Vec<_>, _>>()?;
    let mut planned: Vec<(String, String, u64)> = Vec::new();
    for s in &scenarios {
        for b in &bases {
            let policy = s.policy(b)?.name;
            if planned
                .iter()
                .any(|(n, p, _)| *n == s.spec.name && *p == policy)
            {
                return Err(CliError::Invalid(format!(
                    "{} under {policy} would run twice and share one baseline entry: name each \
                     scenario and policy once (a policy file needs a `name` of its own)",
                    s.spec.name
                )));
            }
            planned.push((s.spec.name.clone(), policy, s.spec.seed));
        }
    }
    let baseline = if a.update {
        None
    } else {
        let b = Baseline::load(&file)?;
        for (scenario, policy, seed) in &planned {
            if let Some(e) = b.find(scenario, policy).filter(|e| e.seed != *seed) {
                return Err(CliError::Invalid(format!(
                    "{file}: the entry for {scenario} under {policy} is for seed {}, this run \
                     uses seed {seed}: gate the seed the baseline was written with, or rewrite \
                     it with --update",
                    e.seed
                )));
            }
        }
        Some(b)
    };

    let mut runs: Vec<Results> = Vec::new();
    for s in &scenarios {
        runs.extend(run_policies(s, &bases, err)?.into_iter().map(|r| r.results));
    }
    let all: Vec<&Results> = runs.iter().collect();
    let outcome = check_invariants(&all, err);

    let Some(baseline) = baseline else {
        if outcome != Outcome::Ok {
            let _ = writeln!(
                err,
                "{file}: not written: a baseline must come from a run where every invariant held"
            );
            return Ok(outcome);
        }
        let new = Baseline::of(&all);
        let md = update_summary(&file, &new);
        let mut files = vec![(a.baseline.clone(), new.to_json())];
        if let Some(path) = &a.summary {
            files.push((path.clone(), md.clone()));
        }
        write_all(&files)?;
        write_line(out, &md)?;
        return Ok(Outcome::Ok);
    };

    let rows: Vec<Row> = all
        .iter()
        .map(|r| Row {
            results: r,
            moved: baseline
                .find(&r.scenario, &r.policy)
                .map(|e| compare(e, r, a.tolerance)),
        })
        .collect();
    let not_run: Vec<&Entry> = baseline
        .entries
        .iter()
        .filter(|e| {
            !all.iter()
                .any(|r| r.scenario == e.scenario && r.policy == e.policy)
        })
        .collect();
    let md = summary(&file, a.tolerance, &rows, &not_run);
    write_line(out, &md)?;
    if let Some(path) = &a.summary {
        write_all(&[(path.clone(), md)])?;
    }
    let regressed: usize = rows.iter().map(Row::regressed).sum();
    if outcome != Outcome::Ok {
        return Ok(outcome);
    }
    if regressed > 0 {
        let runs = rows.iter().filter(|r| r.regressed() > 0).count();
        let _ = writeln!(
            err,
            "gate: {regressed} metric{} regressed in {runs} of {} runs against {file}",
            if regressed == 1 { "" } else { "s" },
            rows.len()
        );
        return Ok(Outcome::Regressed);
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tolerance_is_relative_to_the_baseline() {
        use Verdict::*;
        let lower = |base, now, tol| judge(base, now, Better::Lower, tol);
        assert_eq!(lower(1000.0, 1000.0, 5.0), Unchanged);
        assert_eq!(
            lower(1000.0, 1050.0, 5.0),
            Worse,
            "exactly 5% worse is within 5%"
        );
        assert_eq!(lower(1000.0, 1051.0, 5.0), Regressed);
        assert_eq!(lower(10.0, 10.4, 5.0), Worse);
        assert_eq!(lower(10.0, 11.0, 5.0), Regressed);
        assert_eq!(lower(1000.0, 1.0, 5.0), Improved);
        assert_eq!(
            lower(1000.0, 1001.0, 0.0),
            Regressed,
            "tolerance 0: any worsening"
        );
        assert_eq!(lower(0.07, 0.0700001, 5.0), Worse);
    }

    #[test]
    fn from_zero_any_increase_regresses() {
        use Verdict::*;
        assert_eq!(judge(0.0, 1.0, Better::Lower, 5.0), Regressed);
        assert_eq!(judge(0.0, 1.0, Better::Lower, 1e6), Regressed);
        assert_eq!(judge(0.0, 0.0, Better::Lower, 5.0), Unchanged);
        assert_eq!(change_pct(0.0, 1.0), None);
        assert_eq!(change_pct(200.0, 150.0), Some(-25.0));
    }

    #[test]
    fn higher_is_better_flips_the_direction() {
        use Verdict::*;
        let higher = |base, now| judge(base, now, Better::Higher, 5.0);
        assert_eq!(higher(150.0, 160.0), Improved);
        assert_eq!(higher(150.0, 143.0), Worse);
        assert_eq!(higher(150.0, 142.0), Regressed);
        assert_eq!(higher(0.0, 3.0), Improved);
        let tagged = METRICS.iter().find(|m| m.key == "images.tagged").unwrap();
        assert_eq!(tagged.better, Better::Higher);
        assert!(
            METRICS
                .iter()
                .filter(|m| m.key != "images.tagged")
                .all(|m| m.better == Better::Lower)
        );
    }

    fn entry_json(metrics: &str) -> String {
        format!(
            "{{\n  \"schema\": \"{SCHEMA}\",\n  \"entries\": [\n    {{\n      \"scenario\": \"a\",\n      \"policy\": \"tagstorm\",\n      \"seed\": 1,\n      \"metrics\": {metrics}\n    }}\n  ]\n}}\n"
        )
    }

    fn all_metrics() -> String {
        let pairs: Vec<String> = METRICS
            .iter()
            .map(|m| format!("\"{}\": {}", m.key, if m.integer { "1" } else { "0.5" }))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }

    fn check_err(text: &str, expect: &str) {
        let e = Baseline::parse("b.json", text).unwrap_err().to_string();
        assert_eq!(e, expect);
    }

    #[test]
    fn a_written_baseline_parses_back_to_itself() {
        let b = Baseline::parse("b.json", &entry_json(&all_metrics())).unwrap();
        assert_eq!(b.entries.len(), 1);
        assert_eq!(b.entries[0].metrics.0[0], 1.0);
        let again = Baseline::parse("b.json", &b.to_json()).unwrap();
        assert_eq!(again, b);
        // Keys in METRICS order, integers written as integers.
        let text = b.to_json();
        let first = text.find("\"images.tagged\": 1,").unwrap();
        let last = text.find("\"bound_ratio\": 0.5").unwrap();
        assert!(first < last, "{text}");
    }

    #[test]
    fn malformed_baselines_name_the_line_and_field() {
        let good = all_metrics();
        check_err(
            &entry_json(&good.replace("\"images.failed\": 1", "\"images.failed\": \"x\"")),
            "b.json:8: entries[0].metrics.images.failed: invalid type: string \"x\", \
             expected u64",
        );
        check_err(
            &entry_json(&good.replace("\"images.failed\"", "\"images.lost\"")),
            &format!(
                "b.json:8: entries[0].metrics.images.lost: unknown metric, expected one of: {}",
                METRICS.iter().map(|m| m.key).collect::<Vec<_>>().join(", ")
            ),
        );
        check_err(
            &entry_json(&good.replace("\"cost_usd\": 0.5, ", "")),
            "b.json:8: entries[0].metrics.cost_usd: missing",
        );
        check_err(
            &entry_json(&good.replace("\"bound_ratio\": 0.5", "\"bound_ratio\": -1.5")),
            "b.json:8: entries[0].metrics.bound_ratio: invalid value: floating point `-1.5`, \
             expected a number ≥ 0",
        );
        check_err(
            &entry_json(&good).replace("\"seed\": 1", "\"seed\": \"one\""),
            "b.json:7: entries[0].seed: invalid type: string \"one\", expected u64",
        );
        check_err(
            &entry_json(&good).replace("tagstorm.baseline.v1", "tagstorm.baseline.v0"),
            "b.json:2: schema: invalid value: string \"tagstorm.baseline.v0\", expected \
             \"tagstorm.baseline.v1\"",
        );
        check_err(
            &entry_json(&good).replace("\"seed\": 1,", "\"seed\": 1"),
            "b.json:8: entries[0]: expected `,` or `}`",
        );
        check_err("", "b.json:1: EOF while parsing a value");
        check_err(
            "[]",
            "b.json:1: invalid type: sequence, expected a tagstorm.baseline.v1 object",
        );
        check_err(
            &format!("{{\"schema\": \"{SCHEMA}\"}}"),
            "b.json:1: entries: missing",
        );
        let twice = entry_json(&good).replace(
            "\n  ]",
            &format!(
                ",\n    {{ \"scenario\": \"a\", \"policy\": \"tagstorm\", \"seed\": 2, \"metrics\": {good} }}\n  ]"
            ),
        );
        // Pretty-printed, as `--update` writes it: the error is on the line of the fault, also
        // for the last key of an object (serde_json reads past it before a visitor returns).
        let pretty = Baseline::parse("b.json", &entry_json(&good))
            .unwrap()
            .to_json();
        let line = |key: &str| pretty.lines().position(|l| l.contains(key)).unwrap() + 1;
        check_err(
            &pretty.replace("\"bound_ratio\": 0.5", "\"bound_ratio\": -0.5"),
            &format!(
                "b.json:{}: entries[0].metrics.bound_ratio: invalid value: floating point \
                 `-0.5`, expected a number ≥ 0",
                line("bound_ratio")
            ),
        );
        check_err(
            &pretty.replace(
                "\"bound_ratio\": 0.5",
                "\"bound_ratio\": 0.5, \"cost_usd\": 1",
            ),
            &format!(
                "b.json:{}: entries[0].metrics.cost_usd: given twice",
                line("bound_ratio")
            ),
        );
        check_err(
            &twice,
            "b.json:10: entries[1]: a second entry for a under tagstorm (the first is entries[0])",
        );
    }
}
