//! Batch lifecycles and routing edges driven step by step: each test scripts upstream's answers to one upload and pins where every image ends.

use std::collections::BTreeMap;
use std::time::Duration;

use tagstorm_core::config::RequestShape;
use tagstorm_core::split::{LineParams, MAX_BATCH_FILE_BYTES, MAX_BATCH_REQUESTS, render_line};
use tagstorm_core::tokens::{Detail, Model, Usage};
use tagstorm_core::{
    AccountLimits, Action, BatchRef, BatchState, BatchStatus, Config, Engine, Event, FailReason,
    ImageId, ImageInput, LineResult, Policy, RealtimeOutcome, Stage, Time, Upload, UploadId,
    UpstreamError, WorkspaceId,
};

use crate::harness::{image, low};

fn tier(t: u8) -> AccountLimits {
    AccountLimits::tier(Model::Gpt4oMini, t).unwrap()
}

fn engine(policy: Policy, t: u8) -> Engine {
    Engine::new(Config::new(policy, tier(t))).unwrap()
}

fn upload(e: &mut Engine, now: Time, images: Vec<ImageInput>) -> UploadId {
    e.handle_upload(
        now,
        Upload {
            workspace: WorkspaceId(1),
            images,
            deadline: None,
        },
    )
    .unwrap()
}

fn actions(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

/// Tags and failures so far, each image once at most.
#[derive(Debug, Default)]
struct Ends {
    tagged: BTreeMap<ImageId, Usage>,
    failed: BTreeMap<ImageId, FailReason>,
    complete: Vec<UploadId>,
}

impl Ends {
    fn collect(&mut self, e: &mut Engine) {
        while let Some(ev) = e.poll_event() {
            match ev {
                Event::ImageTagged { image, usage, .. } => {
                    assert!(
                        !self.failed.contains_key(&image),
                        "{image} failed and tagged"
                    );
                    assert!(self.tagged.insert(image, usage).is_none(), "{image} twice");
                }
                Event::ImageFailed { image, reason, .. } => {
                    assert!(
                        !self.tagged.contains_key(&image),
                        "{image} tagged and failed"
                    );
                    assert!(self.failed.insert(image, reason).is_none(), "{image} twice");
                }
                Event::UploadComplete { upload, .. } => {
                    assert!(!self.complete.contains(&upload));
                    self.complete.push(upload);
                }
                _ => {}
            }
        }
    }

    fn ended(&self) -> usize {
        self.tagged.len() + self.failed.len()
    }
}

fn ok(s: &str) -> Result<String, UpstreamError> {
    Ok(s.to_owned())
}

fn fail(msg: &str) -> UpstreamError {
    UpstreamError {
        status: Some(503),
        message: msg.into(),
    }
}

fn status(state: BatchState) -> Result<BatchStatus, UpstreamError> {
    Ok(BatchStatus {
        state,
        output_file_id: Some("file-out".into()),
        error_file_id: Some("file-err".into()),
    })
}

fn realtime_count(acts: &[Action]) -> usize {
    acts.iter()
        .filter(|a| matches!(a, Action::SendRealtime { .. }))
        .count()
}

/// The batch files core asks to upload: (batch, images, bytes).
fn batch_files(acts: &[Action]) -> Vec<(BatchRef, Vec<ImageId>, u64)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::UploadBatchFile {
                batch,
                images,
                bytes,
                ..
            } => Some((*batch, images.clone(), *bytes)),
            _ => None,
        })
        .collect()
}

/// Takes one batch through upload and create at `now`; returns its upstream id.
fn accept(e: &mut Engine, now: Time, batch: BatchRef) -> String {
    e.handle_file_uploaded(now, batch, ok("file-in"));
    let create = actions(e);
    assert!(
        create
            .iter()
            .any(|a| matches!(a, Action::CreateBatch { batch: b, .. } if *b == batch)),
        "{create:?}"
    );
    let id = format!("batch_{}", batch.0);
    e.handle_batch_created(now, batch, Ok(id.clone()));
    id
}

/// Runs the engine's timers up to `until`, answering every poll of `batch` with `answer` and
/// every other action not at all; returns the actions seen.
fn poll_until(
    e: &mut Engine,
    batch: BatchRef,
    until: Time,
    mut answer: impl FnMut(Time) -> Result<BatchStatus, UpstreamError>,
) -> (Time, Vec<Action>) {
    let mut seen = Vec::new();
    let mut now = Time::ZERO;
    while let Some(t) = e.poll_timeout() {
        if t > until {
            break;
        }
        now = t;
        e.handle_timeout(now);
        for a in actions(e) {
            if let Action::PollBatch { batch: b, .. } = a {
                if b == batch {
                    e.handle_batch_status(now, batch, answer(now));
                    continue;
                }
            }
            seen.push(a);
        }
    }
    (now, seen)
}

