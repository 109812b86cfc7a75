//! Human output: the side-by-side table `run` and `compare` print, its Markdown twin for
//! `summary.md`, a compact one-line summary per run for snapshot tests, and the formatting
//! helpers (durations, thousands, dollars) every table shares.

use std::fmt::Write as _;

use crate::results::{AccountSummary, Results};
use crate::scenario::Scenario;

/// `ms` in the unit a person reads fastest: `850 ms`, `3.2 s`, `4m 05s`, `2h 05m`, `1d 02h`.
///
/// Seconds are rounded to one decimal; minutes, hours and days are truncated, so they never read
/// `60m`, `24h`. From 59,950 ms the seconds would round to `60.0 s`: those read as the minute
/// they round to, `1m 00s`, as every longer duration does.
pub fn fmt_ms(ms: u64) -> String {
    let ms = if (59_950..60_000).contains(&ms) {
        60_000
    } else {
        ms
    };
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_949 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m {:02}s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(v: u64) -> String {
    let d = v.to_string();
    let mut out = String::with_capacity(d.len() + d.len() / 3);
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// US dollars with four decimals below $100 (a run costs cents), two from there: `$0.0651`.
pub fn usd(v: f64) -> String {
    if v >= 100.0 {
        format!("${v:.2}")
    } else {
        format!("${v:.4}")
    }
}

/// A latency percentile `v` (ms) of a distribution with `count` samples; `–` when it has none.
pub fn latency(count: u64, v: u64) -> String {
    if count == 0 { "–".into() } else { fmt_ms(v) }
}

/// The metric rows: (label, one cell per run).
fn rows(runs: &[&Results]) -> Vec<(&'static str, Vec<String>)> {
    let col = |f: &dyn Fn(&Results) -> String| runs.iter().map(|r| f(r)).collect::<Vec<_>>();
    let l = |r: &Results| r.latency_ms.clone();
    vec![
        (
            "first tag, p50 (per upload)",
            col(&|r| latency(l(r).upload_first_tag.count, l(r).upload_first_tag.p50)),
        ),
        (
            "first tag, p95",
            col(&|r| latency(l(r).upload_first_tag.count, l(r).upload_first_tag.p95)),
        ),
        (
            "upload complete, p50",
            col(&|r| latency(l(r).upload_complete.count, l(r).upload_complete.p50)),
        ),
        (
            "upload complete, p95",
            col(&|r| latency(l(r).upload_complete.count, l(r).upload_complete.p95)),
        ),
        (
            "image tagged, p95 (per image)",
            col(&|r| latency(l(r).image_tagged.count, l(r).image_tagged.p95)),
        ),
        ("makespan", col(&|r| fmt_ms(r.makespan_ms))),
        (
            "makespan / bound (1.00 = ideal)",
            col(&|r| {
                if r.bound_ms == 0 {
                    "–".into()
                } else {
                    format!("{:.2}", r.bound_ratio)
                }
            }),
        ),
        (
            "429 responses",
            col(&|r| thousands(r.upstream.rate_limited)),
        ),
        (
            "5xx / timeouts",
            col(&|r| {
                format!(
                    "{} / {}",
                    thousands(r.upstream.server_errors),
                    thousands(r.upstream.timeouts)
                )
            }),
        ),
        ("retries", col(&|r| thousands(r.upstream.retries))),
        (
            "batches created (failed, expired)",
            col(&|r| {
                format!(
                    "{} ({}, {})",
                    r.upstream.batches_created,
                    r.upstream.batches_failed,
                    r.upstream.batches_expired
                )
            }),
        ),
        (
            "tagged: realtime / batch",
            col(&|r| {
                format!(
                    "{} / {}",
                    thousands(r.images.tagged_realtime),
                    thousands(r.images.tagged_batch)
                )
            }),
        ),
        (
            "failed (reasons below)",
            col(&|r| thousands(r.images.failed)),
        ),
        ("pending (must be 0)", col(&|r| thousands(r.images.pending))),
        ("cost", col(&|r| usd(r.cost_usd))),
    ]
}

/// An account's limits in one line: `gpt-4o-mini tier 1: 500 RPM, 200,000 TPM, 10,000 RPD, batch
/// queue 2,000,000 tokens`.
pub fn account(a: &AccountSummary) -> String {
    let tier = a.tier.map_or(String::new(), |t| format!(" tier {t}"));
    format!("{}{tier}: {}", a.model, limits(a))
}

/// An account's limits without its model and tier: `500 RPM, 200,000 TPM, 10,000 RPD, batch
/// queue 2,000,000 tokens`.
pub fn limits(a: &AccountSummary) -> String {
    let rpd = a
        .rpd
        .map_or(String::new(), |v| format!(", {} RPD", thousands(v)));
    format!(
        "{} RPM, {} TPM{rpd}, batch queue {} tokens",
        thousands(a.rpm),
        thousands(a.tpm),
        thousands(a.batch_queue_tokens)
    )
}

/// `s` as one POSIX shell word: as is when it is plain, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-=,:/+@%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn header(s: &Scenario, first: &Results) -> String {
    let spec = &s.spec;
    let a = &first.account;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario  {} (seed {}, {})",
        spec.name, spec.seed, s.file
    );
    if !spec.description.trim().is_empty() {
        let _ = writeln!(out, "          {}", spec.description.trim());
    }
    // The description is the file's; what --set changed since is said here, ready to paste.
    if !first.sets.is_empty() {
        let sets: Vec<String> = first
            .sets
            .iter()
            .map(|a| format!("--set {}", shell_word(a)))
            .collect();
        let _ = writeln!(out, "sets      {}", sets.join(" "));
    }
    let _ = writeln!(out, "account   {}", account(a));
    let _ = writeln!(
        out,
        "workload  {} in {}",
        count(first.images.total, "image"),
        count(first.uploads.total, "upload"),
    );
    out
}

