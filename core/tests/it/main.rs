//! Integration tests of tagstorm-core: the engine driven through virtual time against a fake upstream.

mod chaos;
mod harness;
mod ledger;
mod lifecycle;

use std::time::Duration;

use harness::{Faults, Harness, image, low};
use proptest::prelude::*;
use tagstorm_core::config::{RealtimeOrder, Routing};
use tagstorm_core::tokens::{Detail, Model};
use tagstorm_core::{
    AccountLimits, Action, BatchRef, Config, Engine, Event, FailReason, ImageId, Policy, Stage,
    Time, Upload, UploadError, UploadId, UpstreamError, WorkspaceId,
};

fn tier1() -> AccountLimits {
    AccountLimits::tier(Model::Gpt4oMini, 1).unwrap()
}

fn harness(policy: Policy, seed: u64) -> Harness {
    Harness::new(Config::new(policy, tier1()).with_seed(seed), seed)
}

#[test]
fn ten_users_fifteen_images_at_tier1_get_zero_429s() {
    let mut h = harness(Policy::tagstorm(), 1);
    let uploads: Vec<_> = (0..10)
        .map(|u| (h.upload(u, vec![low(); 15]), 15))
        .collect();
    h.run(Duration::from_secs(3600));
    h.assert_all_terminal_once(&uploads);
    assert_eq!(h.log.upstream_429, 0);
    assert_eq!(h.log.tagged.len(), 150);
    assert_eq!(
        h.log.batches_created, 0,
        "150 small images fit realtime well within the deadline"
    );
    // 150 × 2,880 tokens against a full 200,000 TPM bucket refilling at 3,333/s: the last
    // request can go out at about 69.6 s, so the makespan is about that plus one latency.
    let makespan = h.log.tagged.values().map(|t| t.0).max().unwrap();
    assert!(makespan < Time::from_secs(76), "makespan {makespan:?}");
}

#[test]
fn seed_current_blows_the_token_limit_with_the_same_load() {
    let mut h = harness(Policy::seed_current(), 1);
    let uploads: Vec<_> = (0..10)
        .map(|u| (h.upload(u, vec![low(); 15]), 15))
        .collect();
    h.run(Duration::from_secs(3600));
    h.assert_all_terminal_once(&uploads);
    assert!(h.log.upstream_429 > 0);
}

#[test]
fn a_small_workspace_is_not_starved_by_a_large_one() {
    let all_realtime = |fair_share| Policy {
        routing: Routing::Threshold,
        realtime_max_images: 100_000,
        realtime_chunked_max: 100_000,
        fair_share,
        ..Policy::tagstorm()
    };
    let mut waits = Vec::new();
    for fair in [true, false] {
        let mut h = harness(all_realtime(fair), 2);
        let big = h.upload(1, vec![low(); 10_000]);
        h.run(Duration::from_secs(10));
        let small = h.upload(2, vec![low(); 5]);
        h.run(Duration::from_secs(24 * 3600));
        h.assert_all_terminal_once(&[(big, 10_000), (small, 5)]);
        waits.push(h.log.upload_complete[&small] - h.log.upload_start[&small]);
    }
    assert!(
        waits[0] < Duration::from_secs(30),
        "fair share: small upload waited {:?}",
        waits[0]
    );
    assert!(
        waits[1] > Duration::from_secs(600),
        "first come first served should starve it: {:?}",
        waits[1]
    );
}

#[test]
fn three_hundred_images_get_a_fast_first_tag() {
    let mut h = harness(Policy::tagstorm(), 3);
    let up = h.upload(1, vec![low(); 300]);
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&[(up, 300)]);
    let first = h.log.tagged.values().map(|t| t.0).min().unwrap();
    assert!(first < Time::from_secs(10), "first tag at {first:?}");
    assert_eq!(h.log.upstream_429, 0);
}

#[test]
fn every_upload_of_a_crowd_gets_a_fast_first_tag() {
    // Heads are served before everyone's tail, so a queue full of other uploads' tails does
    // not delay a new upload's first images: no upload may go wholly to the Batch API.
    for (users, images) in [(5, 300), (10, 150), (3, 1_000)] {
        let mut h = harness(Policy::tagstorm(), 11);
        let ups: Vec<(UploadId, u32)> = (0..users)
            .map(|u| (h.upload(u + 1, vec![low(); images as usize]), images))
            .collect();
        h.run(Duration::from_secs(48 * 3600));
        h.assert_all_terminal_once(&ups);
        for &(up, _) in &ups {
            let first = h
                .log
                .tagged
                .iter()
                .filter(|(img, _)| img.upload == up)
                .map(|(_, t)| t.0)
                .min()
                .unwrap();
            assert!(
                first < Time::from_secs(30),
                "{users} × {images}: {up} first tag at {first:?}"
            );
        }
    }
}

