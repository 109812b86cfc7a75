//! Batch lifecycles and routing edges driven step by step: each test scripts upstream's answers to one upload and pins where every image ends.

use std::collections::BTreeMap;

use tagstorm_core::tokens::{Model, Usage};
use tagstorm_core::{
    AccountLimits, Action, BatchRef, BatchStatus, Config, Engine, Event, FailReason, ImageId,
    ImageInput, Policy, Time, Upload, UploadId, UpstreamError, WorkspaceId,
};

use crate::harness::low;

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