/// The side-by-side table, one column per run of the same scenario, with a short guide.
pub fn table(s: &Scenario, runs: &[&Results]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut out = header(s, first);
    out.push('\n');
    let rows = rows(runs);
    let label_w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..runs.len())
        .map(|i| {
            rows.iter()
                .map(|(_, c)| c[i].chars().count())
                .chain([runs[i].policy.chars().count()])
                .max()
                .unwrap_or(0)
                .max(10)
        })
        .collect();
    let _ = write!(out, "{:label_w$}", "");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(out, "   {:>w$}", r.policy, w = widths[i]);
    }
    out.push('\n');
    for (label, cells) in &rows {
        let _ = write!(out, "{label:label_w$}");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            let _ = write!(out, "   {}{c}", " ".repeat(pad));
        }
        out.push('\n');
    }
    out.push('\n');
    for r in runs {
        if !r.images.failures.is_empty() {
            let why: Vec<String> = r
                .images
                .failures
                .iter()
                .map(|(k, v)| format!("{} {k}", thousands(*v)))
                .collect();
            let _ = writeln!(out, "failed under {}: {}", r.policy, why.join(", "));
        }
    }
    if first.bound_ms == 0 {
        // The simulator's bound_ms of 0 means there is none, not a makespan of 0 ms.
        let _ = writeln!(
            out,
            "{}",
            if first.images.total == 0 {
                "bound: none: the workload has no images."
            } else {
                "bound: none: each request is charged more tokens than the account's TPM holds, so \
                 none\ncan go realtime. Batch traffic is not under RPM/TPM."
            }
        );
    } else {
        let _ = writeln!(
            out,
            "bound = {}: the shortest makespan the account's RPM/TPM allow for this work (every image",
            fmt_ms(first.bound_ms)
        );
        let _ = writeln!(
            out,
            "admitted as early as full-then-refilling buckets permit, plus the fastest request). Batch"
        );
        let _ = writeln!(
            out,
            "traffic is not under RPM/TPM, so a policy that batches can come in under 1.00."
        );
    }
    let _ = writeln!(
        out,
        "Lower is better in every row, but read latencies with \"failed\": a policy that drops images"
    );
    let _ = writeln!(
        out,
        "finishes early. Latencies run from the upload's start; \"first tag\" is when its user first"
    );
    let _ = writeln!(
        out,
        "sees a result, \"complete\" when every image is tagged or failed. Pending must be 0."
    );
    out
}

/// The same table in Markdown, for `summary.md` and CI step summaries.
pub fn markdown(s: &Scenario, runs: &[&Results]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut out = String::new();
    // A line break in the name would end the heading there.
    let name = s.spec.name.replace("\r\n", " ").replace(['\r', '\n'], " ");
    let _ = writeln!(out, "## {name} (seed {})\n", s.spec.seed);
    if !s.spec.description.trim().is_empty() {
        let _ = writeln!(out, "{}\n", s.spec.description.trim());
    }
    let _ = writeln!(
        out,
        "{} in {}; {} tier {}: {} RPM, {} TPM. Bound: {}.\n",
        count(first.images.total, "image"),
        count(first.uploads.total, "upload"),
        first.account.model,
        first.account.tier.map_or("–".into(), |t| t.to_string()),
        thousands(first.account.rpm),
        thousands(first.account.tpm),
        match first.bound_ms {
            0 => "none (the limits never admit all of this work in realtime)".to_owned(),
            ms => fmt_ms(ms),
        }
    );
    out.push_str("| metric |");
    for r in runs {
        let _ = write!(out, " {} |", md_cell(&r.policy));
    }
    out.push_str("\n|---|");
    for _ in runs {
        out.push_str("---:|");
    }
    out.push('\n');
    for (label, cells) in rows(runs) {
        let _ = write!(out, "| {label} |");
        for c in cells {
            let _ = write!(out, " {c} |");
        }
        out.push('\n');
    }
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| !r.images.failures.is_empty())
        .collect();
    if !failed.is_empty() {
        out.push('\n');
        for r in failed {
            let _ = writeln!(
                out,
                "Failed under {}: {}.",
                r.policy,
                crate::sim::failures_line(&r.images.failures)
            );
        }
    }
    out
}