/// A small upload queued behind a large one of the same workspace: `smallest-upload` (the
/// tagstorm preset) serves it first, so it completes in seconds; `arrival` makes it wait for the
/// large upload's tail.
#[test]
fn smallest_upload_first_lets_a_small_upload_pass_a_large_ones_tail() {
    let mut took = Vec::new();
    for order in [RealtimeOrder::SmallestUpload, RealtimeOrder::Arrival] {
        let policy = Policy {
            realtime_order: order,
            ..Policy::tagstorm()
        };
        let mut h = harness(policy, 3);
        let large = h.upload(1, vec![low(); 300]);
        h.run(Duration::from_secs(30));
        let small = h.upload(1, vec![low(); 10]);
        h.run(Duration::from_secs(48 * 3600));
        h.assert_all_terminal_once(&[(large, 300), (small, 10)]);
        // Every image went realtime: the large upload fits its deadline there.
        assert_eq!(h.log.batches_created, 0);
        let done = |up| h.log.upload_complete[&up] - h.log.upload_start[&up];
        assert!(done(small) < done(large), "{order:?}");
        took.push(done(small));
    }
    assert!(
        took[0] < Duration::from_secs(20),
        "smallest first: {:?}",
        took[0]
    );
    assert!(took[1] > Duration::from_secs(120), "arrival: {:?}", took[1]);
}

/// Smallest first is aged: a steady stream of small uploads in the same workspace, more than
/// the account can carry, passes a large upload only for a while (about eight times its own
/// length), not for as long as the stream lasts.
#[test]
fn a_stream_of_small_uploads_does_not_starve_a_large_one() {
    let mut h = harness(Policy::tagstorm(), 5);
    let large = h.upload(1, vec![low(); 300]);
    let mut small = Vec::new();
    // Six images every 5 s for an hour: 1.2 images a second, against Tier 1's 1.15.
    for _ in 0..720 {
        h.run(Duration::from_secs(5));
        small.push((h.upload(1, vec![low(); 6]), 6));
    }
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&[(large, 300)]);
    h.assert_all_terminal_once(&small);
    let done = h.log.upload_complete[&large] - h.log.upload_start[&large];
    assert!(
        // 2,846 s here; without the aging it waits for the stream's end, 3,895 s.
        done < Duration::from_secs(3400),
        "the large upload took {done:?}"
    );
}

#[test]
fn seed_proposed_splits_large_uploads_into_parallel_batches_of_200() {
    let mut h = harness(Policy::seed_proposed(), 4);
    let up = h.upload(1, vec![low(); 450]);
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&[(up, 450)]);
    assert_eq!(h.log.batches_created, 3);
}

// ---- the seed's bookkeeping bugs (SPEC §1), one named regression each ------------------------

/// Drives one batch by hand up to its `CreateBatch` action.
fn up_to_create(policy: Policy) -> (Engine, BatchRef, Vec<ImageId>, String) {
    let mut e = Engine::new(Config::new(policy, tier1())).unwrap();
    let now = Time::ZERO;
    e.handle_upload(
        now,
        Upload {
            workspace: WorkspaceId(1),
            images: vec![low(); 300],
            deadline: None,
        },
    )
    .unwrap();
    let Some(Action::UploadBatchFile { batch, images, .. }) = e.poll_action() else {
        panic!("expected a batch file")
    };
    for img in &images {
        assert_eq!(
            e.stage(*img),
            Some(Stage::Preparing),
            "not pending before upstream accepts"
        );
    }
    e.handle_file_uploaded(now, batch, Ok("file-1".into()));
    let file_id = std::iter::from_fn(|| e.poll_action())
        .find_map(|a| match a {
            Action::CreateBatch { batch: b, file_id } if b == batch => Some(file_id),
            _ => None,
        })
        .expect("a create for the uploaded file");
    (e, batch, images, file_id)
}

#[test]
fn regression_batch_id_is_recorded_before_anything_waits_on_it() {
    let (mut e, batch, images, _) = up_to_create(Policy::seed_proposed());
    let now = Time::from_secs(1);
    e.handle_batch_created(now, batch, Ok("batch_abc".into()));
    assert_eq!(e.batch_id(batch), Some("batch_abc"));
    assert!(images.iter().all(|i| e.stage(*i) == Some(Stage::Submitted)));
    let wake = e.poll_timeout().expect("a poll is scheduled");
    e.handle_timeout(wake);
    assert_eq!(
        e.poll_action(),
        Some(Action::PollBatch {
            batch,
            batch_id: "batch_abc".into()
        }),
        "the poll carries the recorded id"
    );
}