/// seed-current gives up polling after an hour (the seed's bug, made visible). When every poll
/// fails, the hour passes just the same: its images must fail with `PollingAbandoned`, not wait
/// forever for a status answer that never comes.
#[test]
fn polling_gives_up_on_time_even_when_every_poll_fails() {
    let mut e = engine(Policy::seed_current(), 1);
    let up = upload(&mut e, Time::ZERO, vec![low(); 20]);
    let files = batch_files(&actions(&mut e));
    assert_eq!(files.len(), 1);
    accept(&mut e, Time::ZERO, files[0].0);
    let (_, _) = poll_until(&mut e, files[0].0, Time::from_secs(3 * 3600), |_| {
        Err(fail("connection reset"))
    });
    let mut ends = Ends::default();
    ends.collect(&mut e);
    assert_eq!(
        ends.ended(),
        20,
        "images left waiting: {:?}",
        e.progress(Time::ZERO, up)
    );
    assert!(
        ends.failed
            .values()
            .all(|r| matches!(r, FailReason::PollingAbandoned { .. }))
    );
}

// ---- routing and splitting at the thresholds ---------------------------------------------------

/// Where an upload of `n` images goes at once: (realtime requests, images per batch file).
fn first_actions(policy: Policy, t: u8, n: usize) -> (usize, Vec<usize>) {
    let mut e = engine(policy, t);
    upload(&mut e, Time::ZERO, vec![low(); n]);
    let acts = actions(&mut e);
    let files = batch_files(&acts).iter().map(|f| f.1.len()).collect();
    (realtime_count(&acts), files)
}

#[test]
fn uploads_at_each_preset_threshold_go_where_the_policy_says() {
    let cur = Policy::seed_current;
    let prop = Policy::seed_proposed;
    for (name, policy, n, expect) in [
        ("seed-current 1", cur(), 1, (1, vec![])),
        ("seed-current 19", cur(), 19, (19, vec![])),
        ("seed-current 20", cur(), 20, (0, vec![20])),
        ("seed-proposed 5", prop(), 5, (5, vec![])),
        // 6 to 50: chunks of 5, the first at once.
        ("seed-proposed 6", prop(), 6, (5, vec![])),
        ("seed-proposed 50", prop(), 50, (5, vec![])),
        ("seed-proposed 51", prop(), 51, (0, vec![51])),
        ("seed-proposed 200", prop(), 200, (0, vec![200])),
        ("seed-proposed 201", prop(), 201, (0, vec![200, 1])),
        ("tagstorm 1", Policy::tagstorm(), 1, (1, vec![])),
    ] {
        assert_eq!(first_actions(policy, 1, n), expect, "{name}");
    }
}

/// A chunked upload releases its chunks on time and every image of it ends.
#[test]
fn a_chunked_upload_releases_every_chunk() {
    let mut e = engine(Policy::seed_proposed(), 1);
    let up = upload(&mut e, Time::ZERO, vec![low(); 6]);
    let mut ends = Ends::default();
    let mut sent_at = Vec::new();
    let mut now = Time::ZERO;
    loop {
        for a in actions(&mut e) {
            if let Action::SendRealtime { request, .. } = a {
                sent_at.push(now);
                let usage = Usage {
                    input_tokens: 2_850,
                    output_tokens: 40,
                };
                let observed = Default::default();
                e.handle_realtime_response(now, request, RealtimeOutcome::Ok { usage, observed });
            }
        }
        ends.collect(&mut e);
        match e.poll_timeout() {
            Some(t) => {
                now = t;
                e.handle_timeout(now);
            }
            None => break,
        }
    }
    assert_eq!(
        sent_at,
        [vec![Time::ZERO; 5], vec![Time::from_secs(2)]].concat()
    );
    assert_eq!(ends.tagged.len(), 6);
    assert_eq!(ends.complete, [up]);
}

/// 50,000 lines is the Batch API's cap per file: one more image makes a second batch.
#[test]
fn fifty_thousand_lines_make_one_batch_and_one_more_makes_two() {
    let policy = || Policy {
        max_images_per_batch: MAX_BATCH_REQUESTS,
        ..Policy::seed_current()
    };
    // Tier 4's queue holds 1e9 tokens, room for every line at once.
    assert_eq!(first_actions(policy(), 4, 50_000), (0, vec![50_000]));
    assert_eq!(first_actions(policy(), 4, 50_001), (0, vec![50_000, 1]));
}

/// Files are cut by their real size: no file above 200 MB, and each full one would pass it
/// with one more line.
#[test]
fn batch_files_stay_within_200_mb_and_are_full() {
    let mut e = engine(Policy::seed_current(), 4);
    let big = ImageInput {
        url_len: 2_000_000,
        ..low()
    };
    upload(&mut e, Time::ZERO, vec![big; 250]);
    let files = batch_files(&actions(&mut e));
    let sizes: Vec<usize> = files.iter().map(|f| f.1.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 250);
    assert!(sizes.len() >= 3, "{sizes:?}");
    for (i, (_, images, bytes)) in files.iter().enumerate() {
        assert!(*bytes <= MAX_BATCH_FILE_BYTES, "file {i}: {bytes} bytes");
        let per_line = bytes / images.len() as u64;
        if i + 1 < files.len() {
            assert!(bytes + per_line > MAX_BATCH_FILE_BYTES, "file {i} not full");
        }
    }
}

