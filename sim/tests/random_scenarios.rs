//! Random scenarios through the whole simulator: core against the OpenAI model under random
//! accounts, workloads, faults and policy settings, under every preset. Whatever the draw, no
//! image is lost (left pending with nothing left to happen) or credited twice, every tag
//! matches its image, the counts add up, and two runs give the same bytes.
//!
//! CI runs a few dozen cases; a longer hunt is `PROPTEST_CASES=2000 cargo test --release -p
//! tagstorm-sim --test random_scenarios`.

use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use tagstorm_core::Policy;
use tagstorm_core::config::PRESETS;
use tagstorm_sim::{Scenario, sim};

/// One upload group of a random scenario: when its uploads arrive, and how many images each.
#[derive(Clone, Debug)]
enum Arrivals {
    /// `users` uploads at `at_s`.
    At { users: u32, at_s: u32 },
    /// `users` uploads, one every `every_s` from `start_s`.
    Every {
        users: u32,
        start_s: u32,
        every_s: u32,
    },
    /// A Poisson process of `per_hour` for `for_s` seconds.
    Poisson { per_hour: u32, for_s: u32 },
}

#[derive(Clone, Debug)]
struct Group {
    arrivals: Arrivals,
    /// The `images = …` value: a number or a size distribution.
    images: String,
    workspaces: Option<u32>,
    deadline_s: Option<u32>,
}

fn group() -> impl Strategy<Value = Group> {
    let arrivals = prop_oneof![
        (1u32..=8, 0u32..=900).prop_map(|(users, at_s)| Arrivals::At { users, at_s }),
        (1u32..=8, 0u32..=900, 1u32..=120).prop_map(|(users, start_s, every_s)| {
            Arrivals::Every {
                users,
                start_s,
                every_s,
            }
        }),
        (1u32..=60, 60u32..=3600)
            .prop_map(|(per_hour, for_s)| Arrivals::Poisson { per_hour, for_s }),
    ];
    let images = prop_oneof![
        (1u32..=20).prop_map(|n| n.to_string()),
        (20u32..=400).prop_map(|n| n.to_string()),
        (1u32..=50, 0u32..=500).prop_map(|(min, span)| format!(
            "{{ kind = \"uniform\", min = {min}, max = {} }}",
            min + span
        )),
        (2u32..=30).prop_map(|median| format!(
            "{{ kind = \"lognormal\", median = {median}, p99 = {}, max = 1500 }}",
            median * 40
        )),
        (1u32..=10).prop_map(|min| format!(
            "{{ kind = \"pareto\", min = {min}, alpha = 1.2, max = 1500 }}"
        )),
    ];
    (
        arrivals,
        images,
        prop::option::of(1u32..=4),
        prop::option::of(30u32..=7200),
    )
        .prop_map(|(arrivals, images, workspaces, deadline_s)| Group {
            arrivals,
            images,
            workspaces,
            deadline_s,
        })
}