#[test]
fn regression_pending_only_after_acceptance_and_rolled_back_on_failure() {
    let (mut e, batch, images, _) = up_to_create(Policy::seed_proposed());
    e.handle_batch_created(
        Time::from_secs(1),
        batch,
        Err(UpstreamError {
            status: Some(500),
            message: "boom".into(),
        }),
    );
    for img in &images {
        assert_eq!(
            e.stage(*img),
            Some(Stage::Queued),
            "{img} rolled back, not pending"
        );
    }
    assert_eq!(e.batch_id(batch), None);
    // The images are not lost: a new batch is built for them after a backoff.
    let wake = e.poll_timeout().expect("a retry is scheduled");
    e.handle_timeout(wake);
    let Some(Action::UploadBatchFile { images: again, .. }) = e.poll_action() else {
        panic!("expected a new batch")
    };
    assert_eq!(again, images);
}

#[test]
fn regression_polling_continues_past_one_hour() {
    let mut h = harness(Policy::tagstorm(), 5);
    h.batch_turnaround = Duration::from_secs(5 * 3600);
    let up = h.upload(1, vec![low(); 3_000]);
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&[(up, 3_000)]);
    assert!(h.log.batches_created > 0);
    for (id, first) in &h.log.first_poll {
        assert!(
            h.log.last_poll[id] - *first > Duration::from_secs(4 * 3600),
            "{id} stopped polling early"
        );
    }
    assert!(
        h.log.failed.is_empty(),
        "{:?}",
        h.log.failed.values().next()
    );
}

#[test]
fn seed_current_gives_up_after_an_hour_but_says_so() {
    let mut h = harness(Policy::seed_current(), 6);
    h.batch_turnaround = Duration::from_secs(5 * 3600);
    let up = h.upload(1, vec![low(); 300]);
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&[(up, 300)]);
    assert!(
        h.log
            .failed
            .values()
            .all(|(r, _)| matches!(r, FailReason::PollingAbandoned { .. }))
    );
    assert_eq!(h.log.failed.len(), 300);
}

/// One 3,000-image upload under tagstorm whose first batch upstream never ends by itself
/// (`stuck`: it ends once cancelled; else it ignores the cancel too), run until idle. Every
/// image must end tagged; returns the harness and the one cancel (batch id, when).
fn unended_batch(stuck: bool) -> (Harness, String, Time) {
    let mut h = harness(Policy::tagstorm(), 8);
    h.batch_turnaround = Duration::from_secs(3600);
    if stuck {
        h.stuck_next_batches = 1;
    } else {
        h.lost_next_batches = 1;
    }
    let up = h.upload(1, vec![low(); 3_000]);
    h.run(Duration::from_secs(72 * 3600));
    h.assert_all_terminal_once(&[(up, 3_000)]);
    assert!(
        h.log.failed.is_empty(),
        "{:?}",
        h.log.failed.values().next()
    );
    assert_eq!(h.engine.stats().batches_overdue, 1);
    let Some((id, at)) = h.log.cancels.first() else {
        panic!("no cancel")
    };
    let (id, at) = (id.clone(), *at);
    // Cancelled at 25 h (polls run every 30 s).
    let first = h.log.first_poll[&id];
    assert!(
        at >= first + Duration::from_secs(24 * 3600),
        "cancelled at {at:?}"
    );
    assert!(
        at <= Time::ZERO + Duration::from_secs(26 * 3600),
        "cancelled at {at:?}"
    );
    (h, id, at)
}

#[test]
fn a_batch_upstream_never_ends_is_cancelled_and_its_images_go_round_again() {
    // Upstream should end every batch within 24 h; one that it never ends would leave its
    // images pending forever. tagstorm cancels it at 25 h, polls until it has ended, then
    // batches its images again. Its tokens stay counted in the queue until it has ended.
    let (h, id, at) = unended_batch(true);
    // Upstream took the cancel (it answered `cancelling`): asked once.
    assert_eq!(h.log.cancels.len(), 1, "{:?}", h.log.cancels);
    // Polled once more after the cancel (to see it cancelled), then no more; the stuck
    // batch's images were tagged after it.
    let last = h.log.last_poll[&id];
    assert!(
        last > at && last < at + Duration::from_secs(600),
        "{last:?}"
    );
    assert!(h.log.tagged.values().any(|(t, _)| *t > at));
}

#[test]
fn a_batch_that_ignores_its_cancel_is_let_go_an_hour_later() {
    let (h, id, at) = unended_batch(false);
    // Asked again every 5 minutes while upstream still said `in_progress`, within the grace.
    let grace = tagstorm_core::engine::CANCEL_GRACE;
    let retry = tagstorm_core::engine::CANCEL_RETRY;
    assert_eq!(
        h.log.cancels.len() as u32,
        grace.as_secs() as u32 / retry.as_secs() as u32
    );
    for pair in h.log.cancels.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= retry && gap < retry + Duration::from_secs(60),
            "{gap:?}"
        );
    }
    // Polled through the grace, then let go; the images went round again.
    let last = h.log.last_poll[&id];
    assert!(last >= at + tagstorm_core::engine::CANCEL_GRACE, "{last:?}");
    assert!(last < at + tagstorm_core::engine::CANCEL_GRACE + Duration::from_secs(600));
    assert!(h.log.tagged.values().any(|(t, _)| *t > last));
}