/// The size core counts for a file covers the lines as they are really written, custom_id and
/// detail included, and overstates each by at most a byte.
#[test]
fn batch_file_bytes_cover_the_rendered_lines() {
    let prompt = RequestShape::default().prompt;
    let mut e = engine(Policy::seed_current(), 4);
    // Uploads 0..=10 so that custom_ids have one and two digits on both sides.
    for _ in 0..10 {
        upload(&mut e, Time::ZERO, vec![low()]);
    }
    let mixed: Vec<ImageInput> = (0..25)
        .map(|i| {
            let detail = [Detail::Low, Detail::High, Detail::Auto][i % 3];
            ImageInput {
                url_len: 40 + i as u32 * 1_000,
                ..image(1024, 768, detail)
            }
        })
        .collect();
    let up = upload(&mut e, Time::ZERO, mixed.clone());
    let files = batch_files(&actions(&mut e));
    let (_, images, bytes) = files
        .iter()
        .find(|f| f.1.iter().all(|i| i.upload == up))
        .expect("the mixed upload's batch");
    assert_eq!(images.len(), 25);
    let real: u64 = images
        .iter()
        .map(|img| {
            let input = mixed[img.index as usize];
            let url = "x".repeat(input.url_len as usize);
            let line = render_line(&LineParams {
                custom_id: &img.custom_id(),
                model: Model::Gpt4oMini,
                prompt: &prompt,
                image_url: &url,
                detail: input.spec.detail,
                max_tokens: RequestShape::default().max_tokens,
            });
            line.len() as u64 + 1
        })
        .sum();
    assert!(*bytes >= real, "counted {bytes}, written {real}");
    assert!(*bytes <= real + 25, "counted {bytes}, written {real}");
}

/// A line that can never fit a batch file fails that image alone, once, as too large; the
/// rest of the upload is batched.
#[test]
fn a_line_above_200_mb_fails_alone() {
    let mut e = engine(Policy::seed_current(), 4);
    let mut images = vec![low(); 25];
    images[7].url_len = 200_000_000;
    let up = upload(&mut e, Time::ZERO, images);
    let files = batch_files(&actions(&mut e));
    let mut ends = Ends::default();
    ends.collect(&mut e);
    let bad = ImageId {
        upload: up,
        index: 7,
    };
    assert_eq!(ends.failed.len(), 1);
    assert!(matches!(ends.failed[&bad], FailReason::TooLarge { .. }));
    let batched: usize = files.iter().map(|f| f.1.len()).sum();
    assert_eq!(batched, 24);
    assert!(files.iter().all(|f| !f.1.contains(&bad)));
}

// ---- batch lifecycles ----------------------------------------------------------------------------

/// Every batch file's images, by batch.
type Files = BTreeMap<BatchRef, Vec<ImageId>>;

fn usage_of(image: ImageId) -> Usage {
    Usage {
        input_tokens: 2_850,
        output_tokens: u64::from(image.index),
    }
}

/// Drives the engine to idle: file uploads and creates succeed, each batch's first poll is
/// answered with `state(batch)`, its results with `lines(batch, images)`, realtime with 200s.
/// Returns the ends and every batch file's images.
fn drive(
    e: &mut Engine,
    state: impl FnMut(BatchRef) -> BatchState,
    lines: impl FnMut(BatchRef, &[ImageId]) -> Vec<LineResult>,
) -> (Ends, Files) {
    let ok = |image| RealtimeOutcome::Ok {
        usage: usage_of(image),
        observed: Default::default(),
    };
    let (ends, files, _) = drive_with(e, ok, state, lines);
    (ends, files)
}

/// [`drive`] with realtime answered by `realtime(image)`; also returns every realtime request
/// in the order sent, with the time it was sent.
fn drive_with(
    e: &mut Engine,
    mut realtime: impl FnMut(ImageId) -> RealtimeOutcome,
    mut state: impl FnMut(BatchRef) -> BatchState,
    mut lines: impl FnMut(BatchRef, &[ImageId]) -> Vec<LineResult>,
) -> (Ends, Files, Vec<(Time, ImageId)>) {
    let mut ends = Ends::default();
    let mut files = BTreeMap::new();
    let mut sent = Vec::new();
    let mut now = Time::ZERO;
    for _ in 0..100_000 {
        let acts = actions(e);
        let answered = !acts.is_empty();
        for a in acts {
            match a {
                Action::SendRealtime { request, image, .. } => {
                    sent.push((now, image));
                    e.handle_realtime_response(now, request, realtime(image));
                }
                Action::UploadBatchFile { batch, images, .. } => {
                    files.insert(batch, images);
                    e.handle_file_uploaded(now, batch, ok("file-in"));
                }
                Action::CreateBatch { batch, .. } => {
                    e.handle_batch_created(now, batch, Ok(format!("batch_{}", batch.0)));
                }
                Action::PollBatch { batch, .. } => {
                    e.handle_batch_status(now, batch, status(state(batch)));
                }
                Action::DownloadResults { batch, .. } => {
                    let l = lines(batch, &files[&batch]);
                    e.handle_batch_results(now, batch, Ok(l));
                }
                Action::CancelBatch { batch, .. } => panic!("{batch} given up"),
            }
        }
        ends.collect(e);
        if answered {
            continue;
        }
        match e.poll_timeout() {
            Some(t) => {
                now = t;
                e.handle_timeout(now);
            }
            None => break,
        }
    }
    assert!(
        e.is_idle(),
        "the engine has nothing left to do but is not idle"
    );
    (ends, files, sent)
}