/// The text of a random scenario: an account, the upstream's faults, images, 1–3 upload groups
/// and a `[policy]` table of overrides (applied on top of whichever preset runs it).
fn scenario_text() -> impl Strategy<Value = String> {
    let account = (
        1u8..=5,
        prop::option::of(50u64..=3000),
        prop::option::of(100_000u64..=3_000_000),
    );
    let faults = (
        0.0f64..0.3,
        0.0f64..0.1,
        0.0f64..0.1,
        prop::option::of((0u64..20, 1u64..30, 0usize..4)),
        prop::collection::vec(0usize..4, 0..3),
        (0.0f64..0.2, 0.0f64..0.2, 0.0f64..0.2),
    );
    let images = (prop::bool::ANY, 256u32..=4096, 256u32..=4096);
    let groups = prop::collection::vec(group(), 1..=3);
    let policy = (
        prop::option::of(0u32..=20),
        prop::option::of(1u32..=2000),
        prop::option::of(60_000u64..=7_200_000),
        prop::option::of(prop::bool::ANY),
        prop::option::of(prop::bool::ANY),
        prop::option::of(20u8..=100),
        prop::option::of(1u32..=6),
        prop::option::of(0u64..=200_000),
    );
    // More policy knobs, each left to the preset half the time: workspace quotas, polling
    // and its limits, what a 429 and spent retries do, pacing itself, the thresholds, and the
    // order of a workspace's realtime queue.
    let knobs = (
        prop::option::of((1u64..=600, 20_000u64..=2_000_000)),
        prop::option::of((1u32..=30, 60_000u64..=7_200_000)),
        prop::option::of(600_000u64..=90_000_000),
        prop::option::of(prop::bool::ANY),
        prop::option::of(prop::bool::ANY),
        prop::option::of(prop::bool::ANY),
        prop::option::of(prop::bool::ANY),
        prop::option::of((0u32..=100, 0u32..=400, 1u32..=20, 0u64..=10_000)),
        prop::option::of((1u64..=20, 1u64..=5_000)),
        prop::option::of(prop::bool::ANY),
    );
    (account, faults, images, groups, policy, knobs).prop_map(
        |(
            (tier, rpd, queue),
            (err, overloaded, timeout, script, outcomes, (fail, expire, line)),
            (high, w, h),
            groups,
            (head, per_batch, deadline, latency, fair, headroom, attempts, foreign),
            (ws_limits, poll, give_up, fallback, honor, pacing, exhausted_fail, thresholds, per_hour, smallest),
        )| {
            let mut t = String::from("name = \"random\"\nseed = 7\n\n[account]\nmodel = \"gpt-4o-mini\"\n");
            let _ = writeln!(t, "tier = {tier}");
            if let Some(rpd) = rpd {
                let _ = writeln!(t, "rpd = {rpd}");
            }
            if let Some(q) = queue {
                let _ = writeln!(t, "batch_queue_tokens = {q}");
            }
            let _ = writeln!(
                t,
                "\n[upstream]\nserver_error_rate = {err}\noverloaded_rate = {overloaded}\n\
                 timeout_rate = {timeout}\ntimeout_after_ms = 20000"
            );
            if let Some((after, times, kind)) = script {
                let kind = ["429", "500", "503", "timeout"][kind];
                let _ = writeln!(
                    t,
                    "faults = [{{ after = {after}, outcome = \"{kind}\", times = {times} }}]"
                );
            }
            let outcomes: Vec<&str> = outcomes
                .iter()
                .map(|&k| ["\"completed\"", "\"expired\"", "\"failed\"", "\"stuck\""][k])
                .collect();
            let _ = writeln!(
                t,
                "\n[upstream.batch]\nfail_rate = {fail}\nexpire_rate = {expire}\n\
                 line_failure_rate = {line}\nbatch_outcomes = [{}]",
                outcomes.join(", ")
            );
            let detail = if high { "high" } else { "low" };
            let _ = writeln!(
                t,
                "\n[images]\nwidth_px = {w}\nheight_px = {h}\ndetail = \"{detail}\"\noutput_tokens = 60"
            );
            for g in &groups {
                let _ = writeln!(t, "\n[[uploads]]\nimages = {}", g.images);
                let _ = match g.arrivals {
                    Arrivals::At { users, at_s } => writeln!(t, "users = {users}\nat_s = {at_s}"),
                    Arrivals::Every {
                        users,
                        start_s,
                        every_s,
                    } => writeln!(
                        t,
                        "users = {users}\nstart_s = {start_s}\nevery_s = {every_s}"
                    ),
                    Arrivals::Poisson { per_hour, for_s } => writeln!(
                        t,
                        "poisson = {{ per_hour = {per_hour}, for_s = {for_s} }}"
                    ),
                };
                if let Some(ws) = g.workspaces {
                    let _ = writeln!(t, "workspaces = {ws}");
                }
                if let Some(d) = g.deadline_s {
                    let _ = writeln!(t, "deadline_s = {d}");
                }
            }
            // A month of virtual time: a draw the router handles slowly (a tail queued
            // behind many batch rounds) still ends, so an image left pending is a lost one.
            let _ = writeln!(
                t,
                "\n[sim]\nmax_duration_s = 2592000\nforeign_batch_tokens = {}",
                foreign.unwrap_or(0)
            );
            t.push_str("\n[policy]\n");
            let quoted = |v: &str| format!("\"{v}\"");
            set(&mut t, "realtime_head_images", head);
            set(&mut t, "max_images_per_batch", per_batch);
            set(&mut t, "deadline_ms", deadline);
            set(&mut t, "prefer", latency.map(|v| quoted(if v { "latency" } else { "cost" })));
            set(&mut t, "fair_share", fair);
            set(
                &mut t,
                "realtime_order",
                smallest.map(|v| quoted(if v { "smallest-upload" } else { "arrival" })),
            );
            set(&mut t, "account_headroom_percent", headroom);
            set(&mut t, "retry_max_attempts", attempts);
            set(&mut t, "batch_max_attempts", attempts);
            if let Some((rpm, tpm)) = ws_limits {
                let _ = writeln!(t, "workspace_rpm = {rpm}\nworkspace_tpm = {tpm}");
            }
            if let Some((secs, max_ms)) = poll {
                let _ = writeln!(
                    t,
                    "poll_interval_ms = {}\npoll_max_interval_ms = {}",
                    secs * 1000,
                    max_ms.max(u64::from(secs) * 1000)
                );
            }
            if let Some(v) = give_up {
                let _ = writeln!(t, "poll_give_up_ms = {v}\nbatch_overdue_ms = {}", v / 2 + 1);
            }
            set(&mut t, "fallback_to_batch_on_rate_limit", fallback);
            set(&mut t, "honor_retry_after", honor);
            set(&mut t, "client_pacing", pacing);
            set(
                &mut t,
                "on_retries_exhausted",
                exhausted_fail.map(|v| quoted(if v { "fail" } else { "batch" })),
            );
            if let Some((max, extra, chunk, interval)) = thresholds {
                let _ = writeln!(
                    t,
                    "realtime_max_images = {max}\nrealtime_chunked_max = {}\n\
                     chunk_size = {chunk}\nchunk_interval_ms = {interval}",
                    max + extra
                );
            }
            if let Some((batches, images)) = per_hour {
                let _ = writeln!(
                    t,
                    "workspace_batches_per_hour = {batches}\nworkspace_images_per_hour = {images}"
                );
            }
            t
        },
    )
}