#[test]
fn work_held_by_a_full_batch_queue_does_not_wake_core_every_millisecond() {
    // seed-proposed batches 3,000 images in batches of 200; Tier 1's queue takes about 700
    // lines, so the rest waits for room. The workspace's per-hour batch budget still has room,
    // which used to schedule the next try "when it refills", that is at once: core woke every
    // millisecond until a batch ended (600,000 times in these ten minutes).
    let mut policy = Policy::seed_proposed();
    policy.workspace_batches_per_hour = Some(10);
    policy.workspace_images_per_hour = Some(100_000);
    let mut h = harness(policy, 4);
    h.batch_turnaround = Duration::from_secs(2 * 3600);
    h.upload(1, vec![low(); 3_000]);
    h.run(Duration::from_secs(600));
    assert!(h.log.batches_created >= 1);
    assert!(h.wakeups < 1_000, "{} wake-ups", h.wakeups);
}

#[test]
fn images_of_a_batch_cancelled_as_overdue_fail_as_overdue_once_their_attempts_are_spent() {
    let mut policy = Policy::tagstorm();
    policy.batch_max_attempts = 1;
    let mut h = harness(policy, 8);
    h.batch_turnaround = Duration::from_secs(3600);
    h.stuck_next_batches = 1;
    let up = h.upload(1, vec![low(); 3_000]);
    h.run(Duration::from_secs(72 * 3600));
    h.assert_all_terminal_once(&[(up, 3_000)]);
    assert!(!h.log.failed.is_empty());
    for (reason, _) in h.log.failed.values() {
        assert_eq!(
            *reason,
            FailReason::BatchAttemptsExhausted {
                last: "batch_overdue".into()
            }
        );
    }
}

#[test]
fn a_lost_cancel_is_sent_again_and_the_batch_ends_with_its_results() {
    // The first cancel request never reaches upstream. Core asks again five minutes later,
    // upstream cancels, and the batch ends well within the grace: polled to its end, not let
    // go of with its tokens possibly still held upstream.
    let mut h = harness(Policy::tagstorm(), 8);
    h.batch_turnaround = Duration::from_secs(3600);
    h.stuck_next_batches = 1;
    h.drop_next_cancels = 1;
    let up = h.upload(1, vec![low(); 3_000]);
    h.run(Duration::from_secs(72 * 3600));
    h.assert_all_terminal_once(&[(up, 3_000)]);
    let [(id, first), (again_id, again)] = &h.log.cancels[..] else {
        panic!("two cancels expected: {:?}", h.log.cancels)
    };
    assert_eq!(id, again_id);
    let retry = tagstorm_core::engine::CANCEL_RETRY;
    assert!(*again >= *first + retry && *again < *first + retry + Duration::from_secs(60));
    let last = h.log.last_poll[id];
    assert!(
        last > *again && last < *again + Duration::from_secs(600),
        "{last:?}"
    );
}

#[test]
fn an_expired_batchs_leftovers_go_realtime_when_that_is_sooner_than_another_batch() {
    // Half of a 3,000-image batch expires unfinished at 24 h. tagstorm (latency first) sends
    // the leftovers realtime as far as realtime can tag them before another batch would come
    // back (here the first few hundred: 1,500 images take about 21 minutes of Tier 1 TPM,
    // against batches that have been taking 20), and the rest in a batch; seed-proposed (a
    // fixed threshold) batches them all again. tagstorm's batches are made as large as the
    // upload here (its preset splits them by 200), so one batch holds the 3,000.
    let one_batch = Policy {
        max_images_per_batch: 5_000,
        ..Policy::tagstorm()
    };
    for (policy, realtime) in [(one_batch, true), (Policy::seed_proposed(), false)] {
        let mut h = harness(policy, 9);
        h.expire_next_batches = 1;
        let up = h.upload(1, vec![low(); 3_000]);
        h.run(Duration::from_secs(72 * 3600));
        h.assert_all_terminal_once(&[(up, 3_000)]);
        let expiry = Time::from_secs(24 * 3600);
        let late: Vec<ImageId> = h
            .log
            .tagged
            .iter()
            .filter(|(_, t)| t.0 > expiry)
            .map(|(i, _)| *i)
            .collect();
        assert!(!late.is_empty());
        let via_realtime = late
            .iter()
            .filter(|i| h.log.tagged_realtime.contains(i))
            .count();
        if realtime {
            assert!(via_realtime > 100, "{via_realtime} of {}", late.len());
        } else {
            assert_eq!(via_realtime, 0);
        }
    }
}