fn all_lines(images: &[ImageId]) -> Vec<LineResult> {
    images
        .iter()
        .map(|i| LineResult {
            custom_id: i.custom_id(),
            outcome: Ok(usage_of(*i)),
        })
        .collect()
}

/// An expired batch's finished lines are tagged; the rest go round again, and an image counts
/// one Batch API trip per expired, cancelled or failed batch until `batch_max_attempts` (3).
#[test]
fn expired_cancelled_and_failed_batches_each_count_one_trip() {
    let mut e = engine(Policy::seed_proposed(), 1);
    let up = upload(&mut e, Time::ZERO, vec![low(); 60]);
    let script = [
        BatchState::Expired,
        BatchState::Cancelled,
        BatchState::Failed {
            code: "invalid_json_line".into(),
        },
    ];
    let (ends, files) = drive(
        &mut e,
        |b| script[b.0 as usize].clone(),
        |b, images| {
            // The expired batch finished its even lines; the cancelled one nothing.
            let done: Vec<ImageId> = match b.0 {
                0 => images
                    .iter()
                    .copied()
                    .filter(|i| i.index % 2 == 0)
                    .collect(),
                _ => Vec::new(),
            };
            all_lines(&done)
        },
    );
    let sizes: Vec<usize> = files.values().map(Vec::len).collect();
    assert_eq!(sizes, [60, 30, 30]);
    assert_eq!(ends.tagged.len(), 30);
    for (img, usage) in &ends.tagged {
        assert_eq!(img.index % 2, 0);
        assert_eq!(*usage, usage_of(*img), "{img} has another image's tag");
    }
    assert_eq!(ends.failed.len(), 30);
    for reason in ends.failed.values() {
        assert_eq!(
            reason,
            &FailReason::BatchAttemptsExhausted {
                last: "invalid_json_line".into()
            }
        );
    }
    assert_eq!(ends.complete, [up]);
}

/// A batch that upstream keeps refusing for the enqueued-token limit is held and retried, and
/// its images fail as queue_full after the holds run out instead of cycling forever.
#[test]
fn token_limit_exceeded_forever_ends_in_queue_full() {
    let mut e = engine(Policy::tagstorm(), 1);
    let up = e
        .handle_upload(
            Time::ZERO,
            Upload {
                workspace: WorkspaceId(1),
                images: vec![low(); 100],
                // A deadline realtime can't meet sends all but the head to the Batch API.
                deadline: Some(Duration::from_millis(1)),
            },
        )
        .unwrap();
    let (ends, files) = drive(
        &mut e,
        |_| BatchState::Failed {
            code: "token_limit_exceeded".into(),
        },
        |_, _| Vec::new(),
    );
    let batched: Vec<ImageId> = files[&BatchRef(0)].clone();
    assert!(!batched.is_empty());
    for img in &batched {
        assert_eq!(ends.failed.get(img), Some(&FailReason::QueueFull), "{img}");
    }
    // 24 holds, then the 25th refusal fails them.
    assert_eq!(files.len(), 25);
    assert_eq!(ends.ended(), 100);
    assert_eq!(ends.complete, [up]);
    assert_eq!(e.stats().batches_created, 25);
}

/// An engine under `policy` (its holds doubling up to a 30-minute turnaround) whose batch queue
/// holds `room` low-detail images.
fn queue_of(room: u64, policy: Policy) -> Engine {
    let q = {
        let mut e = engine(Policy::seed_current(), 1);
        let up = upload(&mut e, Time::ZERO, vec![low()]);
        e.image_tokens(ImageId {
            upload: up,
            index: 0,
        })
        .unwrap()
        .0
    };
    let mut account = tier(1);
    account.batch_queue_tokens = std::num::NonZeroU64::new(room * q).unwrap();
    let policy = Policy {
        batch_turnaround_estimate_ms: 30 * 60_000,
        ..policy
    };
    Engine::new(Config::new(policy, account)).unwrap()
}

