//! `tagstorm-sim bench`: wall time, events per second and peak memory of one scaled run.
//!
//! The only place in the crate that reads a clock. Its figures go to the terminal (or, with
//! `--json`, a `tagstorm.bench.v1` object) and to `BENCHMARKS.md`, never into a results object,
//! so results stay byte-identical across runs.

use std::io::Write;
use std::time::Instant;

use crate::cli::{BenchArgs, CliError, Outcome, load_policy, set_args};
use crate::report::{self, fmt_ms, thousands};
use crate::scenario::Scenario;
use crate::sim;
use crate::workload;

/// Rescaling attempts before `bench` settles for the closest workload drawn.
const SCALE_TRIES: usize = 40;

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
    // Heavy-tailed sizes make the image count of a scaled workload itself random: rescale
    // until it lands within 1% of the target, and keep the closest one drawn. A small target
    // with few, heavy-tailed uploads may not get there: the run goes ahead and says so.
    let target = a.images as f64;
    // No images is never the closest: there would be nothing to time.
    let off = |n: u64| {
        if n == 0 {
            f64::INFINITY
        } else {
            (n as f64 - target).abs() / target
        }
    };
    let mut closest = (0, s.spec.clone());
    for i in 0..SCALE_TRIES {
        let now = images(&s);
        if off(now) < off(closest.0) {
            closest = (now, s.spec.clone());
        }
        if off(now) < 0.01 || i + 1 == SCALE_TRIES {
            break;
        }
        // Each rescale redraws every upload, so the count jumps around the target: the first
        // steps go all the way, later ones part of the way, which samples counts near it.
        let step = target / now.max(1) as f64;
        workload::scale(&mut s.spec, if i < 3 { step } else { step.powf(0.5) });
    }
    let (scaled, spec) = closest;
    s.spec = spec;
    if off(scaled) > 0.5 {
        return Err(CliError::Invalid(format!(
            "bench: {} cannot be scaled to about {}: the closest of {SCALE_TRIES} \
             draws had {} (uploads come whole, and their sizes vary); ask for more images",
            s.spec.name,
            report::count(a.images, "image"),
            thousands(scaled)
        )));
    }
    if off(scaled) >= 0.01 {
        let _ = writeln!(
            err,
            "bench: the closest scaled workload has {} images, {:.0}% from --images {} (uploads \
             come whole, and their sizes vary; a larger --images lands closer)",
            thousands(scaled),
            off(scaled) * 100.0,
            thousands(a.images)
        );
    }
    let mut walls = Vec::with_capacity(a.runs as usize);
    let mut loops = Vec::with_capacity(a.runs as usize);
    let mut last = None;
    for _ in 0..a.runs {
        // The whole run (what a user waits for) and, inside it, the event loop alone (what
        // events per second are counted over: the peers in BENCHMARKS.md time only their
        // loops, not drawing their workload or summing their results).
        #[allow(clippy::disallowed_methods)] // a benchmark measures wall time; nothing else does
        let start = Instant::now();
        let mut prepared = sim::prepare(&s, &policy)?;
        #[allow(clippy::disallowed_methods)]
        let loop_start = Instant::now();
        prepared.run_events();
        loops.push(loop_start.elapsed().as_secs_f64());
        let run = prepared.finish();
        walls.push(start.elapsed().as_secs_f64());
        last = Some(run);
    }
    let Some(run) = last else {
        return Ok(Outcome::Ok);
    };
    let r = &run.results;
    walls.sort_by(f64::total_cmp);
    loops.sort_by(f64::total_cmp);
    let (best, median) = (walls[0], walls[walls.len() / 2]);
    let (loop_best, loop_median) = (loops[0], loops[loops.len() / 2]);
    // Per second of the best run; a run too short to time counts as a nanosecond.
    let per_s = |n: u64| n as f64 / best.max(1e-9);
    let eps = per_s(r.sim.events);
    let loop_eps = r.sim.events as f64 / loop_best.max(1e-9);
    let rss_kib = peak_rss_kib();
    let report = if a.json {
        serde_json::json!({
            "schema": "tagstorm.bench.v1",
            "scenario": s.spec.name,
            "policy": r.policy,
            "images": r.images.total,
            "uploads": r.uploads.total,
            "events": r.sim.events,
            "runs": walls.len(),
            "wall_s": { "best": best, "median": median, "all_sorted": walls },
            "loop_s": { "best": loop_best, "median": loop_median, "all_sorted": loops },
            "events_per_s": eps,
            "loop_events_per_s": loop_eps,
            "images_per_s": per_s(r.images.total),
            "peak_rss_mib": rss_kib.map(|k| k as f64 / 1024.0),
            "images_pending": r.images.pending,
        })
        .to_string()
    } else {
        let rss = rss_kib.map_or("unknown".to_owned(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        });
        let wall = if walls.len() > 1 {
            format!(
                "{best:.3} s best of {}, median {median:.3} s; event loop {loop_best:.3} s best, median {loop_median:.3} s",
                walls.len()
            )
        } else {
            format!("{best:.3} s; event loop {loop_best:.3} s")
        };
        format!(
            "bench     {} scaled to {} in {}, policy {}\n\
             wall      {wall}\n\
             events    {} ({:.2} M events/s in the event loop, {:.2} M over the whole run)\n\
             images/s  {:.2} M\n\
             peak RSS  {rss}\n\
             virtual   {} simulated; makespan {}; tagged {} (realtime {}, batch {}); failed {}; pending {}",
            s.spec.name,
            report::count(r.images.total, "image"),
            report::count(r.uploads.total, "upload"),
            r.policy,
            thousands(r.sim.events),
            loop_eps / 1e6,
            eps / 1e6,
            per_s(r.images.total) / 1e6,
            fmt_ms(r.sim.end_ms),
            fmt_ms(r.makespan_ms),
            thousands(r.images.tagged),
            thousands(r.images.tagged_realtime),
            thousands(r.images.tagged_batch),
            thousands(r.images.failed),
            thousands(r.images.pending),
        )
    };
    writeln!(out, "{report}").map_err(crate::cli::stdout_error)?;
    // Exit 1 says why on stderr, as every other command's does.
    Ok(crate::cli::check_invariants(&[r], err))
}
