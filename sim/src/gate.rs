//! `tagstorm-sim gate`: the CI performance gate (SPEC §3, job 2). It runs scenarios under the
//! policies CI protects, compares a fixed set of metrics with a committed baseline
//! (`tagstorm.baseline.v1`) and fails (exit 4) when one got worse by more than the tolerance.
//!
//! `--update` writes the baseline from a run instead: pretty-printed JSON with a fixed key order,
//! so a change to it reads well in a pull request. A malformed baseline is bad input, refused
//! before anything runs with one error naming the file, the line and the field.
//!
//! An entry records the configuration its figures came from: the seed, and the `--set` overrides
//! of the run (`"sets"`, in [`canonical_sets`] form, left out when there were none). Gating a
//! run whose seed or sets differ from its entry's is bad input, not a comparison.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_path_to_error::{Path, Segment};

use crate::cli::{
    CliError, GateArgs, Outcome, check_invariants, check_out, display_path, load_policies,
    resolve_policies, run_policies, same_file, set_args, write_all, write_line,
};
use crate::report::thousands;
use crate::results::Results;
use crate::scenario::{FieldPath, Scenario, SetArg};

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
/// were none fails at any tolerance). Decimal figures (a bound ratio of 1.05 against 1.00) are
/// not exact in binary, so a change of exactly the tolerance can compute a hair above it: a
/// relative slack of 1e-9 keeps it within.
pub fn judge(base: f64, now: f64, better: Better, tolerance_pct: f64) -> Verdict {
    let worse_by = match better {
        Better::Lower => now - base,
        Better::Higher => base - now,
    };
    if worse_by == 0.0 {
        Verdict::Unchanged
    } else if worse_by < 0.0 {
        Verdict::Improved
    } else if base == 0.0 || worse_by / base.abs() * 100.0 > tolerance_pct * (1.0 + 1e-9) {
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The scenario's name.
    pub scenario: String,
    /// The policy's name.
    pub policy: String,
    /// The seed the values came from.
    pub seed: u64,
    /// The `--set` overrides the values came from, in [`canonical_sets`] form and sorted; empty
    /// (and left out of the file) when there were none.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "sets"
    )]
    pub sets: Vec<String>,
    /// One value per [`METRICS`] entry.
    pub metrics: Values,
}

/// One value per [`METRICS`] entry, in that order; written as a JSON object keyed by metric.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "Object<Metrics>")]
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
    /// The entry a run's results give; `sets` are the run's overrides in [`canonical_sets`]
    /// form.
    pub fn of(r: &Results, sets: &[String]) -> Entry {
        Entry {
            scenario: r.scenario.clone(),
            policy: r.policy.clone(),
            seed: r.seed,
            sets: sets.to_vec(),
            metrics: Values(METRICS.iter().map(|m| (m.get)(r)).collect()),
        }
    }
}

/// `--set` overrides as a baseline records them: `path=value` with the path written one way
/// (`uploads[0].users` for `uploads.0.users`) and the value trimmed, the last of several sets of
/// one path only (it is the one that holds), sorted. A set of `seed` is left out: the entry's
/// `seed` records it.
pub fn canonical_sets(sets: &[SetArg]) -> Vec<String> {
    let seed = FieldPath::parse("seed");
    let mut out: Vec<(String, String)> = Vec::new();
    for s in sets.iter().filter(|s| s.path != seed) {
        let path = s.path.to_string();
        out.retain(|(p, _)| *p != path);
        out.push((path, s.value.trim().to_owned()));
    }
    let mut out: Vec<String> = out.into_iter().map(|(p, v)| format!("{p}={v}")).collect();
    out.sort();
    out
}