#[test]
fn without_an_overdue_limit_a_batch_upstream_never_ends_keeps_its_images_pending() {
    // The same fault under a policy that waits for upstream (seed-proposed): what the limit is for.
    let mut h = harness(Policy::seed_proposed(), 8);
    h.batch_turnaround = Duration::from_secs(3600);
    h.stuck_next_batches = 1;
    let up = h.upload(1, vec![low(); 300]);
    h.run(Duration::from_secs(72 * 3600));
    assert!(h.log.cancels.is_empty());
    assert_eq!(h.engine.stats().batches_overdue, 0);
    let pending = (0..300)
        .filter(|&index| {
            let img = ImageId { upload: up, index };
            !h.engine.stage(img).expect("known").is_terminal()
        })
        .count();
    assert!(
        pending > 0,
        "the stuck batch's images should still be pending"
    );
}

#[test]
fn regression_failed_result_download_is_retried_and_surfaced() {
    let mut h = harness(Policy::tagstorm(), 7);
    h.fail_next_downloads = 2;
    let up = h.upload(1, vec![low(); 3_000]);
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&[(up, 3_000)]);
    assert_eq!(h.log.download_failures_surfaced, 2);
    assert_eq!(h.log.tagged.len(), 3_000);

    // A failure answer delivered twice is one failed attempt, not two: with five attempts
    // allowed, four real failures (eight answers) still end in a fifth, successful download.
    let mut h = harness(Policy::tagstorm(), 7);
    h.fail_next_downloads = 4;
    h.duplicate_download_failures = true;
    let up = h.upload(1, vec![low(); 3_000]);
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&[(up, 3_000)]);
    assert_eq!(h.log.download_failures_surfaced, 4);
    assert_eq!(h.log.tagged.len(), 3_000);

    // When downloads keep failing, the images fail with that reason instead of staying pending.
    let mut h = harness(Policy::tagstorm(), 7);
    h.fail_next_downloads = 1_000;
    let up = h.upload(1, vec![low(); 3_000]);
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&[(up, 3_000)]);
    assert!(
        h.log
            .failed
            .values()
            .any(|(r, _)| matches!(r, FailReason::DownloadFailed { .. }))
    );
}

// ---- bad input ------------------------------------------------------------------------------

#[test]
fn bad_uploads_are_refused_and_change_nothing() {
    let mut e = Engine::new(Config::new(Policy::tagstorm(), tier1())).unwrap();
    let now = Time::ZERO;
    let up = |images| Upload {
        workspace: WorkspaceId(1),
        images,
        deadline: None,
    };
    assert_eq!(e.handle_upload(now, up(vec![])), Err(UploadError::Empty));
    assert_eq!(
        e.handle_upload(now, up(vec![low(), image(0, 10, Detail::High)])),
        Err(UploadError::ZeroSize { index: 1 })
    );
    assert_eq!(e.poll_action(), None);
    assert_eq!(e.poll_event(), None);
    assert!(e.is_idle());
    assert_eq!(
        e.handle_upload(now, up(vec![low()])).unwrap().0,
        0,
        "refused uploads took no id"
    );
}