/// Appends `key = value` to a TOML table when the draw set it.
fn set(t: &mut String, key: &str, value: Option<impl std::fmt::Display>) {
    if let Some(v) = value {
        let _ = writeln!(t, "{key} = {v}");
    }
}

/// 24 cases from a fixed seed, so CI runs the same draws every time; `PROPTEST_CASES` and
/// `PROPTEST_RNG_SEED` widen or move the hunt.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 24;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(20261123);
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_image_is_lost_under_random_accounts_workloads_faults_and_settings(text in scenario_text()) {
        // Every draw is a valid scenario for every preset: a refusal fails the test too.
        let s = Scenario::from_text("random.toml", &text, &[])
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        for preset in PRESETS {
            let policy = s
                .policy(&Policy::preset(preset).unwrap())
                .unwrap_or_else(|e| panic!("{preset}: {e}\n{text}"));
            let a = sim::run(&s, &policy).unwrap().results;
            let b = sim::run(&s, &policy).unwrap().results;
            prop_assert_eq!(
                serde_json::to_string(&a).unwrap(),
                serde_json::to_string(&b).unwrap(),
                "not deterministic under {}", preset
            );
            let i = &a.images;
            prop_assert_eq!(i.tagged + i.failed + i.pending, i.total, "counts under {}", preset);
            prop_assert_eq!(i.tagged_realtime + i.tagged_batch, i.tagged, "channels under {}", preset);
            prop_assert_eq!(a.verification.tag_mismatches, 0, "tag mismatches under {}", preset);
            prop_assert_eq!(a.verification.duplicate_terminal, 0, "terminal twice under {}", preset);
            // No busy loop: a core that re-arms a timer for "now" wakes a thousand times a
            // simulated second. Besides polls (two events each: the timer and the answer),
            // real work is a few events per image plus retries spaced by seconds; polls come
            // at most once a second per batch (the draws' fastest interval).
            let seconds = a.sim.end_ms / 1000 + 1;
            let polls = a.upstream.batch_polls;
            prop_assert!(
                a.sim.events.saturating_sub(2 * polls) <= 100 * i.total + 20 * seconds,
                "{} events ({} polls) for {} images over {} s under {}\n{}",
                a.sim.events, polls, i.total, seconds, preset, text
            );
            prop_assert!(
                polls <= (a.upstream.batches_created + 1) * (seconds + 10),
                "{} polls of {} batches over {} s under {}\n{}",
                polls, a.upstream.batches_created, seconds, preset, text
            );
            // Lost: pending when nothing is left to happen (no answer on its way, no timer).
            // An image still waiting when the month runs out is slow, not lost (a batch
            // upstream that lets a fifth of its batches run to the 24 h window can take weeks
            // to drain a big enough workload through the enqueued-token limit).
            prop_assert!(
                i.pending == 0 || a.sim.hit_max_duration,
                "{} images pending after the last event under {}\n{}", i.pending, preset, text
            );
        }
    }
}