/// Text for a Markdown table cell: a `|` is escaped and a line break becomes a blank, so a
/// policy named `fast|cheap` stays in one cell instead of adding a column to its row.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace("\r\n", " ")
        .replace(['\r', '\n'], " ")
}

/// `n` and its noun, in the singular for one: `1 upload`, `3,000 images`, `2 entries`,
/// `2 tag mismatches`. The nouns are this crate's own, so English's regular endings suffice.
pub fn count(n: u64, noun: &str) -> String {
    let n_text = thousands(n);
    if n == 1 {
        return format!("{n_text} {noun}");
    }
    let consonant_y = noun
        .strip_suffix('y')
        .filter(|stem| stem.chars().last().is_some_and(|c| !"aeiou".contains(c)));
    match consonant_y {
        Some(stem) => format!("{n_text} {stem}ies"),
        None if ["s", "x", "ch", "sh"].iter().any(|e| noun.ends_with(e)) => {
            format!("{n_text} {noun}es")
        }
        None => format!("{n_text} {noun}s"),
    }
}

/// One compact line per run, for snapshot tests: a behaviour change shows up as a diff.
pub fn summary_line(r: &Results) -> String {
    let l = &r.latency_ms;
    let failures = crate::sim::failures_line(&r.images.failures);
    format!(
        "{} {}: tagged={}/{} rt={} batch={} failed={}{} pending={} first_p50={} complete_p95={} makespan={} ratio={:.2} 429={} retries={} batches={} cost=${:.4}",
        r.scenario,
        r.policy,
        r.images.tagged,
        r.images.total,
        r.images.tagged_realtime,
        r.images.tagged_batch,
        r.images.failed,
        if failures.is_empty() {
            String::new()
        } else {
            format!("({failures})")
        },
        r.images.pending,
        fmt_ms(l.upload_first_tag.p50),
        fmt_ms(l.upload_complete.p95),
        fmt_ms(r.makespan_ms),
        r.bound_ratio,
        r.upstream.rate_limited,
        r.upstream.retries,
        r.upstream.batches_created,
        r.cost_usd,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        let got: Vec<String> = [0, 850, 3_140, 65_000, 7_500_000, 90_000_000]
            .into_iter()
            .map(fmt_ms)
            .collect();
        assert_eq!(
            got,
            ["0 ms", "850 ms", "3.1 s", "1m 05s", "2h 05m", "1d 01h"]
        );
        assert_eq!(thousands(2_000_000), "2,000,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn one_of_a_thing_is_singular() {
        // "1 images still pending", "1 entries", "p95 at 1 users" before.
        assert_eq!(count(1, "image"), "1 image");
        assert_eq!(count(0, "image"), "0 images");
        assert_eq!(count(1_234, "entry"), "1,234 entries");
        assert_eq!(count(1, "entry"), "1 entry");
        assert_eq!(count(2, "tag mismatch"), "2 tag mismatches");
        assert_eq!(count(2, "day"), "2 days");
    }

    #[test]
    fn durations_never_round_past_their_unit() {
        let cases = [
            (999, "999 ms"),
            (1_000, "1.0 s"),
            (59_949, "59.9 s"),
            (59_950, "1m 00s"),
            (59_960, "1m 00s"),
            (59_999, "1m 00s"),
            (60_000, "1m 00s"),
            (60_999, "1m 00s"),
            (3_599_999, "59m 59s"),
            (3_600_000, "1h 00m"),
            (86_399_999, "23h 59m"),
            (86_400_000, "1d 00h"),
        ];
        for (ms, want) in cases {
            assert_eq!(fmt_ms(ms), want, "{ms} ms");
        }
        // Around every switch, a reading stays within its unit and never goes down as the
        // duration goes up.
        let read = |t: &str| -> f64 {
            let num = |v: &str| {
                v.trim_end_matches(char::is_alphabetic)
                    .parse::<f64>()
                    .unwrap()
            };
            let parts: Vec<&str> = t.split(' ').collect();
            match parts[..] {
                [v, "ms"] => num(v),
                [v, "s"] => {
                    assert!(num(v) < 60.0, "{t}");
                    num(v) * 1e3
                }
                [a, b] if a.ends_with('m') => {
                    assert!(num(b) < 60.0 && num(a) < 60.0, "{t}");
                    num(a) * 6e4 + num(b) * 1e3
                }
                [a, b] if a.ends_with('h') => {
                    assert!(num(b) < 60.0 && num(a) < 24.0, "{t}");
                    num(a) * 3.6e6 + num(b) * 6e4
                }
                [a, b] if a.ends_with('d') => {
                    assert!(num(b) < 24.0, "{t}");
                    num(a) * 8.64e7 + num(b) * 3.6e6
                }
                _ => panic!("{t}"),
            }
        };
        let mut last = 0.0;
        for ms in (0..=130_000)
            .chain(3_590_000..=3_610_000)
            .chain(86_390_000..=86_410_000)
        {
            let got = read(&fmt_ms(ms));
            assert!(got >= last, "{ms} ms reads {}", fmt_ms(ms));
            last = got;
        }
    }

    #[test]
    fn a_run_with_no_bound_says_none_not_0_ms() {
        // 1,000 TPM admits no low-detail image (2,833 tokens): the bound_ms of 0 is no bound.
        let text = "name = \"nb\"\nseed = 1\n[account]\nmodel = \"gpt-4o-mini\"\ntier = 1\n\
                    tpm = 1000\n[images]\nwidth_px = 1024\nheight_px = 768\n\
                    output_tokens = 60\n[[uploads]]\nusers = 1\nimages = 2\nat_s = 0\n";
        let s = Scenario::from_text("nb.toml", text, &[]).unwrap();
        let policy = s.policy(&tagstorm_core::Policy::tagstorm()).unwrap();
        let run = crate::sim::run(&s, &policy).unwrap().results;
        assert_eq!(run.bound_ms, 0);
        let (table, md) = (table(&s, &[&run]), markdown(&s, &[&run]));
        assert!(!table.contains("bound = 0 ms"), "{table}");
        assert!(table.contains("\nbound: none: "), "{table}");
        let ratio = table
            .lines()
            .find(|l| l.starts_with("makespan / bound"))
            .unwrap();
        assert!(ratio.ends_with(" –"), "{table}");
        assert!(!md.contains("Bound: 0 ms"), "{md}");
        assert!(md.contains(" Bound: none (the limits"), "{md}");
    }

    #[test]
    fn a_scenario_name_with_a_line_break_stays_in_its_heading() {
        let text = "name = \"two\\nlines\"\nseed = 1\n[account]\nmodel = \"gpt-4o-mini\"\n\
                    tier = 1\n[images]\nwidth_px = 512\nheight_px = 512\noutput_tokens = 60\n\
                    [[uploads]]\nusers = 1\nimages = 1\nat_s = 0\n";
        let s = Scenario::from_text("nl.toml", text, &[]).unwrap();
        assert_eq!(s.spec.name, "two\nlines");
        let policy = s.policy(&tagstorm_core::Policy::tagstorm()).unwrap();
        let run = crate::sim::run(&s, &policy).unwrap().results;
        let md = markdown(&s, &[&run]);
        assert!(md.starts_with("## two lines (seed 1)\n\n"), "{md}");
    }

    #[test]
    fn a_policy_name_with_a_pipe_or_a_line_break_stays_in_its_header_cell() {
        let text = "name = \"md\"\nseed = 1\n[account]\nmodel = \"gpt-4o-mini\"\ntier = 1\n\
                    [images]\nwidth_px = 512\nheight_px = 512\noutput_tokens = 60\n\
                    [[uploads]]\nusers = 1\nimages = 2\nat_s = 0\n";
        let s = Scenario::from_text("md.toml", text, &[]).unwrap();
        let policy = s.policy(&tagstorm_core::Policy::tagstorm()).unwrap();
        let run = crate::sim::run(&s, &policy).unwrap().results;
        let mut piped = run.clone();
        piped.policy = "fast|cheap".into();
        let mut broken = run.clone();
        broken.policy = "two\nlines".into();
        let md = markdown(&s, &[&run, &piped, &broken]);
        // Every row has as many cell separators (a `|` not escaped) as the delimiter row.
        let cells = |l: &str| l.replace("\\|", "").matches('|').count();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows.len(), 17, "{md}");
        assert!(rows.iter().all(|l| cells(l) == cells(rows[1])), "{md}");
        assert_eq!(
            rows[0], "| metric | tagstorm | fast\\|cheap | two lines |",
            "{md}"
        );
    }
}