#[test]
fn bad_policies_are_refused_with_the_field() {
    let cases = [
        (
            Policy {
                chunk_size: 0,
                ..Policy::seed_proposed()
            },
            "chunk_size",
        ),
        (
            Policy {
                workspace_tpm: Some(0),
                ..Policy::seed_proposed()
            },
            "workspace_tpm",
        ),
        (
            Policy {
                realtime_max_images: 60,
                ..Policy::seed_proposed()
            },
            "realtime_chunked_max",
        ),
        (
            Policy {
                poll_interval_ms: 0,
                ..Policy::tagstorm()
            },
            "poll_interval_ms",
        ),
    ];
    for (policy, field) in cases {
        let err = Engine::new(Config::new(policy, tier1()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(field), "{err:?} should name {field}");
    }
}

#[test]
fn answers_to_unknown_ids_are_ignored() {
    let mut e = Engine::new(Config::new(Policy::tagstorm(), tier1())).unwrap();
    let now = Time::ZERO;
    e.handle_realtime_response(
        now,
        tagstorm_core::RequestId(99),
        tagstorm_core::RealtimeOutcome::Timeout,
    );
    e.handle_batch_created(now, BatchRef(7), Ok("batch_x".into()));
    e.handle_batch_results(now, BatchRef(7), Ok(vec![]));
    assert_eq!(e.poll_action(), None);
    assert!(e.is_idle());
}

// ---- faults ---------------------------------------------------------------------------------

fn faults() -> impl Strategy<Value = Faults> {
    let p = || prop_oneof![Just(0.0), 0.0..0.3f64];
    (
        (p(), p(), p(), p(), p(), p()),
        (p(), p(), p(), p(), p()),
        (p(), p(), p()),
    )
        .prop_map(|((a, b, c, d, e, f), (g, h, i, j, k), (l, m, n))| Faults {
            server_error: a,
            timeout: b,
            extra_429: c,
            upload_fail: d,
            create_fail: e,
            poll_fail: f,
            download_fail: g,
            batch_validation_fail: h,
            batch_token_limit: i,
            batch_expire: j,
            line_fail: k,
            duplicate: l,
            reorder: m,
            junk_lines: n,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn every_image_ends_exactly_once_under_any_faults(
        seed in any::<u64>(),
        faults in faults(),
        policy in prop_oneof![Just(Policy::seed_current()), Just(Policy::seed_proposed()), Just(Policy::tagstorm())],
        sizes in prop::collection::vec(1u32..400, 1..6),
    ) {
        let mut h = harness(policy, seed);
        h.faults = faults;
        h.batch_turnaround = Duration::from_secs(1800);
        let mut uploads = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let id = h.upload(i as u32 % 3, vec![low(); *n as usize]);
            uploads.push((id, *n));
            h.run(Duration::from_secs(5));
        }
        h.run(Duration::from_secs(30 * 86_400));
        h.assert_all_terminal_once(&uploads);
        let terminal = h.log.tagged.len() + h.log.failed.len();
        prop_assert_eq!(terminal as u32, sizes.iter().sum::<u32>());
    }
}

#[test]
fn progress_counts_add_up_and_eta_appears() {
    let mut e = Engine::new(Config::new(Policy::tagstorm(), tier1())).unwrap();
    let up = e
        .handle_upload(
            Time::ZERO,
            Upload {
                workspace: WorkspaceId(1),
                images: vec![low(); 10],
                deadline: None,
            },
        )
        .unwrap();
    let mut sent = Vec::new();
    while let Some(a) = e.poll_action() {
        if let Action::SendRealtime { request, .. } = a {
            sent.push(request);
        }
    }
    let p = e.progress(Time::ZERO, up).unwrap();
    assert_eq!(p.by_stage.iter().sum::<u32>(), 10);
    assert_eq!(p.eta, None);
    let t = Time::from_secs(2);
    e.handle_realtime_response(
        t,
        sent[0],
        tagstorm_core::RealtimeOutcome::Ok {
            usage: Default::default(),
            observed: Default::default(),
        },
    );
    let p = e.progress(t, up).unwrap();
    assert_eq!(p.count(Stage::Completed), 1);
    assert_eq!(
        p.eta,
        Some(Duration::from_secs(18)),
        "9 left at one per 2 s"
    );
    assert!((p.percent() - 10.0).abs() < 1e-9);
    let progress_events = std::iter::from_fn(|| e.poll_event())
        .filter(|ev| matches!(ev, Event::Progress(_)))
        .count();
    assert!(progress_events >= 2);
}

// ---- review: attempt counters, huge charges ---------------------------------------------------

/// `retry_max_attempts` is a u32 the policy accepts up to any value; the per-image counter must
/// reach it, or an image that always fails is retried forever and never ends.
#[test]
fn realtime_retries_end_even_above_255_attempts() {
    let policy = Policy {
        routing: Routing::Threshold,
        realtime_max_images: 100,
        realtime_chunked_max: 100,
        retry_max_attempts: 300,
        retry_base_delay_ms: 10,
        retry_max_delay_ms: 10,
        on_retries_exhausted: tagstorm_core::config::Exhausted::Fail,
        ..Policy::tagstorm()
    };
    let mut h = harness(policy, 11);
    h.faults.server_error = 1.0;
    h.latency = Duration::from_millis(10);
    let up = h.upload(1, vec![low()]);
    h.run(Duration::from_secs(3600));
    h.assert_all_terminal_once(&[(up, 1)]);
    assert_eq!(h.log.realtime_requests, 300);
}

/// The same for `batch_max_attempts`: a batch that always fails validation must end its images.
#[test]
fn batch_attempts_end_even_above_255() {
    let policy = Policy {
        batch_max_attempts: 300,
        retry_base_delay_ms: 10,
        retry_max_delay_ms: 10,
        poll_interval_ms: 1_000,
        poll_max_interval_ms: 1_000,
        ..Policy::seed_proposed()
    };
    let mut h = harness(policy, 12);
    h.faults.batch_validation_fail = 1.0;
    let up = h.upload(1, vec![low(); 60]);
    h.run(Duration::from_secs(30 * 86_400));
    h.assert_all_terminal_once(&[(up, 60)]);
    assert!(
        h.log
            .failed
            .values()
            .all(|(r, _)| matches!(r, FailReason::BatchAttemptsExhausted { .. }))
    );
}

/// `request.image_charge_tokens` is only checked to be non-zero; a huge value (a scenario may
/// set it) must route the images somewhere, not overflow the engine's token sums.
#[test]
fn a_huge_image_charge_does_not_overflow() {
    for policy in [
        Policy::tagstorm(),
        Policy::seed_proposed(),
        Policy::seed_current(),
    ] {
        let request = tagstorm_core::config::RequestShape {
            image_charge_tokens: Some(u64::MAX),
            ..Default::default()
        };
        let cfg = Config::new(policy, tier1()).with_request(request);
        let mut h = Harness::new(cfg, 13);
        let a = h.upload(1, vec![low(); 30]);
        let b = h.upload(2, vec![low(); 3]);
        h.run(Duration::from_secs(30 * 86_400));
        h.assert_all_terminal_once(&[(a, 30), (b, 3)]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// A hostile driver (answers in any order, twice, made up, for the wrong phase or id) can't
    /// make the engine panic, end an image twice or lose one; see `chaos.rs`.
    #[test]
    fn a_hostile_driver_cannot_corrupt_the_engine(
        seed in any::<u64>(),
        policy in prop_oneof![Just(Policy::seed_current()), Just(Policy::seed_proposed()), Just(Policy::tagstorm())],
        steps in 50usize..600,
    ) {
        let mut c = chaos::Chaos::new(Config::new(policy, tier1()).with_seed(seed), seed);
        c.run(steps);
    }
}

/// A status answer delivered twice in the same instant (a retried HTTP call, a duplicated
/// message) must not double the batch's polling from then on.
#[test]
fn a_duplicated_status_answer_does_not_double_polling() {
    let (mut e, batch, _, _) = up_to_create(Policy::seed_proposed());
    e.handle_batch_created(Time::from_secs(1), batch, Ok("batch_abc".into()));
    let running = || {
        Ok(tagstorm_core::BatchStatus {
            state: tagstorm_core::BatchState::InProgress,
            output_file_id: None,
            error_file_id: None,
        })
    };
    for round in 0..3 {
        let wake = e.poll_timeout().expect("a poll is scheduled");
        e.handle_timeout(wake);
        let polls = std::iter::from_fn(|| e.poll_action())
            .filter(|a| matches!(a, Action::PollBatch { .. }))
            .count();
        assert_eq!(polls, 1, "round {round}: one poll per interval");
        let at = wake + Duration::from_millis(100);
        e.handle_batch_status(at, batch, running());
        e.handle_batch_status(at, batch, running());
    }
}

#[test]
fn a_huge_retry_after_does_not_freeze_realtime() {
    for (policy, expect_failed) in [
        (Policy::tagstorm(), false),
        (
            Policy {
                on_retries_exhausted: tagstorm_core::config::Exhausted::Fail,
                ..Policy::tagstorm()
            },
            true,
        ),
    ] {
        let mut e = Engine::new(Config::new(policy, tier1())).unwrap();
        let up = e
            .handle_upload(
                Time::ZERO,
                Upload {
                    workspace: WorkspaceId(1),
                    images: vec![low(); 2],
                    deadline: None,
                },
            )
            .unwrap();
        let sent: Vec<_> = std::iter::from_fn(|| e.poll_action())
            .filter_map(|a| match a {
                Action::SendRealtime { request, .. } => Some(request),
                _ => None,
            })
            .collect();
        e.handle_realtime_response(
            Time::from_secs(1),
            sent[0],
            tagstorm_core::RealtimeOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(u64::MAX)),
                observed: Default::default(),
            },
        );
        let actions: Vec<Action> = std::iter::from_fn(|| e.poll_action()).collect();
        // Whatever the engine still waits for on its own, it is within the cap, not centuries.
        if let Some(next) = e.poll_timeout() {
            assert!(next <= Time::from_secs(1 + 120), "woken at {next:?}");
        }
        let img = ImageId {
            upload: up,
            index: 0,
        };
        if expect_failed {
            assert_eq!(e.stage(img), Some(Stage::Failed));
        } else {
            let batched = actions.iter().any(
                |a| matches!(a, Action::UploadBatchFile { images, .. } if images.contains(&img)),
            );
            assert!(batched, "the image moved to the Batch API: {actions:?}");
        }
    }
}

// ---- per-image bookkeeping under a scripted upstream (see `ledger.rs`) ----------------------

fn bookkeeping_policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::seed_current()),
        Just(Policy::seed_proposed()),
        Just(Policy::tagstorm()),
        Just(Policy {
            on_retries_exhausted: tagstorm_core::config::Exhausted::Fail,
            ..Policy::tagstorm()
        }),
        // Batches cancelled as overdue within the runs, with and without a give-up after the
        // cancel; and workspace quotas, which park heads.
        Just(Policy {
            batch_overdue_ms: Some(3_600_000),
            ..Policy::tagstorm()
        }),
        Just(Policy {
            batch_overdue_ms: Some(3_600_000),
            poll_give_up_ms: Some(5_400_000),
            ..Policy::tagstorm()
        }),
        Just(Policy {
            workspace_rpm: Some(2),
            workspace_tpm: Some(4_000),
            ..Policy::tagstorm()
        }),
        // Per-hour batch budgets hold work back; small batches make many of them.
        Just(Policy {
            workspace_batches_per_hour: Some(2),
            workspace_images_per_hour: Some(300),
            max_images_per_batch: 7,
            ..Policy::tagstorm()
        }),
    ]
}