/// Sets as the gate's messages show them: `--set a=1 --set b=2`, or `no --set overrides`.
fn show_sets(sets: &[String]) -> String {
    if sets.is_empty() {
        return "no --set overrides".to_owned();
    }
    sets.iter()
        .map(|s| format!("--set {s}"))
        .collect::<Vec<_>>()
        .join(" ")
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
    /// The baseline the given runs give, every entry with the runs' `sets` ([`canonical_sets`]
    /// form), sorted so the file does not depend on argument order.
    pub fn of(runs: &[&Results], sets: &[String]) -> Baseline {
        let mut entries: Vec<Entry> = runs.iter().map(|r| Entry::of(r, sets)).collect();
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
        let invalid = |line, (field, message)| BaselineError::Invalid {
            file: file.to_owned(),
            line,
            field,
            message,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed: Object<File> = match serde_path_to_error::deserialize(&mut de) {
            Ok(parsed) => parsed,
            Err(e) => {
                let field = field(e.path());
                return Err(invalid(e.inner().line(), located(field, e.inner())));
            }
        };
        if let Err(e) = de.end() {
            return Err(invalid(e.line(), located(String::new(), &e)));
        }
        let entries: Vec<Entry> = parsed.0.entries.into_iter().map(|e| e.0).collect();
        // A scenario and policy have one entry only. This needs every entry, so it runs after
        // parsing, and finds the line of the second entry in the text again.
        for (i, e) in entries.iter().enumerate() {
            let same = |o: &Entry| o.scenario == e.scenario && o.policy == e.policy;
            if let Some(first) = entries[..i].iter().position(same) {
                let message = format!(
                    "a second entry for {} under {} (the first is entries[{first}])",
                    e.scenario, e.policy
                );
                return Err(invalid(
                    entry_line(text, i),
                    (format!("entries[{i}]"), message),
                ));
            }
        }
        Ok(Baseline {
            schema: SCHEMA,
            entries,
        })
    }
}

/// The file as written; [`Baseline::parse`] turns it into a [`Baseline`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "schema", deserialize_with = "schema")]
    _schema: (),
    entries: Vec<Object<Entry>>,
}

/// Declares `Metrics`, `metrics` as written, read into [`Values`]: one field per [`METRICS`]
/// key, in that order, each read by the function named after `via`.
macro_rules! metrics {
    ($($field:ident = $key:literal via $read:literal,)*) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Metrics {
            $(#[serde(rename = $key, deserialize_with = $read)] $field: f64,)*
        }

        impl From<Object<Metrics>> for Values {
            fn from(Object(m): Object<Metrics>) -> Values {
                Values(vec![$(m.$field),*])
            }
        }
    };
}

metrics! {
    images_tagged = "images.tagged" via "count",
    images_failed = "images.failed" via "count",
    images_pending = "images.pending" via "count",
    rate_limited = "upstream.rate_limited" via "count",
    server_errors = "upstream.server_errors" via "count",
    retries = "upstream.retries" via "count",
    image_tagged_p95 = "latency_ms.image_tagged.p95" via "count",
    image_tagged_p99 = "latency_ms.image_tagged.p99" via "count",
    upload_first_tag_p50 = "latency_ms.upload_first_tag.p50" via "count",
    upload_first_tag_p95 = "latency_ms.upload_first_tag.p95" via "count",
    upload_complete_p95 = "latency_ms.upload_complete.p95" via "count",
    makespan_ms = "makespan_ms" via "count",
    cost_usd = "cost_usd" via "non_negative",
    bound_ratio = "bound_ratio" via "non_negative",
}

/// An entry's `sets`: each a valid `--set` argument, no path twice; returned in
/// [`canonical_sets`] form, sorted.
fn sets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_seq(Sets)
}

struct Sets;

impl<'de> Visitor<'de> for Sets {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of --set arguments such as [\"account.tier=3\"]")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut all: Vec<SetArg> = Vec::new();
        while let Some(Set(s)) = seq.next_element()? {
            if let Some(first) = all.iter().position(|o| o.path == s.path) {
                return Err(de::Error::custom(format!(
                    "{} is set twice (sets[{first}] and sets[{}]): one value per path",
                    s.path,
                    all.len()
                )));
            }
            all.push(s);
        }
        Ok(canonical_sets(&all))
    }
}

/// One `--set` argument of an entry's `sets`, checked as the command line checks it.
struct Set(SetArg);

impl<'de> Deserialize<'de> for Set {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Set, D::Error> {
        d.deserialize_str(SetVisitor)
    }
}

struct SetVisitor;

impl Visitor<'_> for SetVisitor {
    type Value = Set;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a --set argument such as \"account.tier=3\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Set, E> {
        let s = SetArg::parse(v).map_err(|e| E::custom(e.to_string()))?;
        if s.path == FieldPath::parse("seed") {
            return Err(E::custom(format!(
                "--set {v}: the seed goes in the entry's seed, not in its sets"
            )));
        }
        Ok(Set(s))
    }
}

/// A whole-number metric.
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    u64::deserialize(d).map(|v| v as f64)
}

// serde_json places an error from a visitor where it stands when the visitor fails, but an error
// made after a value has parsed where the value's object ends (the next line, for its last key).
// So the two checks on a value are small visitors.

/// The `schema` value: exactly [`SCHEMA`].
fn schema<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    d.deserialize_str(Schema)
}