/// Drives `e` to `until_s`: uploads of `(second, images)` arrive, file uploads and creates
/// succeed, every poll is answered with `state(now, batch)`, results with every line tagged.
/// Returns (second, images) of every batch file, in order.
fn batch_starts(
    e: &mut Engine,
    mut uploads: Vec<(u64, usize)>,
    until_s: u64,
    mut state: impl FnMut(Time, BatchRef) -> BatchState,
) -> Vec<(u64, usize)> {
    let mut now = Time::ZERO;
    let mut started = Vec::new();
    let mut images: BTreeMap<BatchRef, Vec<ImageId>> = BTreeMap::new();
    uploads.reverse();
    while now <= Time::from_secs(until_s) {
        while uploads
            .last()
            .is_some_and(|&(at, _)| Time::from_secs(at) <= now)
        {
            let (_, n) = uploads.pop().unwrap_or_default();
            upload(e, now, vec![low(); n]);
        }
        let acts = actions(e);
        let answered = !acts.is_empty();
        for a in acts {
            match a {
                Action::UploadBatchFile {
                    batch, images: i, ..
                } => {
                    started.push((now.as_millis() / 1000, i.len()));
                    images.insert(batch, i);
                    e.handle_file_uploaded(now, batch, ok("file-in"));
                }
                Action::CreateBatch { batch, .. } => {
                    e.handle_batch_created(now, batch, Ok(format!("batch_{}", batch.0)));
                }
                Action::PollBatch { batch, .. } => {
                    e.handle_batch_status(now, batch, status(state(now, batch)));
                }
                Action::DownloadResults { batch, .. } => {
                    e.handle_batch_results(now, batch, Ok(all_lines(&images[&batch])));
                }
                other => panic!("{other:?}"),
            }
        }
        if answered {
            continue;
        }
        let next_upload = uploads.last().map(|&(at, _)| Time::from_secs(at));
        let Some(t) = [e.poll_timeout(), next_upload].into_iter().flatten().min() else {
            break;
        };
        now = t;
        e.handle_timeout(now);
    }
    started
}

fn token_limit() -> BatchState {
    BatchState::Failed {
        code: "token_limit_exceeded".into(),
    }
}

/// After a `token_limit_exceeded`, core takes the part of the queue it does not hold as another
/// client's. Room its own batch frees later is refilled at once, with no more than that room;
/// the whole queue is probed again only when the hold lapses (60 s, then 120 s after a second
/// failure in a row).
#[test]
fn after_a_token_limit_failure_freed_room_is_refilled_at_once_and_no_more() {
    let mut e = queue_of(24, Policy::seed_current());
    let started = batch_starts(
        &mut e,
        vec![(0, 20), (1, 30)],
        250,
        |now, batch| match batch.0 {
            0 if now >= Time::from_secs(30) => BatchState::Completed,
            1 | 3 => token_limit(),
            _ => BatchState::InProgress,
        },
    );
    assert_eq!(
        started,
        [
            (0, 20),  // the first upload: 20 of the queue's 24 images of room
            (1, 4),   // the second: the 4 left, refused at 11 s (another client holds them)
            (30, 20), // batch 0 ends at 30 s: its 20 images' room, at once, and no more
            (71, 4),  // the hold lapses 60 s after the refusal: a probe, refused at 81 s
            (201, 4), // a second refusal in a row holds for 120 s
        ]
    );
}

/// A probe that fills the queue with several batches, all refused together, is one lesson:
/// the hold doubles once per round of refusals, not once per refused batch.
#[test]
fn a_round_of_refused_batches_doubles_the_hold_once() {
    let policy = Policy {
        max_images_per_batch: 4,
        ..Policy::seed_current()
    };
    let mut e = queue_of(24, policy);
    let started = batch_starts(&mut e, vec![(0, 20)], 400, |_, _| token_limit());
    let rounds: Vec<(u64, usize)> = started
        .chunk_by(|a, b| a.0 == b.0)
        .map(|r| (r[0].0, r.len()))
        .collect();
    // Five batches a round, refused at their first poll 10 s on: held 60 s, then 120, then 240.
    assert_eq!(rounds, [(0, 5), (70, 5), (200, 5)]);
}

/// Failed lines of a completed batch count as a trip each; with one trip allowed
/// (seed-current) they fail with the line's code, and the good lines are tagged.
#[test]
fn failed_lines_fail_with_their_code_when_no_trip_is_left() {
    let mut e = engine(Policy::seed_current(), 1);
    let up = upload(&mut e, Time::ZERO, vec![low(); 20]);
    let (ends, files) = drive(
        &mut e,
        |_| BatchState::Completed,
        |_, images| {
            let mut l = all_lines(images);
            for line in l.iter_mut().step_by(4) {
                line.outcome = Err("server_error".into());
            }
            l
        },
    );
    assert_eq!(files.len(), 1);
    assert_eq!(ends.tagged.len(), 15);
    assert_eq!(ends.failed.len(), 5);
    for (img, reason) in &ends.failed {
        assert_eq!(img.index % 4, 0);
        assert_eq!(
            reason,
            &FailReason::BatchAttemptsExhausted {
                last: "server_error".into()
            }
        );
    }
    assert_eq!(ends.complete, [up]);
}

