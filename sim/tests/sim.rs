//! Integration tests of tagstorm-sim: determinism, the acceptance numbers of issue 3, every
//! shipped scenario under every preset, snapshot summaries, and the binary's error handling.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use expect_test::expect;
use tagstorm_core::Policy;
use tagstorm_core::config::PRESETS;
use tagstorm_sim::report::summary_line;
use tagstorm_sim::{Results, Scenario, SetArg, sim};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn scenario(name: &str) -> Scenario {
    scenario_with(name, &[])
}

/// A shipped scenario with `--set` overrides.
fn scenario_with(name: &str, sets: &[&str]) -> Scenario {
    let path = scenarios_dir().join(format!("{name}.toml"));
    let sets: Vec<SetArg> = sets.iter().map(|s| SetArg::parse(s).unwrap()).collect();
    Scenario::load(&path.to_string_lossy(), &sets).unwrap()
}

fn run(s: &Scenario, preset: &str) -> Results {
    let policy = s.policy(&Policy::preset(preset).unwrap()).unwrap();
    sim::run(s, &policy).unwrap().results
}

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tagstorm-sim"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn same_seed_gives_byte_identical_json() {
    for name in ["ten-users-fifteen-images", "flaky-upstream"] {
        let s = scenario(name);
        for preset in PRESETS {
            let a = serde_json::to_string(&run(&s, preset)).unwrap();
            let b = serde_json::to_string(&run(&s, preset)).unwrap();
            assert_eq!(a, b, "{name} under {preset}");
        }
    }
    // And through the binary, end to end.
    let args = [
        "run",
        "scenarios/flaky-upstream.toml",
        "scenarios/batch-queue-full.toml",
        "--json",
    ];
    let (a, b) = (bin(&args), bin(&args));
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn a_different_seed_changes_the_run_but_not_its_shape() {
    let s = scenario("ten-users-fifteen-images");
    let seven = scenario_with("ten-users-fifteen-images", &["seed=7"]);
    let (a, b) = (run(&s, "tagstorm"), run(&seven, "tagstorm"));
    assert_eq!(b.seed, 7);
    assert_eq!(a.images.total, b.images.total);
    assert_ne!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}

#[test]
fn ten_users_fifteen_images_at_tier_1() {
    let s = scenario("ten-users-fifteen-images");
    let ours = run(&s, "tagstorm");
    assert_eq!(ours.upstream.rate_limited, 0);
    assert!(ours.bound_ratio <= 1.10, "bound_ratio {}", ours.bound_ratio);
    assert!(ours.bound_ms > 60_000, "bound {} ms", ours.bound_ms);
    assert_eq!(ours.images.tagged, 150);
    assert_eq!(ours.verification.tag_mismatches, 0);
    let seed = run(&s, "seed-current");
    assert!(seed.upstream.rate_limited > 0);
    for preset in PRESETS {
        assert_eq!(run(&s, preset).images.pending, 0, "{preset}");
    }
}

#[test]
fn single_300_upload_at_tier_1() {
    let s = scenario("single-300-upload");
    let ours = run(&s, "tagstorm");
    assert!(
        ours.latency_ms.upload_first_tag.p50 < 10_000,
        "first tag p50 {} ms",
        ours.latency_ms.upload_first_tag.p50
    );
    assert_eq!(ours.images.tagged + ours.images.failed, 300);
    assert_eq!(ours.images.pending, 0);
    // The table's point: batch is cheaper and slower than realtime.
    let seed = run(&s, "seed-current");
    assert!(seed.makespan_ms > ours.makespan_ms);
    assert!(seed.cost_usd < ours.cost_usd);
}