struct Schema;

impl Visitor<'_> for Schema {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "\"{SCHEMA}\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v == SCHEMA {
            Ok(())
        } else {
            Err(E::invalid_value(Unexpected::Str(v), &self))
        }
    }
}

/// A metric that is not a whole number: finite and ≥ 0.
fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_f64(NonNegative)
}

struct NonNegative;

impl Visitor<'_> for NonNegative {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number ≥ 0")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

/// A `T` from a JSON object only: a derived `Deserialize` also takes an array of the field
/// values, which a baseline never holds.
#[derive(Debug)]
struct Object<T>(T);

/// How an error names the object a type is read from.
trait Expected {
    const OBJECT: &'static str;
}

impl Expected for File {
    const OBJECT: &'static str = "a tagstorm.baseline.v1 object";
}

impl Expected for Entry {
    const OBJECT: &'static str = "an entry object (scenario, policy, seed, sets, metrics)";
}

impl Expected for Metrics {
    const OBJECT: &'static str = "an object of metric values";
}

impl<'de, T: Deserialize<'de> + Expected> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Expected> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::OBJECT)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(PhantomData)).map(Object)
    }
}

/// A path as the error shows it: `entries[0].metrics.cost_usd`, empty outside any field. A
/// syntax error between two keys has an unknown last segment (`?`), left out.
fn field(path: &Path) -> String {
    let mut field = String::new();
    for segment in path.iter().filter(|s| !matches!(s, Segment::Unknown)) {
        if !field.is_empty() && !matches!(segment, Segment::Seq { .. }) {
            field.push('.');
        }
        field += &segment.to_string();
    }
    field
}

/// The field and message of a parse error at `field`, without serde_json's position. serde
/// names a missing or repeated field in the message of its object; it goes in the field here,
/// like every other.
fn located(field: String, e: &serde_json::Error) -> (String, String) {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    for (prefix, what) in [
        ("missing field `", "missing"),
        ("duplicate field `", "given twice"),
    ] {
        if let Some(key) = message
            .strip_prefix(prefix)
            .and_then(|k| k.strip_suffix('`'))
        {
            let dot = if field.is_empty() { "" } else { "." };
            return (format!("{field}{dot}{key}"), what.to_owned());
        }
    }
    (field, tagstorm_core::config::plain_message(message))
}

/// The line entry `i` of a baseline that parsed starts on. serde_json keeps no position of a
/// value that parsed, so a check that needs every entry finds the entry in the text again.
fn entry_line(text: &str, i: usize) -> usize {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        entries: Vec<&'a RawValue>,
    }
    let raw = serde_json::from_str::<Raw>(text).ok();
    let start = raw
        .as_ref()
        .and_then(|r| r.entries.get(i))
        .map_or(0, |e| e.get().as_ptr() as usize - text.as_ptr() as usize);
    text[..start].matches('\n').count() + 1
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