/// Results delivered twice, a status after the results, and a second download answer change
/// nothing: each image is tagged once, with its own line.
#[test]
fn results_delivered_twice_tag_once() {
    let mut e = engine(Policy::seed_current(), 1);
    upload(&mut e, Time::ZERO, vec![low(); 20]);
    let files = batch_files(&actions(&mut e));
    let (batch, images, _) = files[0].clone();
    accept(&mut e, Time::ZERO, batch);
    let t = Time::from_secs(10);
    e.handle_timeout(t);
    assert!(matches!(actions(&mut e)[..], [Action::PollBatch { .. }]));
    e.handle_batch_status(t, batch, status(BatchState::Completed));
    assert!(matches!(
        actions(&mut e)[..],
        [Action::DownloadResults { .. }]
    ));
    // The first delivery loses nothing; a copy with other outcomes follows.
    e.handle_batch_results(t, batch, Ok(all_lines(&images)));
    let mut copy = all_lines(&images);
    for l in &mut copy {
        l.outcome = Err("late copy".into());
    }
    e.handle_batch_results(t, batch, Ok(copy));
    e.handle_batch_results(t, batch, Err(fail("late error")));
    e.handle_batch_status(t, batch, status(BatchState::Expired));
    let mut ends = Ends::default();
    ends.collect(&mut e);
    assert_eq!(ends.tagged.len(), 20);
    for (img, usage) in &ends.tagged {
        assert_eq!(*usage, usage_of(*img));
        assert_eq!(e.stage(*img), Some(Stage::Completed));
    }
    assert!(actions(&mut e).is_empty());
    assert!(e.is_idle());
}

/// A realtime 200 whose `usage.input_tokens` is absurd (10^12; a corrupt body) must not put
/// the pacer in debt for years: upstream admitted the request, so its limiter charged at most
/// the account's TPM, and the reconcile is capped there. (It owed ~300 million seconds, and every
/// realtime image still queued waited about 9.5 years for its next send.)
#[test]
fn an_absurd_usage_in_one_answer_does_not_freeze_realtime() {
    let mut e = engine(Policy::tagstorm(), 1);
    upload(&mut e, Time::ZERO, vec![low(); 120]);
    let sent: Vec<_> = actions(&mut e)
        .into_iter()
        .filter_map(|a| match a {
            Action::SendRealtime { request, image, .. } => Some((request, image)),
            _ => None,
        })
        .collect();
    assert!(sent.len() < 120, "some images must still wait for pacing");
    let answer = |usage| RealtimeOutcome::Ok {
        usage,
        observed: Default::default(),
    };
    let absurd = Usage {
        input_tokens: 1_000_000_000_000,
        output_tokens: 40,
    };
    let t = Time::from_secs(1);
    e.handle_realtime_response(t, sent[0].0, answer(absurd));
    for &(request, image) in &sent[1..] {
        e.handle_realtime_response(t, request, answer(usage_of(image)));
    }
    actions(&mut e);
    // The next realtime send comes within a day, not in years.
    let mut next_send = None;
    while let Some(at) = e.poll_timeout() {
        if at > Time::from_secs(86_400) {
            break;
        }
        e.handle_timeout(at);
        if realtime_count(&actions(&mut e)) > 0 {
            next_send = Some(at);
            break;
        }
    }
    assert!(
        next_send.is_some(),
        "next wake-up at {:?}",
        e.poll_timeout()
    );
}

/// One image past `MAX_IMAGES_PER_UPLOAD` is refused and records nothing; an empty upload too.
#[test]
fn uploads_of_zero_or_too_many_images_are_refused() {
    use tagstorm_core::UploadError;
    use tagstorm_core::engine::MAX_IMAGES_PER_UPLOAD;
    let mut e = engine(Policy::tagstorm(), 1);
    let up = |images| Upload {
        workspace: WorkspaceId(1),
        images,
        deadline: None,
    };
    assert_eq!(
        e.handle_upload(Time::ZERO, up(vec![])),
        Err(UploadError::Empty)
    );
    assert_eq!(
        e.handle_upload(Time::ZERO, up(vec![low(); MAX_IMAGES_PER_UPLOAD + 1])),
        Err(UploadError::TooMany {
            count: MAX_IMAGES_PER_UPLOAD + 1,
            max: MAX_IMAGES_PER_UPLOAD
        })
    );
    assert_eq!(e.poll_action(), None);
    assert_eq!(e.poll_event(), None);
    assert_eq!(e.poll_timeout(), None);
    assert!(e.is_idle());
    assert_eq!(e.progress(Time::ZERO, UploadId(0)), None);
}

