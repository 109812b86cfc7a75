//! The `tagstorm-sim` command line: flags (clap), and the commands `run`, `compare`, `sweep`,
//! `report`, `validate`, `bench` and `gate`, each returning an [`Outcome`] or a [`CliError`] that maps to a stable exit
//! code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use tagstorm_core::Policy;
use tagstorm_core::config::PRESETS;

use crate::report;

use crate::results::{Results, hgrm};
use crate::scenario::{Scenario, ScenarioError, SetArg};
use crate::sim::{self, Progress, RunOutput};

const AFTER_HELP: &str = "\
Examples:
  tagstorm-sim compare scenarios/ten-users-fifteen-images.toml
  tagstorm-sim run scenarios/single-300-upload.toml --policy seed-proposed
  tagstorm-sim run scenarios/*.toml --json > results.ndjson
  tagstorm-sim run scenarios/workday.toml --set account.tier=3 --set policy.realtime_head_images=5
  tagstorm-sim run scenarios/tier2-burst.toml --policy scenarios/policies/cost-first.toml --out out/tier2
  tagstorm-sim sweep scenarios/single-300-upload.toml --policy seed-current --vary policy.realtime_chunked_max=19,100,300
  tagstorm-sim report scenarios/ten-users-fifteen-images.toml --tiers 1,2,3 --out capacity.html
  tagstorm-sim validate scenarios/*.toml
  tagstorm-sim policies                # every policy field, each preset's value
  tagstorm-sim bench scenarios/workday.toml --images 1000000 --runs 3 --json
  tagstorm-sim gate --baseline scenarios/baseline.json \\
      --policies tagstorm,seed-proposed,seed-current scenarios/*.toml

--set KEY=VALUE edits the scenario before it is validated; KEY is a dotted path
(account.tier, uploads.0.images, sim.max_duration_s, policy.chunk_size) and VALUE is TOML
(30, \"high\", { kind = \"pareto\", min = 5, alpha = 1.2, max = 5000 }).

Exit codes (stable):
  0  success (stdout's reader closing early, as `| head` does, changes no exit code: the
     output to stdout stops, and everything else, --out files and the verdict included, goes on)
  1  the run finished but an invariant failed: images still pending at the end, or tag mismatches
  2  bad input: usage, an unreadable or invalid scenario, policy or gate baseline
  3  the output could not be written
  4  gate: a metric regressed against the baseline";

const RUN_HELP: &str = "\
Examples:
  tagstorm-sim run scenarios/ten-users-fifteen-images.toml
  tagstorm-sim run scenarios/single-300-upload.toml --policy seed-proposed --seed 7
  tagstorm-sim run scenarios/workday.toml --set account.tier=3 --set uploads.0.workspaces=80
  tagstorm-sim run scenarios/*.toml --json > results.ndjson
  tagstorm-sim run scenarios/tier2-burst.toml --policy scenarios/policies/cost-first.toml --out out/tier2

Every scenario and the policy are checked before anything runs; with several scenarios, --out
DIR gets one folder per scenario and a summary.md.

--out DIR writes results.json (schema tagstorm.results.v1, the object --json prints, pretty),
summary.md (the table in Markdown), image_tagged.hgrm, upload_first_tag.hgrm and
upload_complete.hgrm (HdrHistogram's percentile distribution, values in milliseconds: its
plotter's default unit, hdr-plot --units ms) and one .svg percentile plot per latency.
Latencies are in milliseconds; one with count 0 (no upload got a tag, say) has every other field
0, so read count first. They come from HdrHistogram at 3 significant digits: min is the lowest
value of its bucket, the percentiles and max the highest, so max can pass makespan_ms by up to
0.1% (one upload of 603,200 ms reads min 603,136, max 603,647). bound_ms and bound_ratio are 0
when there is no bound (the workload has no images, or one request is charged more tokens
than the TPM holds; a small RPD refills as OpenAI's does, so it lengthens the bound instead). An existing DIR is written into: files of these
names are replaced, anything else in it is left as it was.

Exit codes: 0 ok; 1 a run finished with an invariant failed (images pending, tag mismatches;
each is named on stderr); 2 bad input (nothing runs); 3 an output could not be written.";

const COMPARE_HELP: &str = "\
Examples:
  tagstorm-sim compare scenarios/ten-users-fifteen-images.toml
  tagstorm-sim compare scenarios/workday.toml --policies seed-current,tagstorm --json
  tagstorm-sim compare scenarios/tier2-burst.toml --policies tagstorm,scenarios/policies/cost-first.toml --out cmp
  # Is it the policy or the seed? Each metric's median over 10 seeds, and seed by seed.
  tagstorm-sim compare scenarios/workday.toml --set account.tier=1 --seeds 1..=10

--out DIR writes summary.md, one .svg percentile plot per latency with a line per policy, and
one folder per policy with its results.json, .hgrm files (values in milliseconds) and plots.

Exit codes: 0 ok; 1 a run finished with an invariant failed (named on stderr); 2 bad input
(nothing runs); 3 an output could not be written.";

const VALIDATE_HELP: &str = "\
Examples:
  tagstorm-sim validate scenarios/*.toml
  tagstorm-sim validate scenarios/workday.toml --set account.tier=1

Prints `FILE: ok (name, uploads, images)` per valid file on stdout and one
`FILE:LINE: FIELD: message` line per invalid one on stderr: its first problem (fix it and
validate again to see the next).

Exit codes: 0 every file is valid; 2 at least one is not (or bad usage); 3 stdout could not be
written.";

const BENCH_HELP: &str = "\
Reports two wall times per run: the whole run (drawing the workload, setting up core and the
model, every event, then the results: what a user waits for) and the event loop inside it.
Events per second are given over both; the loop's figure is the one to compare with other
simulators, which time their loops alone.

For the fastest binary, benches/pgo.sh builds this one with profile-guided optimisation
(target/pgo/tagstorm-sim, about 10% fewer instructions an event, the same results) and times
the two side by side; BENCHMARKS.md has the figures.

Examples:
  tagstorm-sim bench
  tagstorm-sim bench scenarios/workday.toml --images 1000000 --runs 3 --json

Exit codes: 0 ok; 1 the scaled run finished with an invariant failed (named on stderr); 2 bad
input; 3 stdout could not be written.";

const GATE_HELP: &str = "\
Runs every scenario under every policy and compares these metrics with the baseline's entry for
the same scenario and policy: images.tagged (higher is better), images.failed, images.pending,
upstream.rate_limited, upstream.server_errors, upstream.retries, latency_ms.image_tagged.p95,
latency_ms.image_tagged.p99, latency_ms.upload_first_tag.p50, latency_ms.upload_first_tag.p95,
latency_ms.upload_complete.p95, makespan_ms, cost_usd, bound_ratio (lower is better).

A metric regresses when it is more than --tolerance percent worse than its baseline value. The
rule is relative, so a metric whose baseline is 0 regresses on any increase: one 429 where the
baseline had none fails at every tolerance. Improvements are reported and never fail. A run
with no baseline entry is reported as new and passes; a baseline entry that was not run is
listed as not run. Every entry records the seed and the --set overrides it came from; gating
another seed (--seed) or other overrides is bad input (exit 2). The summary (Markdown) goes to
stdout, and to --summary FILE.

Workflow:
  # Once, and after every intended change of the numbers: write the baseline, commit it.
  tagstorm-sim gate --update --baseline scenarios/baseline.json \\
      --policies tagstorm,seed-proposed,seed-current scenarios/*.toml
  git add scenarios/baseline.json
  # In CI (this repository's .ci/run): fails with exit 4 when a metric regressed.
  tagstorm-sim gate --baseline scenarios/baseline.json \\
      --policies tagstorm,seed-proposed,seed-current --summary gate.md scenarios/*.toml

--update replaces the whole file with this run's entries: give it the same scenarios and
--policies as the CI job. An entry it leaves out is dropped, and the CI job then reports that
run as new, which passes whatever its numbers.

Exit codes: 0 passed (or, with --update, the baseline was written); 1 an invariant failed
(--update then writes nothing); 2 bad input, a malformed baseline included, reported with its
file, line and field before anything runs; 3 an output could not be written; 4 a metric
regressed.";

/// `tagstorm-sim`: a deterministic simulator of tagstorm-core against a model of the OpenAI API.
#[derive(Debug, Parser)]
#[command(name = "tagstorm-sim", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenarios under one policy and print their results.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Run one scenario under several policies (at once, one thread each) and print them side
    /// by side.
    #[command(after_help = COMPARE_HELP)]
    Compare(CompareArgs),
    /// Run one scenario under one policy once per value of one field (several at a time) and
    /// print one row per value.
    #[command(after_help = crate::sweep::SWEEP_HELP)]
    Sweep(SweepArgs),
    /// The capacity planner's report: per account tier, how many users can upload at once (or,
    /// for poisson and daily arrivals, how much the arrival rate can grow) before a latency's
    /// p95 passes a limit; what the next tier buys; what 1,000 images cost through the realtime
    /// and the Batch API. Markdown on stdout, JSON with --json, HTML with --out.
    #[command(after_help = crate::capacity::REPORT_HELP)]
    Report(ReportArgs),
    /// Check scenario files without running them; every file is checked, and each bad one
    /// reported with its first problem.
    #[command(after_help = VALIDATE_HELP)]
    Validate(ValidateArgs),
    /// Measure the simulator's speed on a scenario scaled to a number of images.
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
    /// The CI performance gate: run scenarios and fail (exit 4) when a metric regressed
    /// against a committed baseline; `--update` writes the baseline.
    #[command(after_help = GATE_HELP)]
    Gate(GateArgs),
    /// Every policy field with each policy's value and what it does (the three presets unless
    /// named), or one policy as a complete TOML file to edit (--toml).
    #[command(after_help = crate::policies::POLICIES_HELP)]
    Policies(PoliciesArgs),
}

/// `policies`.
#[derive(Debug, Args)]
pub struct PoliciesArgs {
    /// Presets (seed-current, seed-proposed, tagstorm) or policy TOML files; all three presets
    /// when none is named.
    #[arg(value_name = "POLICY")]
    pub policies: Vec<String>,
    /// Print the one named policy as a complete policy file instead of the table.
    #[arg(long)]
    pub toml: bool,
}

/// Flags every command that reads scenarios takes.
#[derive(Debug, Args)]
pub struct ScenarioFlags {
    /// Override the scenario's seed.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Override any scenario or policy field by dotted path (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario files.
    #[arg(required = true, value_name = "SCENARIO")]
    pub scenarios: Vec<PathBuf>,
    /// A preset (seed-current, seed-proposed, tagstorm) or a policy TOML file.
    #[arg(long, value_name = "NAME|FILE.toml", default_value = "tagstorm")]
    pub policy: String,
    #[command(flatten)]
    pub flags: ScenarioFlags,
    /// Print each results object as one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write results.json, summary.md, .hgrm percentile files and .svg plots into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The scenario file.
    #[arg(value_name = "SCENARIO")]
    pub scenario: PathBuf,
    /// Policies to compare, comma-separated presets or policy TOML files.
    #[arg(
        long,
        value_name = "P1,P2,...",
        default_value = "seed-current,seed-proposed,tagstorm",
        value_delimiter = ','
    )]
    pub policies: Vec<String>,
    #[command(flatten)]
    pub flags: ScenarioFlags,
    /// Run every policy once per seed (1..=10, 1..=100:10 or 3,7,11) and print each metric's
    /// median and range, and in how many seeds each policy came out below the first one.
    #[arg(
        long,
        value_name = "SEEDS",
        value_parser = crate::seeds::Seeds::parse_arg,
        conflicts_with = "seed"
    )]
    pub seeds: Option<crate::seeds::Seeds>,
    /// Print each results object as one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write summary.md, .svg plots with one line per policy, and one folder of results per
    /// policy into DIR (with --seeds: summary.md, seeds.svg with a dot per seed and policy, and
    /// one folder per policy and seed).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The scenario file.
    #[arg(value_name = "SCENARIO")]
    pub scenario: PathBuf,
    /// The field to vary and its values: KEY is any --set path; VALUES a comma list (5,10,20,
    /// 0.5,1.5, or any TOML values) or an integer range START..=END:STEP (STEP defaults to 1);
    /// at most 200 values.
    #[arg(long, value_name = "KEY=VALUES", value_parser = crate::sweep::Vary::parse_arg)]
    pub vary: crate::sweep::Vary,
    /// A preset (seed-current, seed-proposed, tagstorm) or a policy TOML file.
    #[arg(long, value_name = "NAME|FILE.toml", default_value = "tagstorm")]
    pub policy: String,
    #[command(flatten)]
    pub flags: ScenarioFlags,
    /// Run every value once per seed (1..=10, 1..=100:10 or 3,7,11); each row shows the
    /// medians of its value's runs.
    #[arg(
        long,
        value_name = "SEEDS",
        value_parser = crate::seeds::Seeds::parse_arg,
        conflicts_with = "seed"
    )]
    pub seeds: Option<crate::seeds::Seeds>,
    /// Print one JSON line per value (with --seeds, per value and seed), {"vary": {"key",
    /// "value"}, "results": {...}}, instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write summary.md, sweep.svg (image-tagged p95, 429s and cost against the value) and one
    /// folder of results per value into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The scenario file. Varied: the users of its first upload group (uploads.0.users) or, if
    /// that group has poisson or daily arrivals, every group's arrivals by one load factor.
    #[arg(value_name = "SCENARIO")]
    pub scenario: PathBuf,
    /// Account tiers to plan, comma-separated, or `all` (every published tier of the scenario's
    /// model); default: the model's first two (1,2 for gpt-4o-mini).
    #[arg(long, value_name = "T1,T2,...|all", value_delimiter = ',')]
    pub tiers: Vec<String>,
    /// A preset (seed-current, seed-proposed, tagstorm) or a policy TOML file.
    #[arg(long, value_name = "NAME|FILE.toml", default_value = "tagstorm")]
    pub policy: String,
    /// The latency whose p95 must stay at or under --p95-limit-s.
    #[arg(long, value_enum, default_value = "upload-complete")]
    pub metric: crate::capacity::LatencyMetric,
    /// The p95 limit, in seconds (above 0, at most a year: 31,536,000).
    #[arg(long = "p95-limit-s", value_name = "SECS", default_value_t = 120.0,
          value_parser = parse_limit_s)]
    pub p95_limit_s: f64,
    /// The largest share of images a run may fail and still pass, in percent (0 to 100): a
    /// policy that drops images has not carried the load, however fast the rest were tagged.
    #[arg(long = "max-failed-pct", value_name = "PCT", default_value_t = 1.0,
          value_parser = parse_failed_pct)]
    pub max_failed_pct: f64,
    /// The most users the search tries per tier (1 to 100,000; default 10,000), for a scenario
    /// whose first upload group has users.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_users: Option<u64>,
    /// The largest load factor the search tries per tier (1 to 100,000), for a scenario with
    /// poisson or daily arrivals; default 64, halved until the scaled workload fits the
    /// simulator's 20,000,000 images. A larger one that does not fit is refused.
    #[arg(long, value_name = "F", value_parser = crate::capacity::parse_max_factor)]
    pub max_factor: Option<f64>,
    /// Print one JSON object (schema tagstorm.report.v1: every tier's capacity, the load that
    /// first failed, the sets that reproduce each with `run`, every run) instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Write one self-contained HTML page (FILE.html), the Markdown (FILE.md), the JSON object
    /// (FILE.json), or report.html, report.md and capacity.svg into DIR.
    #[arg(long, value_name = "FILE.html|FILE.md|FILE.json|DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ScenarioFlags,
}

/// `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Scenario files.
    #[arg(required = true, value_name = "SCENARIO")]
    pub scenarios: Vec<PathBuf>,
    #[command(flatten)]
    pub flags: ScenarioFlags,
}

/// `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The scenario to scale.
    #[arg(value_name = "SCENARIO", default_value = "scenarios/workday.toml")]
    pub scenario: PathBuf,
    /// Scale the scenario's uploads so the workload has about this many images (1 to
    /// 20,000,000): within 1% where its draws allow, else the closest of 40 draws, with a note
    /// on stderr (refused, exit 2, when even that is more than 50% off).
    #[arg(long, default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=crate::scenario::MAX_IMAGES))]
    pub images: u64,
    /// A preset or a policy TOML file.
    #[arg(long, value_name = "NAME|FILE.toml", default_value = "tagstorm")]
    pub policy: String,
    /// Run the scaled scenario this many times (1 to 100) and report the best and the median
    /// wall time (noise from other work only ever adds time, so the best is the steadiest).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Print the figures as one JSON object (`tagstorm.bench.v1`) on stdout, for a CI job to
    /// keep or compare.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flags: ScenarioFlags,
}

/// `gate`.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Scenario files.
    #[arg(required = true, value_name = "SCENARIO")]
    pub scenarios: Vec<PathBuf>,
    /// The baseline file (JSON, schema tagstorm.baseline.v1). Each entry records the seed and
    /// the --set overrides it was computed with; gating other ones is bad input (exit 2).
    #[arg(long, value_name = "FILE")]
    pub baseline: PathBuf,
    /// Write the baseline from this run instead of comparing with it (the whole file is
    /// replaced, every entry with this run's seed and --set overrides; nothing is written if an
    /// invariant failed).
    #[arg(long)]
    pub update: bool,
    /// Policies to gate, comma-separated presets or policy TOML files.
    #[arg(
        long,
        value_name = "P1,P2,...",
        default_value = "tagstorm",
        value_delimiter = ','
    )]
    pub policies: Vec<String>,
    /// How much worse than its baseline value a metric may get, in percent of that value
    /// (from 0, any increase regresses).
    #[arg(long, value_name = "PCT", default_value_t = 5.0, value_parser = parse_tolerance)]
    pub tolerance: f64,
    /// Also write the Markdown summary to FILE (e.g. a CI job's step summary).
    #[arg(long, value_name = "FILE.md")]
    pub summary: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ScenarioFlags,
}

fn parse_limit_s(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= crate::scenario::MAX_TIME_S => Ok(v),
        _ => Err(format!(
            "expected seconds above 0 and at most {} (a year), such as 120 or 1.5, got {s:?}",
            crate::report::thousands(crate::scenario::MAX_TIME_S as u64)
        )),
    }
}

fn parse_failed_pct(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        // `+ 0.0` turns -0 into 0, which prints without a sign.
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v + 0.0),
        _ => Err(format!(
            "expected a percentage from 0 to 100, such as 1 or 0.5, got {s:?}"
        )),
    }
}

fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "expected a percentage ≥ 0, such as 5 or 2.5, got {s:?}"
        )),
    }
}

/// How a command ended, when it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything held.
    Ok,
    /// A run finished with images pending or tag mismatches.
    InvariantFailed,
    /// `gate`: a metric regressed against the baseline.
    Regressed,
}

/// A command that could not run, or whose output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A scenario is unreadable or invalid.
    #[error("{0}")]
    Scenario(#[from] ScenarioError),
    /// A policy name or file is unusable.
    #[error("{0}")]
    Policy(String),
    /// Core or the model refused the configuration.
    #[error("{0}")]
    Setup(#[from] sim::SimError),
    /// A `gate` baseline is unreadable or malformed.
    #[error("{0}")]
    Baseline(#[from] crate::gate::BaselineError),
    /// Several inputs were invalid; each was reported on its own line first.
    #[error("{0}")]
    Invalid(String),
    /// Writing results failed.
    #[error("{path}: cannot write: {message}")]
    Output {
        /// The file or folder.
        path: String,
        /// Why.
        message: String,
    },
}

impl CliError {
    /// The documented exit code: 2 for bad input (a malformed baseline included), 3 for output
    /// that could not be written.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Output { .. } => 3,
            _ => 2,
        }
    }
}

impl Outcome {
    /// The documented exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::InvariantFailed => 1,
            Outcome::Regressed => 4,
        }
    }
}

/// Runs the parsed command line, writing to `out` (results) and `err` (progress, warnings).
pub fn execute(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<Outcome, CliError> {
    match &cli.command {
        Command::Run(a) => cmd_run(a, out, err),
        Command::Compare(a) => cmd_compare(a, out, err),
        Command::Sweep(a) => crate::sweep::cmd_sweep(a, out, err),
        Command::Report(a) => crate::capacity::cmd_report(a, out, err),
        Command::Validate(a) => cmd_validate(a, out, err),
        Command::Bench(a) => crate::bench::cmd_bench(a, out, err),
        Command::Gate(a) => crate::gate::cmd_gate(a, out, err),
        Command::Policies(a) => crate::policies::cmd_policies(a, out),
    }
}

/// The `--set` arguments, with `--seed` as the last one.
pub fn set_args(flags: &ScenarioFlags) -> Result<Vec<SetArg>, CliError> {
    let mut sets = flags
        .set
        .iter()
        .map(|s| SetArg::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(seed) = flags.seed {
        sets.push(SetArg::parse(&format!("seed={seed}"))?);
    }
    Ok(sets)
}

/// A preset by name, or a policy TOML file (which may `extends` a preset).
pub fn load_policy(spec: &str) -> Result<Policy, CliError> {
    if let Some(p) = Policy::preset(spec) {
        return Ok(p);
    }
    let path = Path::new(spec);
    if spec.ends_with(".toml") || path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Policy(format!(
                "{spec}: cannot read: {}",
                e.to_string().to_lowercase()
            ))
        })?;
        let mut policy = crate::scenario::policy_file(spec, &text)
            .map_err(|e| CliError::Policy(e.to_string()))?;
        // A file that names no policy is called after itself, not after the preset it extends,
        // so tables and results tell `tagstorm` and `cost-first.toml` apart.
        let named = text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("name"));
        if !named {
            if let Some(stem) = path.file_stem() {
                policy.name = stem.to_string_lossy().into_owned();
            }
        }
        // Results, folders and gate baselines are keyed by the name: a file named like a
        // preset would be taken for it (and gated against its baseline entry).
        if Policy::preset(&policy.name).is_some() {
            return Err(CliError::Policy(format!(
                "{spec}: this policy file is named `{}`, like the preset; rename the file or \
                 give it another `name = \"...\"`",
                policy.name
            )));
        }
        return Ok(policy);
    }
    Err(CliError::Policy(format!(
        "policy `{spec}`: not a preset ({}) or a .toml file",
        PRESETS.join(", ")
    )))
}

/// Comma-separated presets or policy files, at least one.
pub fn load_policies(specs: &[String]) -> Result<Vec<Policy>, CliError> {
    let bases = specs
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| load_policy(p.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if bases.is_empty() {
        return Err(CliError::Policy(
            "--policies: name at least one policy".into(),
        ));
    }
    Ok(bases)
}

/// A path as the user gave it, for messages.
pub fn display_path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn show_progress(err: &mut dyn Write) -> impl FnMut(&Progress) + '_ {
    let tty = std::io::stderr().is_terminal();
    move |p: &Progress| {
        if tty {
            let _ = write!(
                err,
                "\r  t = {:>10}  {} / {} images terminal  {} events ",
                report::fmt_ms(p.now_ms),
                report::thousands(p.terminal),
                report::thousands(p.total),
                report::thousands(p.events)
            );
        }
    }
}

fn clear_progress(err: &mut dyn Write) {
    if std::io::stderr().is_terminal() {
        let _ = write!(err, "\r{:80}\r", "");
    }
}

/// Runs one scenario under one policy (the scenario's overrides applied on top).
pub fn run_one(s: &Scenario, base: &Policy, err: &mut dyn Write) -> Result<RunOutput, CliError> {
    let policy = s.policy(base)?;
    let out = {
        let mut progress = show_progress(err);
        sim::run_with_progress(s, &policy, &mut progress)?
    };
    clear_progress(err);
    Ok(out)
}

/// Runs one scenario under several policies at once, one thread each (runs share nothing, so
/// each result is what a run of its own gives), with one progress line for all of them.
pub fn run_policies(
    s: &Scenario,
    bases: &[Policy],
    err: &mut dyn Write,
) -> Result<Vec<RunOutput>, CliError> {
    let policies = resolve_policies(s, bases)?;
    let jobs: Vec<_> = policies
        .into_iter()
        .map(|p| {
            let label = p.name.clone();
            (s, p, label)
        })
        .collect();
    run_jobs(&jobs, jobs.len(), err)
}

/// `bases` with the scenario's `policy.*` overrides applied, each validated. Their names head
/// the table's columns and name the `--out` folders, so different policies must keep different
/// names: a `--set policy.name=…` gives every policy the same one, and is refused here.
pub fn resolve_policies(s: &Scenario, bases: &[Policy]) -> Result<Vec<Policy>, CliError> {
    let policies = bases
        .iter()
        .map(|b| s.policy(b))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, p) in policies.iter().enumerate() {
        // The same policy listed twice is allowed (its folders get `-2`); two policies made
        // one name are not.
        if let Some(j) =
            (0..i).find(|&j| policies[j].name == p.name && bases[j].name != bases[i].name)
        {
            return Err(CliError::Invalid(format!(
                "{} and {} would both be named `{}`: a --set policy.name=… names every policy \
                 the same; give a policy its own name in a policy file (policies --toml NAME)",
                bases[j].name, bases[i].name, p.name
            )));
        }
    }
    Ok(policies)
}

/// Runs every job (a scenario, a validated policy and a label for the progress line) on at most
/// `threads` threads and returns the outputs in job order. Runs share nothing, so each result is
/// what a run of its own gives, whatever the thread count. When every job runs at once the
/// progress line shows each of them; otherwise it counts finished runs and shows the running
/// ones.
pub fn run_jobs(
    jobs: &[(&Scenario, Policy, String)],
    threads: usize,
    err: &mut dyn Write,
) -> Result<Vec<RunOutput>, CliError> {
    let tty = std::io::stderr().is_terminal();
    let threads = threads.clamp(1, jobs.len().max(1));
    let all_at_once = threads >= jobs.len();
    // Per job: None before it starts, Some((progress, done)) after.
    let latest = std::sync::Mutex::new(vec![None::<(Option<Progress>, bool)>; jobs.len()]);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let show = |all: &[Option<(Option<Progress>, bool)>]| {
        let line = if all_at_once {
            let parts = all.iter().zip(jobs).map(|(p, (_, _, label))| match p {
                Some((Some(p), _)) => format!(
                    "{label} {} / {}",
                    report::thousands(p.terminal),
                    report::thousands(p.total)
                ),
                _ => format!("{label} starting"),
            });
            format!(
                "images terminal: {}",
                parts.collect::<Vec<_>>().join("  |  ")
            )
        } else {
            let done = all.iter().filter(|p| matches!(p, Some((_, true)))).count();
            let running = all
                .iter()
                .zip(jobs)
                .filter_map(|(p, (_, _, label))| match p {
                    Some((Some(p), false)) => Some(format!(
                        "{label} {} / {}",
                        report::thousands(p.terminal),
                        report::thousands(p.total)
                    )),
                    Some((None, false)) => Some(format!("{label} starting")),
                    _ => None,
                });
            let running = running.collect::<Vec<_>>().join("  |  ");
            format!(
                "{done} / {} runs done  |  images terminal: {running}",
                jobs.len()
            )
        };
        let _ = write!(std::io::stderr(), "\r  {line} ");
    };
    let results: Vec<(usize, Result<RunOutput, sim::SimError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (latest, next, show) = (&latest, &next, &show);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((s, policy, _)) = jobs.get(i) else {
                            return mine;
                        };
                        let update = |p: Option<Progress>, done: bool| {
                            if !tty {
                                return;
                            }
                            let Ok(mut all) = latest.lock() else { return };
                            let entry = all[i].get_or_insert((None, false));
                            if p.is_some() {
                                entry.0 = p;
                            }
                            entry.1 = done;
                            show(&all);
                        };
                        update(None, false);
                        let mut progress = |p: &Progress| update(Some(*p), false);
                        let r = sim::run_with_progress(s, policy, &mut progress);
                        update(None, true);
                        mine.push((i, r));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(r) => r,
                // A panicking run is a bug; re-raise it rather than report half a table.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    clear_progress(err);
    // Every job index was taken by exactly one worker: sorting restores the job order.
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    results
        .into_iter()
        .map(|(_, r)| r.map_err(CliError::from))
        .collect()
}

/// Reports every failed invariant of `runs` on `err`.
pub fn check_invariants(runs: &[&Results], err: &mut dyn Write) -> Outcome {
    let mut outcome = Outcome::Ok;
    for r in runs {
        for why in r.invariant_failures() {
            let _ = writeln!(
                err,
                "invariant failed: {} under {}: {why}",
                r.scenario, r.policy
            );
            outcome = Outcome::InvariantFailed;
        }
    }
    outcome
}

fn cmd_run(a: &RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<Outcome, CliError> {
    let sets = set_args(&a.flags)?;
    let base = load_policy(&a.policy)?;
    // Every input is checked before anything runs, so bad input never produces output.
    let scenarios = a
        .scenarios
        .iter()
        .map(|p| Scenario::load(&display_path(p), &sets))
        .collect::<Result<Vec<_>, _>>()?;
    for s in &scenarios {
        s.policy(&base)?;
    }
    if let Some(dir) = &a.out {
        check_out(dir, true)?;
    }
    let mut runs = Vec::new();
    for s in &scenarios {
        runs.push(run_one(s, &base, err)?);
    }
    let mut files = Vec::new();
    let many = scenarios.len() > 1;
    let folders = folder_names(scenarios.iter().map(|s| s.spec.name.as_str()));
    let mut summary = String::new();
    for ((s, r), folder) in scenarios.iter().zip(&runs).zip(&folders) {
        if a.json {
            write_line(out, &json_line(&r.results))?;
        } else {
            write_line(out, &report::table(s, &[&r.results]))?;
        }
        summary.push_str(&report::markdown(s, &[&r.results]));
        summary.push('\n');
        if let Some(dir) = &a.out {
            let dir = if many { dir.join(folder) } else { dir.clone() };
            files.extend(run_files(&dir, r)?);
        }
    }
    if let Some(dir) = &a.out {
        files.push((dir.join("summary.md"), summary));
        write_all(&files)?;
    }
    let all: Vec<&Results> = runs.iter().map(|r| &r.results).collect();
    Ok(check_invariants(&all, err))
}

fn cmd_compare(
    a: &CompareArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    if let Some(seeds) = &a.seeds {
        return crate::seeds::cmd_compare_seeds(a, &seeds.0, out, err);
    }
    let sets = set_args(&a.flags)?;
    let bases = load_policies(&a.policies)?;
    let s = Scenario::load(&display_path(&a.scenario), &sets)?;
    resolve_policies(&s, &bases)?;
    if let Some(dir) = &a.out {
        check_out(dir, true)?;
    }
    let runs = run_policies(&s, &bases, err)?;
    let all: Vec<&Results> = runs.iter().map(|r| &r.results).collect();
    if a.json {
        for r in &all {
            write_line(out, &json_line(r))?;
        }
    } else {
        write_line(out, &report::table(&s, &all))?;
    }
    if let Some(dir) = &a.out {
        let mut files = Vec::new();
        let folders = folder_names(runs.iter().map(|r| r.results.policy.as_str()));
        for (r, folder) in runs.iter().zip(&folders) {
            files.extend(run_files(&dir.join(folder), r)?);
        }
        files.push((dir.join("summary.md"), report::markdown(&s, &all)));
        let refs: Vec<&RunOutput> = runs.iter().collect();
        files.extend(plot_files(dir, &refs));
        write_all(&files)?;
    }
    Ok(check_invariants(&all, err))
}

fn cmd_validate(
    a: &ValidateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let sets = set_args(&a.flags)?;
    // Every file is checked, so one run lists every bad file (each with its first problem);
    // a single file's error is the command's error as is.
    let mut bad = 0usize;
    for p in &a.scenarios {
        match validate_one(&display_path(p), &sets) {
            Ok(line) => write_line(out, &line)?,
            Err(e) if a.scenarios.len() == 1 => return Err(e),
            Err(e) => {
                bad += 1;
                let _ = writeln!(err, "{e}");
            }
        }
    }
    if bad > 0 {
        return Err(CliError::Invalid(format!(
            "{bad} of {} {} invalid",
            report::count(a.scenarios.len() as u64, "scenario"),
            if bad == 1 { "is" } else { "are" }
        )));
    }
    Ok(Outcome::Ok)
}

/// Loads one scenario, checks it under every preset and generates its workload: the line
/// `validate` prints for it.
fn validate_one(path: &str, sets: &[SetArg]) -> Result<String, CliError> {
    let s = Scenario::load(path, sets)?;
    for name in PRESETS {
        if let Some(base) = Policy::preset(name) {
            s.policy(&base)?;
        }
    }
    let images = crate::workload::generate(&s.spec);
    let total: u64 = images.iter().map(|a| u64::from(a.images)).sum();
    Ok(format!(
        "{}: ok ({}, {}, {})",
        s.file,
        s.spec.name,
        report::count(images.len() as u64, "upload"),
        report::count(total, "image")
    ))
}

/// One folder name per scenario or policy name: a single path component inside `--out` (no
/// separator, no leading dot, so `../x` or `/etc` stays inside), and distinct (a repeated
/// name gets `-2`, `-3`, … instead of overwriting the first).
pub fn folder_names<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        // Anything else becomes one `-` per run, so a TOML value such as
        // `{ kind = "pareto", min = 5 }` reads `kind-pareto-min-5`.
        let mut clean = String::with_capacity(name.len());
        for c in name.chars() {
            if c.is_alphanumeric() || matches!(c, '_' | '.') || (c == '-' && !clean.ends_with('-'))
            {
                clean.push(c);
            } else if !clean.ends_with('-') {
                clean.push('-');
            }
        }
        let clean = match clean.trim_start_matches(['.', '-']).trim_end_matches('-') {
            "" => "_".to_owned(),
            c => c.to_owned(),
        };
        let mut pick = clean.clone();
        let mut n = 1;
        while out.contains(&pick) {
            n += 1;
            pick = format!("{clean}-{n}");
        }
        out.push(pick);
    }
    out
}

/// One results object as one line of JSON.
pub fn json_line(r: &Results) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// Writes `s` and a newline to `out` (stdout).
pub fn write_line(out: &mut dyn Write, s: &str) -> Result<(), CliError> {
    writeln!(out, "{}", s.trim_end()).map_err(stdout_error)
}

/// A failed write to stdout, as an output error (exit 3).
pub fn stdout_error(e: std::io::Error) -> CliError {
    CliError::Output {
        path: "stdout".into(),
        message: e.to_string(),
    }
}

/// Stdout for the binary: once its reader has gone (`… | head`), further writes are dropped
/// instead of failing, so the command still writes its `--out` files and `--summary`, says on
/// stderr what went wrong, and exits with the code its outcome calls for, as if the rest had
/// been read. Any other write error is returned as is.
#[derive(Debug)]
pub struct Stdout<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> Stdout<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Stdout<W> {
        Stdout {
            inner,
            closed: false,
        }
    }
}

impl<W: Write> Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// The files one run writes into `dir`.
pub fn run_files(dir: &Path, r: &RunOutput) -> Result<Vec<(PathBuf, String)>, CliError> {
    let json = serde_json::to_string_pretty(&r.results).map_err(|e| CliError::Output {
        path: display_path(&dir.join("results.json")),
        message: e.to_string(),
    })?;
    let mut files = vec![
        (dir.join("results.json"), json + "\n"),
        (dir.join("image_tagged.hgrm"), hgrm(&r.image_tagged)),
        (dir.join("upload_first_tag.hgrm"), hgrm(&r.upload_first_tag)),
        (dir.join("upload_complete.hgrm"), hgrm(&r.upload_complete)),
    ];
    files.extend(plot_files(dir, &[r]));
    Ok(files)
}

/// Picks one latency histogram out of a run.
type Metric = fn(&RunOutput) -> &Histogram<u64>;

/// One SVG percentile plot per latency metric, one line per run.
fn plot_files(dir: &Path, runs: &[&RunOutput]) -> Vec<(PathBuf, String)> {
    let metrics: [(&str, &str, Metric); 3] = [
        ("upload_first_tag", "upload start → first tag", |r| {
            &r.upload_first_tag
        }),
        (
            "upload_complete",
            "upload start → every image done",
            |r| &r.upload_complete,
        ),
        ("image_tagged", "upload start → image tagged", |r| {
            &r.image_tagged
        }),
    ];
    metrics
        .into_iter()
        .map(|(file, title, pick)| {
            // A policy that drops images looks fast on a latency plot: say so in its label.
            let labels: Vec<String> = runs
                .iter()
                .map(|r| match r.results.images.failed {
                    0 => r.results.policy.clone(),
                    n => format!(
                        "{} ({} images failed)",
                        r.results.policy,
                        report::thousands(n)
                    ),
                })
                .collect();
            let series: Vec<(&str, &Histogram<u64>)> = labels
                .iter()
                .zip(runs)
                .map(|(label, r)| (label.as_str(), pick(r)))
                .collect();
            let scenario = runs.first().map_or("", |r| r.results.scenario.as_str());
            let svg = crate::plot::percentile_svg(&format!("{scenario}: {title}"), &series);
            (dir.join(format!("{file}.svg")), svg)
        })
        .collect()
}

/// Checks, before anything runs, that `path` can take what a command writes there: a folder
/// (`folder`) or a file, where nothing of the other kind is in the way (a file at `--out DIR`,
/// or a file among the folders above it). A long run then never ends with "cannot write".
pub fn check_out(path: &Path, folder: bool) -> Result<(), CliError> {
    let fail = |p: &Path, message: &str| {
        Err(CliError::Output {
            path: display_path(p),
            message: message.to_owned(),
        })
    };
    if !folder {
        let (target, special) = write_target(path);
        if special {
            // A device or a pipe is written in place (`write_all`); opening a pipe to probe it
            // would block until its reader comes, and closing it would end the reader's input.
            return Ok(());
        }
        if target != path {
            return check_out(&target, false);
        }
    }
    if let Ok(m) = std::fs::metadata(path) {
        match (folder, m.is_dir()) {
            (true, false) => return fail(path, "it is a file, not a folder"),
            (false, true) => return fail(path, "it is a folder, not a file"),
            _ => {}
        }
    }
    // What does not exist yet is created inside the nearest folder that does: it must be a
    // folder, and one this process can write in. Probing with a file of our own now saves a
    // run whose results could not be kept.
    let nearest = path
        .ancestors()
        .skip(usize::from(!(folder && path.is_dir())))
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| std::fs::metadata(a).is_ok());
    match nearest {
        Some(a) if !a.is_dir() => fail(a, "it is a file, not a folder"),
        Some(a) => {
            let probe = a.join(format!(".tagstorm-probe-{}", std::process::id()));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
            {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    Ok(())
                }
                // One left behind by a process of the same id: files can be made here.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                // Named by the path asked for: the folder is only where the probe failed.
                Err(e) => fail(
                    path,
                    &format!(
                        "nothing can be created in {}: {}",
                        display_path(a),
                        e.to_string().to_lowercase()
                    ),
                ),
            }
        }
        None => Ok(()),
    }
}

/// Whether two output paths name the same file, whether or not it exists yet: the same
/// folder (after resolving `.`, `..` and links) and the same name.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let key = |p: &Path| {
        // Through a symlink, to the file a write would land in.
        let abs = std::path::absolute(write_target(p).0).ok()?;
        let name = abs.file_name()?.to_owned();
        let dir = abs.parent()?;
        Some(
            dir.canonicalize()
                .unwrap_or_else(|_| dir.to_path_buf())
                .join(name),
        )
    };
    matches!((key(a), key(b)), (Some(x), Some(y)) if x == y)
}

/// Where a write to `path` lands: through a symlink to its target (the link stays a link),
/// and whether that is a special file (a device such as `/dev/stdout`, a pipe), which can only
/// be written in place: renaming over it would replace the device with a plain file.
fn write_target(path: &Path) -> (PathBuf, bool) {
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).unwrap_or_else(|_| {
            // A link to a file not made yet: the file it names, beside the link if relative.
            match std::fs::read_link(path) {
                Ok(to) => path.parent().map_or(to.clone(), |dir| dir.join(&to)),
                Err(_) => path.to_path_buf(),
            }
        }),
        _ => path.to_path_buf(),
    };
    let special = std::fs::metadata(&target).is_ok_and(|m| !m.is_file() && !m.is_dir());
    (target, special)
}

/// Writes every file or none: each goes to a temporary file first, and only when all of them
/// are written are they renamed into place. On failure the temporary files and any folder this
/// call created are removed, so a failed `--out` leaves no partial results behind. A symlink is
/// written through to its target; a device or a pipe is written in place, first.
pub fn write_all(files: &[(PathBuf, String)]) -> Result<(), CliError> {
    let fail = |p: &Path, e: std::io::Error| CliError::Output {
        path: display_path(p),
        message: e.to_string().to_lowercase(),
    };
    let targets: Vec<(PathBuf, bool)> = files.iter().map(|(p, _)| write_target(p)).collect();
    // Two outputs to one file would share a temporary file, and one would silently replace
    // the other; the commands refuse such arguments before running, this is the backstop.
    for (i, (a, _)) in targets.iter().enumerate() {
        if targets[..i].iter().any(|(b, _)| same_file(a, b)) {
            return Err(CliError::Invalid(format!(
                "{}: two outputs would be written to this one file",
                display_path(&files[i].0)
            )));
        }
    }
    let mut created: Vec<PathBuf> = Vec::new();
    // (temporary file, the target it replaces, the path as asked for)
    let mut tmps: Vec<(PathBuf, &Path, &Path)> = Vec::new();
    let undo = |tmps: &[(PathBuf, &Path, &Path)], created: &[PathBuf]| {
        for (tmp, _, _) in tmps {
            let _ = std::fs::remove_file(tmp);
        }
        for dir in created.iter().rev() {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    for ((asked, text), (path, special)) in files.iter().zip(&targets) {
        if *special {
            continue;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The outermost folder that does not exist yet is the one to remove on failure.
            let new_top = dir
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                .last();
            if let Err(e) = std::fs::create_dir_all(dir) {
                undo(&tmps, &created);
                return Err(fail(dir, e));
            }
            if let Some(top) = new_top {
                created.push(top.to_path_buf());
            }
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = std::fs::write(&tmp, text);
        tmps.push((tmp.clone(), path, asked));
        if let Err(e) = written {
            undo(&tmps, &created);
            // The error names the file the user asked for, not the temporary one.
            return Err(fail(asked, e));
        }
    }
    // A folder in a file's place would fail its rename after the files before it were renamed
    // into place: look before renaming any.
    if let Some((_, _, asked)) = tmps.iter().find(|(_, p, _)| p.is_dir()) {
        undo(&tmps, &created);
        return Err(CliError::Output {
            path: display_path(asked),
            message: "it is a folder, not a file".to_owned(),
        });
    }
    // Devices and pipes first: they are what can still fail (`/dev/full`).
    for ((asked, text), (path, special)) in files.iter().zip(&targets) {
        if *special {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = written {
                undo(&tmps, &created);
                return Err(fail(asked, e));
            }
        }
    }
    for (i, (tmp, path, asked)) in tmps.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            undo(&tmps[i..], &[]);
            return Err(fail(asked, e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two outputs to one file (by any spelling of its path) are refused before anything is
    /// written; the error names the file.
    #[test]
    fn write_all_refuses_two_outputs_to_one_file() {
        let dir = std::env::temp_dir().join(format!("tagstorm-sim-twice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let files = vec![
            (dir.join("a.md"), "one".to_owned()),
            (dir.join("sub/../a.md"), "two".to_owned()),
        ];
        let e = write_all(&files).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("two outputs"), "{e}");
        assert!(!dir.join("a.md").exists());
        assert!(same_file(&dir.join("a.md"), &dir.join("./a.md")));
        assert!(!same_file(&dir.join("a.md"), &dir.join("b.md")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A path that cannot be created is named as given, with the folder where it failed.
    #[cfg(target_os = "linux")]
    #[test]
    fn check_out_names_the_path_asked_for() {
        let e = check_out(Path::new("/proc/tagstorm-x"), true).unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("/proc/tagstorm-x: cannot write: nothing can be created in /proc"),
            "{m}"
        );
    }

    /// A symlink is written through (it stays a link; its target gets the text), a pipe and a
    /// device are written in place, and a device that refuses the bytes fails with exit 3.
    /// The rename used to replace each of them with a plain file (`--summary /dev/full` turned
    /// the device into a file and exited 0).
    #[test]
    fn write_all_writes_through_links_pipes_and_devices() {
        use std::os::unix::fs::FileTypeExt as _;
        let dir = std::env::temp_dir().join(format!("tagstorm-sim-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("target.md"), "old").unwrap();
        std::os::unix::fs::symlink("target.md", dir.join("link.md")).unwrap();
        std::os::unix::fs::symlink("later.md", dir.join("dangling.md")).unwrap();
        write_all(&[
            (dir.join("link.md"), "new".to_owned()),
            (dir.join("dangling.md"), "made".to_owned()),
        ])
        .unwrap();
        for link in ["link.md", "dangling.md"] {
            let m = std::fs::symlink_metadata(dir.join(link)).unwrap();
            assert!(m.file_type().is_symlink(), "{link} was replaced");
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("target.md")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("later.md")).unwrap(),
            "made"
        );
        // The link and its target are one file.
        assert!(same_file(&dir.join("link.md"), &dir.join("target.md")));
        check_out(&dir.join("link.md"), false).unwrap();

        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let reader = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
            };
            check_out(&fifo, false).unwrap();
            write_all(&[(fifo.clone(), "through the pipe".to_owned())]).unwrap();
            assert_eq!(reader.join().unwrap(), "through the pipe");
            assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        }

        let null = Path::new("/dev/null");
        if std::fs::metadata(null).is_ok_and(|m| m.file_type().is_char_device()) {
            write_all(&[(null.to_path_buf(), "gone".to_owned())]).unwrap();
            assert!(
                std::fs::metadata(null)
                    .unwrap()
                    .file_type()
                    .is_char_device()
            );
        }
        let full = Path::new("/dev/full");
        if std::fs::metadata(full).is_ok_and(|m| m.file_type().is_char_device()) {
            let e = write_all(&[(full.to_path_buf(), "x".to_owned())]).unwrap_err();
            assert_eq!(e.exit_code(), 3);
            assert!(
                e.to_string().starts_with("/dev/full: cannot write: "),
                "{e}"
            );
            assert!(
                std::fs::metadata(full)
                    .unwrap()
                    .file_type()
                    .is_char_device()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_all_writes_nothing_when_one_file_fails() {
        let dir = std::env::temp_dir().join(format!("tagstorm-sim-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the second folder should be: the second write fails.
        std::fs::write(dir.join("blocked"), "").unwrap();
        let files = vec![
            (dir.join("a/results.json"), "{}".to_owned()),
            (dir.join("blocked/results.json"), "{}".to_owned()),
        ];
        let e = write_all(&files).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["blocked"], "a failed --out left partial output");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_folder_in_a_files_place_fails_before_any_file_is_renamed_into_place() {
        let dir = std::env::temp_dir().join(format!("tagstorm-sim-dirfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // summary.md is a folder: `run --out` wrote every other file, then exited 3.
        std::fs::create_dir_all(dir.join("summary.md")).unwrap();
        let files = vec![
            (dir.join("results.json"), "{}".to_owned()),
            (dir.join("summary.md"), "# x".to_owned()),
        ];
        let e = write_all(&files).unwrap_err();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(e.exit_code(), 3);
        assert!(
            e.to_string()
                .contains("summary.md: cannot write: it is a folder"),
            "{e}"
        );
        assert_eq!(left, ["summary.md"], "a failed --out left partial output");
    }

    #[test]
    fn a_failed_write_names_the_file_not_its_temporary_name() {
        let dir = std::env::temp_dir().join(format!("tagstorm-sim-tmpname-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A folder where the temporary file would go: writing it fails (even as root).
        let tmp = dir.join(format!("results.json.tmp{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let e = write_all(&[(dir.join("results.json"), "{}".to_owned())]).unwrap_err();
        let message = e.to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(e.exit_code(), 3);
        let expected = format!("{}: cannot write: ", dir.join("results.json").display());
        assert!(message.starts_with(&expected), "{message}");
    }

    #[test]
    fn folder_names_are_single_distinct_components() {
        let got = folder_names(["a/b", "..", "", "x", "x", "x-2", "/etc", "ünï"].into_iter());
        assert_eq!(got, ["a-b", "_", "_-2", "x", "x-2", "x-2-2", "etc", "ünï"]);
        let got = folder_names(
            [
                "images={ kind = \"pareto\", min = 5, alpha = 1.2, max = 50 }",
                "a--b",
            ]
            .into_iter(),
        );
        assert_eq!(got, ["images-kind-pareto-min-5-alpha-1.2-max-50", "a-b"]);
    }
}