/// Sets as Markdown code spans: `` `--set a=1`, `--set b=2` `` (a value holding a backtick is
/// fenced with two).
fn code_sets(sets: &[String]) -> String {
    sets.iter()
        .map(|s| match s.contains('`') {
            true => format!("`` --set {s} ``"),
            false => format!("`--set {s}`"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Markdown summary of a gate run.
fn summary(
    baseline_file: &str,
    tolerance: f64,
    sets: &[String],
    rows: &[Row],
    not_run: &[&Entry],
) -> String {
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
    if !sets.is_empty() {
        let _ = writeln!(
            md,
            "Every run had the overrides {}, as its baseline entry records.\n",
            code_sets(sets)
        );
    }
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
        "`{baseline_file}`: {} of {} metrics each. Commit it; `gate` compares every run with \
         it.\n",
        crate::report::count(baseline.entries.len() as u64, "entry"),
        METRICS.len()
    );
    if let Some(sets) = baseline
        .entries
        .first()
        .map(|e| &e.sets)
        .filter(|s| !s.is_empty())
    {
        let _ = writeln!(
            md,
            "Every entry records the overrides it was computed with ({}); gate with the same.\n",
            code_sets(sets)
        );
    }
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
    let recorded = canonical_sets(&sets);
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
        for policy in resolve_policies(s, &bases)? {
            let policy = policy.name;
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
            if let Some(e) = b.find(scenario, policy).filter(|e| e.sets != recorded) {
                return Err(CliError::Invalid(format!(
                    "{file}: the entry for {scenario} under {policy} was written with {}, this \
                     run has {}: gate with the --set overrides the baseline was written with, \
                     or rewrite it with --update",
                    show_sets(&e.sets),
                    show_sets(&recorded)
                )));
            }
        }
        Some(b)
    };

    if a.update {
        check_out(&a.baseline, false)?;
    }
    if let Some(path) = &a.summary {
        if same_file(path, &a.baseline) {
            return Err(CliError::Invalid(format!(
                "--summary {}: that is the baseline file; the summary would replace it (name \
                 another file, e.g. gate.md)",
                display_path(path)
            )));
        }
        check_out(path, false)?;
    }
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
        let new = Baseline::of(&all, &recorded);
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
    let md = summary(&file, a.tolerance, &recorded, &rows, &not_run);
    // The file first, and a failed stdout only after the verdict: a CI job whose log could not
    // be written still gets the summary and exit 1 or 4 (it got 3, hiding the regression, and
    // no summary).
    if let Some(path) = &a.summary {
        write_all(&[(path.clone(), md.clone())])?;
    }
    let printed = write_line(out, &md);
    let regressed: usize = rows.iter().map(Row::regressed).sum();
    if outcome != Outcome::Ok || regressed > 0 {
        if let Err(e) = &printed {
            let _ = writeln!(err, "{e}");
        }
    } else {
        printed?;
    }
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
    fn exactly_the_tolerance_worse_is_within_it_for_decimal_figures_too() {
        use Verdict::*;
        let lower = |base, now, tol| judge(base, now, Better::Lower, tol);
        // (1.05 - 1.0) / 1.0 * 100 computes to 5.000000000000004.
        assert_eq!(lower(1.0, 1.05, 5.0), Worse);
        assert_eq!(lower(0.01, 0.0105, 5.0), Worse);
        assert_eq!(lower(0.050875, 0.06512, 28.0), Worse);
        assert_eq!(lower(1.0, 1.0501, 5.0), Regressed);
        assert_eq!(lower(1.0, 1.0000001, 0.0), Regressed);
        assert_eq!(judge(2.0, 1.9, Better::Higher, 5.0), Worse);
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
        // Every metric in its place.
        let mut distinct = b.clone();
        distinct.entries[0].metrics = Values((1..=METRICS.len()).map(|i| i as f64).collect());
        assert_eq!(
            Baseline::parse("b.json", &distinct.to_json()).unwrap(),
            distinct
        );
        // Keys in METRICS order, integers written as integers.
        let text = b.to_json();
        let first = text.find("\"images.tagged\": 1,").unwrap();
        let last = text.find("\"bound_ratio\": 0.5").unwrap();
        assert!(first < last, "{text}");
    }

    /// The test entry with `sets` (a JSON array's text) before its metrics.
    fn entry_with_sets(sets: &str) -> String {
        entry_json(&all_metrics()).replace(
            "\"seed\": 1,\n",
            &format!("\"seed\": 1,\n      \"sets\": {sets},\n"),
        )
    }

    #[test]
    fn an_entry_without_sets_has_none_and_is_written_without_the_key() {
        let b = Baseline::parse("b.json", &entry_json(&all_metrics())).unwrap();
        assert_eq!(b.entries[0].sets, Vec::<String>::new());
        assert!(!b.to_json().contains("\"sets\""), "{}", b.to_json());
        // An empty list is the same entry.
        assert_eq!(
            Baseline::parse("b.json", &entry_with_sets("[]")).unwrap(),
            b
        );
    }

    #[test]
    fn an_entry_with_sets_reads_them_sorted_and_writes_them_back() {
        let b = Baseline::parse(
            "b.json",
            &entry_with_sets("[\"uploads.0.users = 5\", \"account.tier=3\"]"),
        )
        .unwrap();
        assert_eq!(b.entries[0].sets, ["account.tier=3", "uploads[0].users=5"]);
        let text = b.to_json();
        assert!(
            text.contains("\"seed\": 1,\n      \"sets\": [\n        \"account.tier=3\",\n"),
            "{text}"
        );
        assert_eq!(Baseline::parse("b.json", &text).unwrap(), b);
        // The old, set-free entry is a different configuration.
        let plain = Baseline::parse("b.json", &entry_json(&all_metrics())).unwrap();
        assert_ne!(plain.entries[0].sets, b.entries[0].sets);
    }

    #[test]
    fn canonical_sets_write_one_path_one_way_sorted_without_the_seed() {
        let check = |raw: &[&str], expect: &[&str]| {
            let sets: Vec<SetArg> = raw.iter().map(|s| SetArg::parse(s).unwrap()).collect();
            assert_eq!(canonical_sets(&sets), expect, "{raw:?}");
        };
        check(&[], &[]);
        check(&["account.tier=3"], &["account.tier=3"]);
        check(
            &["uploads.0.users=5", "account.tier = 3"],
            &["account.tier=3", "uploads[0].users=5"],
        );
        check(&["uploads[0].users=5"], &["uploads[0].users=5"]);
        // The last set of a path is the one that holds; the seed is the entry's `seed`.
        check(&["account.tier=2", "account.tier=3"], &["account.tier=3"]);
        check(&["seed=7", "account.tier=3"], &["account.tier=3"]);
        assert_eq!(show_sets(&[]), "no --set overrides");
        assert_eq!(
            show_sets(&["a=1".into(), "b=2".into()]),
            "--set a=1 --set b=2"
        );
    }

    #[test]
    fn malformed_sets_name_the_line_and_field() {
        check_err(
            &entry_with_sets("[\"account.tier\"]"),
            "b.json:8: entries[0].sets[0]: --set account.tier: expected key=value, e.g. --set \
             account.tier=2",
        );
        check_err(
            &entry_with_sets("[\"account.tier=2\", 3]"),
            "b.json:8: entries[0].sets[1]: invalid type: integer `3`, expected a --set argument \
             such as \"account.tier=3\"",
        );
        check_err(
            &entry_with_sets("\"account.tier=2\""),
            "b.json:8: entries[0].sets: invalid type: string \"account.tier=2\", expected a list \
             of --set arguments such as [\"account.tier=3\"]",
        );
        check_err(
            &entry_with_sets("[\"seed=3\"]"),
            "b.json:8: entries[0].sets[0]: --set seed=3: the seed goes in the entry's seed, not \
             in its sets",
        );
        check_err(
            &entry_with_sets("[\"account.tier=2\", \"account.tier=3\"]"),
            "b.json:8: entries[0].sets: account.tier is set twice (sets[0] and sets[1]): one \
             value per path",
        );
    }

    #[test]
    fn malformed_baselines_name_the_line_and_field() {
        let good = all_metrics();
        check_err(
            &entry_json(&good.replace("\"images.failed\": 1", "\"images.failed\": \"x\"")),
            "b.json:8: entries[0].metrics.images.failed: invalid type: string \"x\", \
             expected a whole number from 0 to 18446744073709551615",
        );
        check_err(
            &entry_json(&good.replace("\"images.failed\"", "\"images.lost\"")),
            &format!(
                "b.json:8: entries[0].metrics.images.lost: unknown field `images.lost`, \
                 expected one of {}",
                METRICS
                    .iter()
                    .map(|m| format!("`{}`", m.key))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        check_err(
            &entry_json(&good.replace("\"cost_usd\": 0.5, ", "")),
            "b.json:8: entries[0].metrics.cost_usd: missing",
        );
        check_err(
            &entry_json(&good.replace("\"bound_ratio\": 0.5", "\"bound_ratio\": -1.5")),
            "b.json:8: entries[0].metrics.bound_ratio: invalid value: number `-1.5`, \
             expected a number ≥ 0",
        );
        check_err(
            &entry_json(&good).replace("\"seed\": 1", "\"seed\": \"one\""),
            "b.json:7: entries[0].seed: invalid type: string \"one\", expected a whole number from 0 to 18446744073709551615",
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
        check_err(&(entry_json(&good) + "x"), "b.json:12: trailing characters");
        check_err(
            &format!("{{\"schema\": \"{SCHEMA}\", \"entries\": [[]]}}"),
            "b.json:1: entries[0]: invalid type: sequence, expected an entry object (scenario, \
             policy, seed, sets, metrics)",
        );
        check_err(
            &format!("{{\"schema\": \"{SCHEMA}\", \"entries\": [], \"x\": 1}}"),
            "b.json:1: x: unknown field `x`, expected `schema` or `entries`",
        );
        check_err(
            "{\n\"entries\": [],\n\"schema\": 1\n}",
            "b.json:3: schema: invalid type: integer `1`, expected \"tagstorm.baseline.v1\"",
        );
        check_err(
            &entry_json(&good).replace("\"cost_usd\": 0.5", "\"cost_usd\": -1"),
            "b.json:8: entries[0].metrics.cost_usd: invalid type: integer `-1`, expected a \
             number ≥ 0",
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
                "b.json:{}: entries[0].metrics.bound_ratio: invalid value: number \
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