/// A 200 that carries a retry delay (a driver that reads `retry-after` on every answer) is held
/// to the same cap as a 429's, `retry_after_max_ms`: it pauses realtime at most that long, not
/// for as long as the header says.
#[test]
fn a_retry_delay_on_a_200_is_capped_like_a_429s() {
    let policy = Policy::tagstorm();
    let cap = Duration::from_millis(policy.retry_after_max_ms);
    let mut e = engine(policy, 1);
    upload(&mut e, Time::ZERO, vec![low(); 120]);
    let sent: Vec<_> = actions(&mut e)
        .into_iter()
        .filter_map(|a| match a {
            Action::SendRealtime { request, image, .. } => Some((request, image)),
            _ => None,
        })
        .collect();
    assert!(sent.len() < 120, "some images must still wait for pacing");
    let t = Time::from_secs(1);
    for (i, &(request, image)) in sent.iter().enumerate() {
        let observed = tagstorm_core::limit::Observed {
            retry_after: (i == 0).then_some(Duration::from_secs(10 * 365 * 86_400)),
            ..Default::default()
        };
        let usage = usage_of(image);
        e.handle_realtime_response(t, request, RealtimeOutcome::Ok { usage, observed });
    }
    actions(&mut e);
    let mut next_send = None;
    while let Some(at) = e.poll_timeout() {
        if at > t + cap + Duration::from_secs(60) {
            break;
        }
        e.handle_timeout(at);
        if realtime_count(&actions(&mut e)) > 0 {
            next_send = Some(at);
            break;
        }
    }
    assert!(
        next_send.is_some_and(|at| at <= t + cap + Duration::from_secs(60)),
        "next realtime send: {next_send:?}, next wake-up {:?}",
        e.poll_timeout()
    );
}

// ---- realtime failures until retries run out ------------------------------------------------------

fn one_image_under(
    policy: Policy,
    outcome: impl FnMut(ImageId) -> RealtimeOutcome,
) -> (Ends, Vec<Time>, usize) {
    let mut e = engine(policy, 1);
    let up = upload(&mut e, Time::ZERO, vec![low()]);
    let (ends, files, sent) = drive_with(
        &mut e,
        outcome,
        |_| BatchState::Completed,
        |_, images| all_lines(images),
    );
    assert_eq!(ends.ended(), 1);
    assert_eq!(ends.complete, [up]);
    (ends, sent.into_iter().map(|s| s.0).collect(), files.len())
}

/// seed-current: 3 attempts, blind backoff (0.5 s, 1 s, jittered by up to 25%), then the image
/// fails with the last error; 5xx, timeouts and 429s with or without a retry-after alike.
#[test]
fn seed_current_fails_an_image_after_three_attempts() {
    for (last, outcome) in [
        (
            "server_error_502",
            RealtimeOutcome::ServerError { status: 502 },
        ),
        ("timeout", RealtimeOutcome::Timeout),
        (
            "rate_limited",
            RealtimeOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(20)),
                observed: Default::default(),
            },
        ),
        (
            "rate_limited",
            RealtimeOutcome::RateLimited {
                retry_after: None,
                observed: Default::default(),
            },
        ),
    ] {
        let (ends, sent, batches) = one_image_under(Policy::seed_current(), |_| outcome.clone());
        assert_eq!(sent.len(), 3, "{last}");
        assert_eq!(batches, 0);
        let reason = ends.failed.values().next().expect("failed");
        assert_eq!(reason, &FailReason::RetriesExhausted { last: last.into() });
        // Blind backoff: the retry-after is not waited out.
        let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps[0] >= Duration::from_millis(375) && gaps[0] <= Duration::from_millis(500),
            "{gaps:?}"
        );
        assert!(
            gaps[1] >= Duration::from_millis(750) && gaps[1] <= Duration::from_secs(1),
            "{gaps:?}"
        );
    }
}

/// tagstorm: 6 attempts, then the image goes to the Batch API and is tagged there, once.
#[test]
fn tagstorm_moves_an_image_to_a_batch_when_realtime_retries_run_out() {
    let (ends, sent, batches) = one_image_under(Policy::tagstorm(), |_| RealtimeOutcome::Timeout);
    assert_eq!(sent.len(), 6);
    assert_eq!(batches, 1);
    let (img, usage) = ends.tagged.iter().next().expect("tagged");
    assert_eq!(*usage, usage_of(*img));
}

/// tagstorm honours a 429's retry-after (within the cap): the retry goes out when it says.
#[test]
fn tagstorm_retries_a_429_when_its_retry_after_says() {
    let mut first = true;
    let (ends, sent, batches) = one_image_under(Policy::tagstorm(), |image| {
        if std::mem::take(&mut first) {
            RealtimeOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
                observed: Default::default(),
            }
        } else {
            RealtimeOutcome::Ok {
                usage: usage_of(image),
                observed: Default::default(),
            }
        }
    });
    assert_eq!(sent, [Time::ZERO, Time::from_secs(7)]);
    assert_eq!(batches, 0);
    assert_eq!(ends.tagged.len(), 1);
}

/// Answers for batches core never made (a status of any state, a file, results) change nothing,
/// for an engine with work in flight too.
#[test]
fn answers_for_unknown_batches_change_nothing() {
    let mut e = engine(Policy::seed_current(), 1);
    let up = upload(&mut e, Time::ZERO, vec![low(); 20]);
    let files = batch_files(&actions(&mut e));
    accept(&mut e, Time::ZERO, files[0].0);
    let before = e.progress(Time::ZERO, up);
    let timer = e.poll_timeout();
    let t = Time::from_secs(1);
    let unknown = BatchRef(9);
    for state in [
        BatchState::Completed,
        BatchState::Failed {
            code: "token_limit_exceeded".into(),
        },
        BatchState::Expired,
        BatchState::Cancelled,
        BatchState::InProgress,
    ] {
        e.handle_batch_status(t, unknown, status(state));
    }
    e.handle_file_uploaded(t, unknown, ok("file-x"));
    e.handle_batch_created(t, unknown, Err(fail("create")));
    e.handle_batch_results(t, unknown, Ok(all_lines(&files[0].1)));
    e.handle_batch_results(t, unknown, Err(fail("download")));
    assert_eq!(actions(&mut e), []);
    let mut ends = Ends::default();
    ends.collect(&mut e);
    assert_eq!(ends.ended(), 0);
    assert_eq!(e.progress(Time::ZERO, up), before);
    assert_eq!(e.poll_timeout(), timer);
}

