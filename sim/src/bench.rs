//! `tagstorm-sim bench`: wall time, events per second and peak memory of one scaled run.
//!
//! The only place in the crate that reads a clock. Its figures go to the terminal and to
//! `BENCHMARKS.md`, never into a results object, so results stay byte-identical across runs.

use std::io::Write;
use std::time::Instant;

use crate::cli::{BenchArgs, CliError, Outcome, load_policy, set_args};
use crate::report::{fmt_ms, thousands};
use crate::scenario::Scenario;
use crate::sim;
use crate::workload;

/// Peak resident set size of this process in KiB (`VmHWM`), where the OS reports it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the bench and prints its figures.
pub fn cmd_bench(
    a: &BenchArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let sets = set_args(&a.flags)?;
    let base = load_policy(&a.policy)?;
    let mut s = Scenario::load(&a.scenario.to_string_lossy(), &sets)?;
    let policy = s.policy(&base)?;
    let images = |s: &Scenario| -> u64 {
        workload::generate(&s.spec)
            .iter()
            .map(|u| u64::from(u.images))
            .sum()
    };
    // Heavy-tailed sizes make the image count of a scaled workload itself random: rescale a
    // few times until it lands within 1% of the target.
    for _ in 0..6 {
        let now = images(&s).max(1);
        let ratio = a.images as f64 / now as f64;
        if (ratio - 1.0).abs() < 0.01 {
            break;
        }
        workload::scale(&mut s.spec, ratio);
    }
    #[allow(clippy::disallowed_methods)] // a benchmark measures wall time; nothing else does
    let start = Instant::now();
    let run = sim::run(&s, &policy)?;
    let wall = start.elapsed();
    let r = &run.results;
    let eps = r.sim.events as f64 / wall.as_secs_f64().max(1e-9);
    let ips = r.images.total as f64 / wall.as_secs_f64().max(1e-9);
    let rss = peak_rss_kib().map_or("unknown".to_owned(), |k| {
        format!("{:.1} MiB", k as f64 / 1024.0)
    });
    let report = format!(
        "bench     {} scaled to {} images in {} uploads, policy {}\n\
         wall      {:.3} s\n\
         events    {} ({:.2} M events/s)\n\
         images/s  {:.2} M\n\
         peak RSS  {rss}\n\
         virtual   {} simulated; makespan {}; tagged {} (realtime {}, batch {}); failed {}; pending {}",
        s.spec.name,
        thousands(r.images.total),
        thousands(r.uploads.total),
        r.policy,
        wall.as_secs_f64(),
        thousands(r.sim.events),
        eps / 1e6,
        ips / 1e6,
        fmt_ms(r.sim.end_ms),
        fmt_ms(r.makespan_ms),
        thousands(r.images.tagged),
        thousands(r.images.tagged_realtime),
        thousands(r.images.tagged_batch),
        thousands(r.images.failed),
        thousands(r.images.pending),
    );
    writeln!(out, "{report}").map_err(|e| CliError::Output {
        path: "stdout".into(),
        message: e.to_string(),
    })?;
    let _ = err;
    Ok(if r.invariants_ok() {
        Outcome::Ok
    } else {
        Outcome::InvariantFailed
    })
}