fn shipped() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_scenario_ends_with_nothing_pending_under_every_preset() {
    let files = shipped();
    assert!(files.len() >= 7, "{files:?}");
    let mut lines = Vec::new();
    for f in &files {
        let s = Scenario::load(&f.to_string_lossy(), &[]).unwrap();
        for preset in PRESETS {
            let r = run(&s, preset);
            assert_eq!(r.images.pending, 0, "{} under {preset}", s.name());
            assert_eq!(
                r.verification.tag_mismatches,
                0,
                "{} under {preset}",
                s.name()
            );
            assert_eq!(r.verification.duplicate_terminal, 0);
            assert_eq!(
                r.images.tagged + r.images.failed,
                r.images.total,
                "{} under {preset}",
                s.name()
            );
            lines.push(summary_line(&r));
        }
    }
    expect![[r#"
        batch-queue-full seed-current: tagged=3000/3000 rt=0 batch=3000 failed=0 pending=0 first_p50=33m 55s complete_p95=1h 23m makespan=1h 25m ratio=2.04 429=0 retries=0 batches=24 cost=$0.6510
        batch-queue-full seed-proposed: tagged=3000/3000 rt=0 batch=3000 failed=0 pending=0 first_p50=24m 22s complete_p95=1h 18m makespan=1h 20m ratio=1.92 429=0 retries=0 batches=42 cost=$0.6510
        batch-queue-full tagstorm: tagged=3000/3000 rt=1800 batch=1200 failed=0 pending=0 first_p50=3.8 s complete_p95=39m 15s makespan=40m 34s ratio=0.97 429=0 retries=0 batches=7 cost=$1.0416
        flaky-upstream seed-current: tagged=67/3150 rt=67 batch=0 failed=3083(polling_abandoned=702,queue_full=2298,retries_exhausted=83) pending=0 first_p50=1.6 s complete_p95=3h 53m makespan=3h 54m ratio=5.34 429=250 retries=175 batches=83 cost=$0.0291
        flaky-upstream seed-proposed: tagged=3150/3150 rt=149 batch=3001 failed=0 pending=0 first_p50=2.2 s complete_p95=1d 00h makespan=1d 00h ratio=32.97 429=0 retries=86 batches=24 cost=$0.7159
        flaky-upstream tagstorm: tagged=3150/3150 rt=1243 batch=1907 failed=0 pending=0 first_p50=2.2 s complete_p95=1d 00h makespan=1d 00h ratio=33.81 429=0 retries=222 batches=4 cost=$0.9534
        single-300-upload seed-current: tagged=300/300 rt=0 batch=300 failed=0 pending=0 first_p50=10m 03s complete_p95=10m 03s makespan=10m 03s ratio=3.06 429=0 retries=0 batches=1 cost=$0.0651
        single-300-upload seed-proposed: tagged=300/300 rt=0 batch=300 failed=0 pending=0 first_p50=5m 02s complete_p95=8m 03s makespan=8m 03s ratio=2.45 429=0 retries=0 batches=2 cost=$0.0651
        single-300-upload tagstorm: tagged=300/300 rt=300 batch=0 failed=0 pending=0 first_p50=1.0 s complete_p95=3m 20s makespan=3m 20s ratio=1.02 429=0 retries=0 batches=0 cost=$0.1302
        staggered-small-uploads seed-current: tagged=987/987 rt=582 batch=405 failed=0 pending=0 first_p50=1.8 s complete_p95=3m 45s makespan=58m 33s ratio=1.00 429=0 retries=0 batches=10 cost=$0.3405
        staggered-small-uploads seed-proposed: tagged=987/987 rt=845 batch=142 failed=0 pending=0 first_p50=2.0 s complete_p95=24.3 s makespan=58m 30s ratio=1.00 429=0 retries=0 batches=2 cost=$0.3976
        staggered-small-uploads tagstorm: tagged=987/987 rt=987 batch=0 failed=0 pending=0 first_p50=1.6 s complete_p95=11.8 s makespan=58m 33s ratio=1.00 429=0 retries=0 batches=0 cost=$0.4284
        ten-users-fifteen-images seed-current: tagged=72/150 rt=72 batch=0 failed=78(retries_exhausted=78) pending=0 first_p50=1.1 s complete_p95=6.6 s makespan=6.6 s ratio=0.09 429=238 retries=160 batches=0 cost=$0.0312
        ten-users-fifteen-images seed-proposed: tagged=150/150 rt=150 batch=0 failed=0 pending=0 first_p50=1.8 s complete_p95=1m 15s makespan=1m 15s ratio=1.09 429=0 retries=0 batches=0 cost=$0.0651
        ten-users-fifteen-images tagstorm: tagged=150/150 rt=150 batch=0 failed=0 pending=0 first_p50=2.0 s complete_p95=1m 14s makespan=1m 13s ratio=1.07 429=0 retries=0 batches=0 cost=$0.0651
        tier2-burst seed-current: tagged=6000/6000 rt=0 batch=6000 failed=0 pending=0 first_p50=3m 56s complete_p95=14m 08s makespan=29m 36s ratio=3.91 429=0 retries=0 batches=101 cost=$1.3019
        tier2-burst seed-proposed: tagged=6000/6000 rt=4000 batch=2000 failed=0 pending=0 first_p50=1.8 s complete_p95=4m 46s makespan=22m 35s ratio=2.99 429=0 retries=0 batches=10 cost=$2.1699
        tier2-burst tagstorm: tagged=6000/6000 rt=6000 batch=0 failed=0 pending=0 first_p50=1.8 s complete_p95=4m 49s makespan=7m 40s ratio=1.02 429=0 retries=0 batches=0 cost=$2.6039
        workday seed-current: tagged=50778/55698 rt=1956 batch=48822 failed=4920(polling_abandoned=4920) pending=0 first_p50=52.4 s complete_p95=17m 42s makespan=23h 29m ratio=1.00 429=0 retries=0 batches=302 cost=$11.4433
        workday seed-proposed: tagged=55698/55698 rt=5494 batch=50204 failed=0 pending=0 first_p50=2.5 s complete_p95=17m 05s makespan=23h 29m ratio=1.00 429=0 retries=0 batches=357 cost=$13.2786
        workday tagstorm: tagged=55698/55698 rt=55698 batch=0 failed=0 pending=0 first_p50=1.4 s complete_p95=13.0 s makespan=23h 29m ratio=1.00 429=0 retries=0 batches=0 cost=$24.1729
    "#]].assert_eq(&(lines.join("\n") + "\n"));
}

#[test]
fn results_carry_the_schema_and_required_keys() {
    let r = run(&scenario("ten-users-fifteen-images"), "tagstorm");
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(v["schema"], "tagstorm.results.v1");
    for key in [
        "/scenario",
        "/policy",
        "/seed",
        "/images/total",
        "/images/tagged",
        "/images/failed",
        "/images/pending",
        "/upstream/requests",
        "/upstream/rate_limited",
        "/upstream/server_errors",
        "/upstream/timeouts",
        "/upstream/retries",
        "/upstream/batches_created",
        "/tokens/billed_input",
        "/tokens/billed_output",
        "/cost_usd",
        "/makespan_ms",
        "/bound_ms",
        "/bound_ratio",
    ] {
        assert!(v.pointer(key).is_some(), "{key}");
    }
    for metric in ["image_tagged", "upload_first_tag", "upload_complete"] {
        for stat in [
            "count", "min", "mean", "p50", "p90", "p95", "p99", "p999", "max",
        ] {
            let key = format!("/latency_ms/{metric}/{stat}");
            assert!(v.pointer(&key).is_some(), "{key}");
        }
    }
}

/// Writes a malformed copy of the ten-users scenario and runs the binary on it.
fn check_bad(name: &str, from: &str, to: &str, expect: &str) {
    let dir = std::env::temp_dir().join(format!("tagstorm-sim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good =
        std::fs::read_to_string(scenarios_dir().join("ten-users-fifteen-images.toml")).unwrap();
    assert!(good.contains(from), "{from}");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, good.replacen(from, to, 1)).unwrap();
    let out_dir = dir.join(format!("{name}-out"));
    let p = path.to_string_lossy().into_owned();
    let o = bin(&["run", &p, "--out", &out_dir.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o.stderr));
    assert!(o.stdout.is_empty());
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{name}: {err}");
    assert_eq!(err.trim_end(), format!("{p}:{expect}"), "{name}");
    assert!(
        !out_dir.exists(),
        "{name}: --out wrote output for a bad scenario"
    );
}

#[test]
fn malformed_scenarios_give_one_located_error_line_and_exit_2() {
    check_bad(
        "zero-images",
        "images = 15 ",
        "images = 0 ",
        "25: uploads[0].images: must be at least 1, got 0",
    );
    check_bad(
        "zero-users",
        "users = 10 ",
        "users = 0 ",
        "24: uploads[0].users: must be at least 1",
    );
    check_bad(
        "negative-time",
        "at_s = 0 ",
        "at_s = -1 ",
        "26: uploads[0].at_s: must be a finite number ≥ 0, got -1",
    );
    check_bad(
        "unknown-tier",
        "tier = 1 ",
        "tier = 7 ",
        "15: account.tier: no published limits for gpt-4o-mini tier 7 (known: 1, 2, 3, 4, 5)",
    );
    check_bad(
        "wrong-type",
        "width_px = 1024 ",
        "width_px = \"wide\" ",
        "18: images.width_px: invalid type: string \"wide\", expected u32",
    );
    check_bad(
        "unknown-field",
        "detail = \"low\" ",
        "detial = \"low\" ",
        "20: images.detial: unknown field `detial`, expected one of `width_px`, `height_px`, `detail`, `output_tokens`, `prompt`, `url_bytes`",
    );
    check_bad(
        "bad-toml",
        "at_s = 0 ",
        "at_s = = 0 ",
        "26: uploads[0].at_s: extra `=`, expected nothing",
    );
    check_bad(
        "probability",
        "[images]",
        "[upstream]\ntimeout_rate = 1.5\n\n[images]",
        "18: upstream.timeout_rate: must be within 0..=1, got 1.5",
    );
}

#[test]
fn set_overrides_fields_and_names_unknown_paths() {
    let o = bin(&[
        "run",
        "scenarios/ten-users-fifteen-images.toml",
        "--set",
        "account.tier=2",
        "--set",
        "uploads.0.images=30",
        "--set",
        "policy.realtime_head_images=5",
        "--seed",
        "9",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["account"]["tier"], 2);
    assert_eq!(v["images"]["total"], 300);
    assert_eq!(v["seed"], 9);

    let o = bin(&[
        "validate",
        "scenarios/ten-users-fifteen-images.toml",
        "--set",
        "acount.tier=2",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.starts_with(
            "scenarios/ten-users-fifteen-images.toml: --set acount.tier=2: acount: unknown field `acount`"
        ),
        "{err}"
    );
    let o = bin(&[
        "validate",
        "scenarios/ten-users-fifteen-images.toml",
        "--set",
        "policy.chunk_sise=3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o.stderr).trim_end(),
        "scenarios/ten-users-fifteen-images.toml: --set policy.chunk_sise=3: policy.chunk_sise: unknown policy field `chunk_sise`"
    );
}

#[test]
fn out_writes_results_summary_hgrm_and_svg_files() {
    let dir = std::env::temp_dir().join(format!("tagstorm-sim-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let o = bin(&[
        "run",
        "scenarios/single-300-upload.toml",
        "--out",
        &dir.to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "image_tagged.hgrm",
            "image_tagged.svg",
            "results.json",
            "summary.md",
            "upload_complete.hgrm",
            "upload_complete.svg",
            "upload_first_tag.hgrm",
            "upload_first_tag.svg",
        ]
    );
    let hgrm = std::fs::read_to_string(dir.join("image_tagged.hgrm")).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    assert!(hgrm.contains("#[Max     = "));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["images"]["tagged"], 300);
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("| metric | tagstorm |"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_prints_one_column_per_policy() {
    let o = bin(&["compare", "scenarios/ten-users-fifteen-images.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let head = out
        .lines()
        .find(|l| l.contains("seed-current"))
        .unwrap_or_default();
    assert!(
        head.contains("seed-proposed") && head.contains("tagstorm"),
        "{out}"
    );
    for row in [
        "first tag, p50",
        "429 responses",
        "pending (must be 0)",
        "cost",
        "bound = ",
    ] {
        assert!(out.contains(row), "{row}: {out}");
    }
    let o = bin(&[
        "compare",
        "scenarios/ten-users-fifteen-images.toml",
        "--policies",
        "tagstorm,nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--policy nope: not a preset"));

    // The policies run side by side on threads; each result is byte for byte what a run of
    // its own gives.
    let scenario = "scenarios/flaky-upstream.toml";
    let o = bin(&["compare", scenario, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let lines: Vec<String> = text(&o.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    for (line, policy) in lines
        .iter()
        .zip(["seed-current", "seed-proposed", "tagstorm"])
    {
        let alone = bin(&["run", scenario, "--policy", policy, "--json"]);
        assert_eq!(alone.status.code(), Some(0), "{}", text(&alone.stderr));
        assert_eq!(text(&alone.stdout).trim_end(), line, "{policy}");
    }
}

#[test]
fn help_documents_examples_and_exit_codes() {
    let o = bin(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    for s in [
        "Examples:",
        "compare scenarios/ten-users-fifteen-images.toml",
        "Exit codes (stable):",
        "  1  ",
        "  2  ",
    ] {
        assert!(out.contains(s), "{s}: {out}");
    }
    let o = bin(&["run"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn pending_at_the_bound_is_reported_and_exits_1() {
    let o = bin(&[
        "run",
        "scenarios/single-300-upload.toml",
        "--set",
        "sim.max_duration_s=30",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["images"]["pending"].as_u64().unwrap() > 0);
    assert_eq!(v["sim"]["hit_max_duration"], true);
    assert!(text(&o.stderr).contains("images still pending"));
}

/// Every file under `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn out_folders_stay_inside_out_and_never_collide() {
    let tmp = std::env::temp_dir().join(format!("tagstorm-sim-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let good = std::fs::read_to_string(scenarios_dir().join("single-300-upload.toml")).unwrap();
    // A name is free text: slashes, dots and unicode must not leave --out or overwrite.
    let escape = tmp.join("escape.toml");
    std::fs::write(
        &escape,
        good.replacen("name = \"single-300-upload\"", "name = \"../élan/x\"", 1),
    )
    .unwrap();
    let same = tmp.join("same.toml");
    std::fs::write(&same, &good).unwrap();
    let out = tmp.join("out");
    let o = bin(&[
        "run",
        "scenarios/single-300-upload.toml",
        &same.to_string_lossy(),
        &escape.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        !tmp.join("élan").exists(),
        "a scenario name wrote outside --out"
    );
    let results: Vec<String> = tree(&out)
        .into_iter()
        .filter(|f| f.ends_with("results.json"))
        .collect();
    assert_eq!(
        results,
        [
            "-élan-x/results.json",
            "single-300-upload-2/results.json",
            "single-300-upload/results.json"
        ]
    );
    // The same policy twice in compare: two folders, not one overwritten.
    let out = tmp.join("cmp");
    let o = bin(&[
        "compare",
        "scenarios/single-300-upload.toml",
        "--policies",
        "tagstorm,tagstorm",
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let results: Vec<String> = tree(&out)
        .into_iter()
        .filter(|f| f.ends_with("results.json"))
        .collect();
    assert_eq!(
        results,
        ["tagstorm-2/results.json", "tagstorm/results.json"]
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn bench_refuses_an_image_count_it_cannot_hold() {
    // u64::MAX images scaled `users` to u64::MAX and aborted on a capacity overflow.
    let o = bin(&[
        "bench",
        "scenarios/single-300-upload.toml",
        "--images",
        "18446744073709551615",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--images"), "{}", text(&o.stderr));
    let o = bin(&["bench", "scenarios/single-300-upload.toml", "--images", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn bench_json_reports_every_run_for_a_ci_job() {
    let o = bin(&[
        "bench",
        "scenarios/ten-users-fifteen-images.toml",
        "--images",
        "150",
        "--runs",
        "3",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schema"], "tagstorm.bench.v1");
    assert_eq!(v["images"], 150);
    assert_eq!(v["images_pending"], 0);
    assert_eq!(v["runs"], 3);
    let walls: Vec<f64> = v["wall_s"]["all_sorted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    assert_eq!(walls.len(), 3);
    assert!(walls.windows(2).all(|w| w[0] <= w[1]), "{walls:?}");
    assert_eq!(v["wall_s"]["best"].as_f64(), Some(walls[0]));
    assert_eq!(v["wall_s"]["median"].as_f64(), Some(walls[1]));
    assert!(v["events"].as_u64().unwrap() >= 150);
    let o = bin(&["bench", "--runs", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--runs"), "{}", text(&o.stderr));
}

#[test]
fn validate_reports_every_bad_file_not_just_the_first() {
    let dir = std::env::temp_dir().join(format!("tagstorm-sim-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good =
        std::fs::read_to_string(scenarios_dir().join("ten-users-fifteen-images.toml")).unwrap();
    let bad_type = dir.join("bad-type.toml");
    std::fs::write(
        &bad_type,
        good.replacen("images = 15 ", "images = \"x\" ", 1),
    )
    .unwrap();
    let bad_field = dir.join("bad-field.toml");
    std::fs::write(&bad_field, format!("{good}\nsurprise = 1\n")).unwrap();
    let (t, f) = (
        bad_type.to_string_lossy().into_owned(),
        bad_field.to_string_lossy().into_owned(),
    );
    let o = bin(&["validate", &t, "scenarios/single-300-upload.toml", &f]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.starts_with("scenarios/single-300-upload.toml: ok"),
        "{out}"
    );
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].starts_with(&format!("{t}:")), "{err}");
    assert!(lines[0].contains("images"), "{err}");
    assert!(lines[1].starts_with(&format!("{f}:")), "{err}");
    assert!(lines[1].contains("surprise"), "{err}");
    assert_eq!(lines[2], "2 of 3 scenarios are invalid");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tag check is live: answers cut short by `max_tokens` carry no valid tags, and the
/// simulator counts every one of them as a mismatch.
#[test]
fn answers_cut_short_are_counted_as_tag_mismatches() {
    let s = scenario_with("ten-users-fifteen-images", &["images.output_tokens=1"]);
    let r = run(&s, "tagstorm");
    assert_eq!(r.images.tagged, 150);
    assert_eq!(r.verification.tag_mismatches, 150);
}