// ---- overdue batches (batch_overdue_ms) -----------------------------------------------------

/// One 100-image upload under `policy`, batched whole and accepted at t = 0.
fn overdue_setup(policy: Policy) -> (Engine, BatchRef, Vec<ImageId>) {
    let mut e = engine(policy, 1);
    upload(&mut e, Time::ZERO, vec![low(); 100]);
    let files = batch_files(&actions(&mut e));
    assert_eq!(files.len(), 1);
    let (batch, images, _) = files[0].clone();
    accept(&mut e, Time::ZERO, batch);
    (e, batch, images)
}

/// seed-proposed with a 2-hour overdue limit (and `give_up_ms`, if any).
fn overdue_policy(give_up_ms: Option<u64>) -> Policy {
    Policy {
        batch_overdue_ms: Some(2 * 3_600_000),
        poll_give_up_ms: give_up_ms,
        ..Policy::seed_proposed()
    }
}

#[test]
fn an_overdue_batch_whose_cancel_is_refused_is_still_downloaded_and_credited() {
    // The batch was finalizing when the cancel went out: upstream refuses it and completes.
    let (mut e, batch, images) = overdue_setup(overdue_policy(None));
    let overdue = Time::from_secs(2 * 3600);
    let (_, mut seen) = poll_until(&mut e, batch, Time::from_secs(4 * 3600), |now| {
        if now < overdue {
            status(BatchState::InProgress)
        } else if now < overdue + Duration::from_secs(300) {
            status(BatchState::Finalizing)
        } else {
            status(BatchState::Completed)
        }
    });
    seen.extend(actions(&mut e));
    let cancels = seen
        .iter()
        .filter(|a| matches!(a, Action::CancelBatch { .. }))
        .count();
    assert_eq!(cancels, 1, "{seen:?}");
    assert!(
        seen.iter()
            .any(|a| matches!(a, Action::DownloadResults { .. })),
        "{seen:?}"
    );
    e.handle_batch_results(Time::from_secs(4 * 3600), batch, Ok(all_lines(&images)));
    let mut ends = Ends::default();
    ends.collect(&mut e);
    assert_eq!(ends.tagged.len(), 100, "{:?}", ends.failed.values().next());
    assert_eq!(e.stats().batches_overdue, 1);
}

#[test]
fn an_overdue_batch_whose_polls_then_fail_is_let_go_after_the_grace() {
    let (mut e, batch, images) = overdue_setup(overdue_policy(None));
    let overdue = Time::from_secs(2 * 3600);
    let (_, mut seen) = poll_until(&mut e, batch, Time::from_secs(5 * 3600), |now| {
        if now < overdue {
            status(BatchState::InProgress)
        } else {
            Err(fail("connection reset"))
        }
    });
    seen.extend(actions(&mut e));
    let cancels = seen
        .iter()
        .filter(|a| matches!(a, Action::CancelBatch { .. }))
        .count();
    assert_eq!(cancels, 1);
    // The same images, in a new batch file.
    let again = batch_files(&seen);
    assert_eq!(again.len(), 1, "{seen:?}");
    assert_eq!(again[0].1, images);
    assert_eq!(e.stats().batches_overdue, 1);
}

#[test]
fn a_give_up_due_while_an_overdue_batch_is_cancelling_waits_for_its_results() {
    // The give-up falls 5 minutes after the cancel, while upstream is still cancelling (up to
    // 10 minutes, facts §5). It used to fail every image and drop the partial results upstream
    // bills; the cancelled batch's results are now downloaded.
    let (mut e, batch, _images) = overdue_setup(overdue_policy(Some(2 * 3_600_000 + 300_000)));
    let overdue = Time::from_secs(2 * 3600);
    let (_, mut seen) = poll_until(&mut e, batch, Time::from_secs(3 * 3600), |now| {
        if now < overdue {
            status(BatchState::InProgress)
        } else if now < overdue + Duration::from_secs(600) {
            status(BatchState::Cancelling)
        } else {
            status(BatchState::Cancelled)
        }
    });
    seen.extend(actions(&mut e));
    let mut ends = Ends::default();
    ends.collect(&mut e);
    assert!(ends.failed.is_empty(), "{:?}", ends.failed.values().next());
    assert!(
        seen.iter()
            .any(|a| matches!(a, Action::DownloadResults { .. })),
        "{seen:?}"
    );
}