/// Tier 1, or an account so small that pacing, queue holds and never-fitting images are the
/// rule: 3 RPM, 5,000 TPM (one low-detail image at a time) and a batch queue of two images.
fn bookkeeping_account() -> impl Strategy<Value = AccountLimits> {
    let tiny = AccountLimits {
        rpm: std::num::NonZeroU64::new(3).unwrap(),
        tpm: std::num::NonZeroU64::new(5_000).unwrap(),
        rpd: None,
        batch_queue_tokens: std::num::NonZeroU64::new(6_000).unwrap(),
        ..tier1()
    };
    prop_oneof![5 => Just(tier1()), 1 => Just(tiny)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Every image ends exactly once, tagged with an answer for itself (through the channel and
    /// from a batch that held it), never re-sent while an attempt is out, progress agrees with
    /// the events, and once the upstream turns honest nothing is left waiting.
    #[test]
    fn every_image_ends_once_with_its_own_tag(
        seed in any::<u64>(),
        policy in bookkeeping_policy(),
        account in bookkeeping_account(),
        script in prop::collection::vec((any::<u8>(), any::<u16>(), any::<u16>()), 0..200),
    ) {
        let mut l = ledger::Ledger::new(Config::new(policy, account).with_seed(seed));
        l.run(&script);
    }
}

#[test]
fn heads_queued_ahead_are_counted_at_their_own_charge() {
    // 41 uploads of 3 high-detail images (25,517 tokens each at gpt-4o-mini's image rate) put
    // 3.1 M tokens of heads ahead of 150 small uploads at 200,000 TPM: about 16 minutes. Priced
    // at a small upload's charge the queue looked like seconds, and those heads went realtime
    // to wait past the 15-minute deadline; now the router sees the wait and batches them.
    let mut h = harness(Policy::tagstorm(), 5);
    let high = image(1024, 1024, Detail::High);
    let mut ups: Vec<(UploadId, u32)> = (0..41).map(|u| (h.upload(u, vec![high; 3]), 3)).collect();
    let lows: Vec<UploadId> = (100..250).map(|u| h.upload(u, vec![low(); 3])).collect();
    ups.extend(lows.iter().map(|&u| (u, 3)));
    h.run(Duration::from_secs(48 * 3600));
    h.assert_all_terminal_once(&ups);
    // The estimate is an estimate (request latency is a running average): a minute's slack.
    // Before, the last of these heads went realtime and was tagged 21 minutes in.
    let deadline = Time::from_secs(16 * 60);
    for &up in &lows {
        for index in 0..3 {
            let img = ImageId { upload: up, index };
            let at = h.log.tagged[&img].0;
            assert!(
                at <= deadline || !h.log.tagged_realtime.contains(&img),
                "{img} went realtime and was tagged at {at:?}, past the deadline"
            );
        }
    }
}

#[test]
fn heads_are_batched_when_the_days_requests_are_spent() {
    // One 3-image upload every 10 s for 20 h at Tier 1 spends its 10,000 requests a day in
    // about 9 h. Realtime then frees one request every 8.6 s, less than the uploads bring, so
    // heads sent realtime waited hours (2.7 h at worst); the estimate now counts the day's
    // requests left, and such heads go to the Batch API (20 minutes here) instead.
    let mut h = harness(Policy::tagstorm(), 6);
    let mut ups = Vec::new();
    for i in 0..(20 * 360) {
        ups.push((h.upload(i % 50, vec![low(); 3]), 3));
        h.run(Duration::from_secs(10));
    }
    h.run(Duration::from_secs(72 * 3600));
    h.assert_all_terminal_once(&ups);
    let worst = ups
        .iter()
        .map(|&(up, _)| {
            let first = (0..3)
                .map(|index| h.log.tagged[&ImageId { upload: up, index }].0)
                .min()
                .unwrap();
            first - h.log.upload_start[&up]
        })
        .max()
        .unwrap();
    assert!(
        worst < Duration::from_secs(30 * 60),
        "worst first tag after {worst:?}"
    );
    assert!(h.log.batches_created > 0);
}
