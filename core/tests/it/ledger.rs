//! Per-image bookkeeping under a scripted adversarial upstream: every image ends exactly once, with a tag from its own answer, and nothing waits forever.
//!
//! Unlike `chaos.rs` (one seed, one RNG), the upstream here follows a script that proptest
//! generates and shrinks: each step uploads, answers one outstanding action with a chosen
//! outcome (kept or not for a later duplicate), makes up an answer for an id the engine never
//! gave, or moves time. Choice 0 of every die is the honest one, so a failing case shrinks
//! towards the few hostile answers that matter. After the script the upstream turns honest.
//!
//! Each answer that could tag an image carries a usage whose `output_tokens` is a ticket naming
//! the image it was for and, for a batch line, the batch whose results carried it; a tag must
//! come with a ticket for its own image, through the channel the ticket was handed out on, and
//! a batch tag with a ticket from a batch that held the image.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tagstorm_core::cost::Channel;
use tagstorm_core::limit::Observed;
use tagstorm_core::split::MAX_BATCH_FILE_BYTES;
use tagstorm_core::tokens::Usage;
use tagstorm_core::{
    Action, BatchRef, BatchState, BatchStatus, Config, Engine, Event, ImageId, LineResult,
    RealtimeOutcome, RequestId, Stage, Time, Upload, UploadId, UpstreamError, WorkspaceId,
};

use crate::harness::low;

/// Upload sizes around every threshold of the presets (seed-current 19/20, seed-proposed
/// 5/6/50/51/200/201, tagstorm's head of 3), plus one from the script.
const SIZES: [u32; 14] = [1, 2, 3, 4, 5, 6, 19, 20, 21, 50, 51, 200, 201, 0];

fn err(msg: &str) -> UpstreamError {
    UpstreamError {
        status: Some(500),
        message: msg.into(),
    }
}

/// One step of the upstream's script: what to do, and dice for how.
pub type Step = (u8, u16, u16);

pub struct Ledger {
    pub engine: Engine,
    now: Time,
    outstanding: Vec<Action>,
    batch_images: HashMap<BatchRef, Vec<ImageId>>,
    batch_ids: HashMap<BatchRef, String>,
    /// Batches for which an answer that can end them (an error, a failed or finished status,
    /// results) was delivered: only then may their images be sent anywhere again.
    batch_may_have_ended: HashSet<BatchRef>,
    /// The batch each image was last written into.
    image_batch: HashMap<ImageId, BatchRef>,
    /// The unanswered realtime request of each image.
    live_rt: HashMap<ImageId, RequestId>,
    rt_image: HashMap<RequestId, ImageId>,
    uploads: Vec<(UploadId, u32)>,
    ended: BTreeMap<ImageId, Stage>,
    ended_per_upload: HashMap<UploadId, u32>,
    complete: HashSet<UploadId>,
    tickets: Vec<(ImageId, Channel, Option<BatchRef>)>,
    next_request_seen: u64,
    /// The batch answered since the last pending check.
    answered_batch: Option<BatchRef>,
    /// When each batch was created (its first create answer), and when core will have sent
    /// its cancel (the first poll answer past `batch_overdue_ms`): the policy's time limits
    /// end core's hold on a batch at those times, as `time_up` does.
    created_at: HashMap<BatchRef, Time>,
    cancel_at: HashMap<BatchRef, Time>,
}

impl Ledger {
    pub fn new(cfg: Config) -> Ledger {
        Ledger {
            engine: Engine::new(cfg).expect("valid config"),
            now: Time::ZERO,
            outstanding: Vec::new(),
            batch_images: HashMap::new(),
            batch_ids: HashMap::new(),
            batch_may_have_ended: HashSet::new(),
            image_batch: HashMap::new(),
            live_rt: HashMap::new(),
            rt_image: HashMap::new(),
            uploads: Vec::new(),
            ended: BTreeMap::new(),
            ended_per_upload: HashMap::new(),
            complete: HashSet::new(),
            tickets: Vec::new(),
            next_request_seen: 0,
            answered_batch: None,
            created_at: HashMap::new(),
            cancel_at: HashMap::new(),
        }
    }

    fn ticket(&mut self, image: ImageId, channel: Channel, batch: Option<BatchRef>) -> Usage {
        self.tickets.push((image, channel, batch));
        Usage {
            input_tokens: 2_850,
            output_tokens: self.tickets.len() as u64 - 1,
        }
    }

    /// An image is about to be sent somewhere: it must not still be out in another attempt.
    fn check_not_busy(&self, image: ImageId, what: &str) {
        assert!(
            !self.ended.contains_key(&image),
            "{image} {what} after it ended"
        );
        assert!(
            !self.live_rt.contains_key(&image),
            "{image} {what} while its realtime request {:?} is unanswered",
            self.live_rt[&image]
        );
        if let Some(b) = self.image_batch.get(&image) {
            assert!(
                self.batch_may_have_ended.contains(b),
                "{image} {what} while batch {b} still holds it"
            );
        }
    }

    fn drain(&mut self) {
        while let Some(a) = self.engine.poll_action() {
            match &a {
                Action::SendRealtime { request, image, .. } => {
                    self.check_not_busy(*image, "sent realtime");
                    assert_eq!(self.engine.stage(*image), Some(Stage::Preparing));
                    self.live_rt.insert(*image, *request);
                    self.rt_image.insert(*request, *image);
                    self.next_request_seen = self.next_request_seen.max(request.0 + 1);
                }
                Action::UploadBatchFile {
                    batch,
                    images,
                    bytes,
                    tokens,
                } => {
                    assert!(!images.is_empty(), "{batch} is empty");
                    let max = self.engine.config().policy.max_images_per_batch as usize;
                    assert!(images.len() <= max, "{batch}: {} lines", images.len());
                    assert!(*bytes <= MAX_BATCH_FILE_BYTES, "{batch}: {bytes} bytes");
                    let sum: u64 = images
                        .iter()
                        .map(|i| self.engine.image_tokens(*i).expect("known").0)
                        .sum();
                    assert_eq!(*tokens, sum, "{batch}: tokens");
                    let distinct: HashSet<_> = images.iter().collect();
                    assert_eq!(distinct.len(), images.len(), "{batch} repeats an image");
                    for &img in images {
                        self.check_not_busy(img, "written into a batch file");
                        self.image_batch.insert(img, *batch);
                    }
                    self.batch_images.insert(*batch, images.clone());
                }
                Action::CancelBatch { batch, batch_id } => {
                    // Takes no answer; core goes on polling the batch.
                    assert_eq!(
                        self.batch_ids.get(batch).map(String::as_str),
                        Some(&**batch_id)
                    );
                    continue;
                }
                _ => {}
            }
            self.outstanding.push(a);
        }
        while let Some(e) = self.engine.poll_event() {
            match e {
                Event::ImageTagged {
                    image,
                    channel,
                    usage,
                    at,
                } => {
                    assert_eq!(at, self.now);
                    let (owner, ch, batch) = self.tickets[usage.output_tokens as usize];
                    assert_eq!(owner, image, "{image} tagged with {owner}'s answer");
                    assert_eq!(ch, channel, "{image}: channel");
                    if let Some(b) = batch {
                        assert!(
                            self.batch_images[&b].contains(&image),
                            "{image} tagged by a line of {b}, which never held it"
                        );
                    }
                    self.end(image, Stage::Completed);
                }
                Event::ImageFailed { image, at, .. } => {
                    assert_eq!(at, self.now);
                    self.end(image, Stage::Failed);
                }
                Event::UploadComplete { upload, .. } => {
                    assert!(self.complete.insert(upload), "{upload} completed twice");
                    let n = self.uploads[upload.0 as usize].1;
                    assert_eq!(
                        self.ended_per_upload.get(&upload).copied().unwrap_or(0),
                        n,
                        "{upload} complete before every image ended"
                    );
                }
                Event::Progress(p) => {
                    assert_eq!(p.by_stage.iter().sum::<u32>(), p.total, "{p:?}");
                    assert_eq!(
                        p.terminal(),
                        self.ended_per_upload.get(&p.upload).copied().unwrap_or(0),
                        "progress disagrees with the events: {p:?}"
                    );
                }
                Event::DownloadFailed { .. } => {}
            }
        }
        // Pending upstream only once upstream accepted the image's batch: checked for the
        // batch just answered (only a batch answer moves images in or out of pending).
        if let Some(batch) = self.answered_batch.take() {
            let images = self.batch_images.get(&batch).cloned().unwrap_or_default();
            self.check_pending(&images);
        }
        for (img, req) in &self.live_rt {
            assert_eq!(
                self.engine.stage(*img),
                Some(Stage::Preparing),
                "{img} has request {req:?} out"
            );
        }
    }

    /// Each of `images` that is pending upstream was last written into a batch upstream
    /// created.
    fn check_pending(&self, images: &[ImageId]) {
        for &img in images {
            let stage = self.engine.stage(img).expect("known image");
            if stage.is_pending_upstream() {
                let batch = self.image_batch.get(&img);
                assert!(
                    batch.is_some_and(|b| self.batch_ids.contains_key(b)),
                    "{img} is {stage:?} but its batch {batch:?} was never created"
                );
            }
        }
    }

    /// [`Ledger::check_pending`] over every image of every upload.
    fn check_all_pending(&self) {
        for &(upload, n) in &self.uploads {
            let images: Vec<ImageId> = (0..n).map(|index| ImageId { upload, index }).collect();
            self.check_pending(&images);
        }
    }

    fn end(&mut self, image: ImageId, stage: Stage) {
        assert!(
            self.ended.insert(image, stage).is_none(),
            "{image} ended twice"
        );
        assert_eq!(self.engine.stage(image), Some(stage), "{image}");
        *self.ended_per_upload.entry(image.upload).or_default() += 1;
    }

    fn upload(&mut self, a: u16, b: u16) {
        let n = match SIZES[a as usize % SIZES.len()] {
            0 => u32::from(b) % 300 + 1,
            n => n,
        };
        let id = self
            .engine
            .handle_upload(
                self.now,
                Upload {
                    workspace: WorkspaceId(u32::from(b % 3)),
                    images: vec![low(); n as usize],
                    deadline: None,
                },
            )
            .expect("valid upload");
        assert_eq!(id.0 as usize, self.uploads.len());
        self.uploads.push((id, n));
    }

    fn realtime_outcome(&mut self, image: ImageId, die: u16) -> RealtimeOutcome {
        // Rate-limit headers on any answer: none, an empty account, or a retry delay of years.
        let observed = match (die / 9) % 4 {
            1 => Observed {
                remaining_requests: Some(0),
                remaining_tokens: Some(0),
                retry_after: None,
            },
            2 => Observed {
                retry_after: Some(Duration::from_secs(5 * 365 * 86_400)),
                ..Observed::default()
            },
            _ => Observed::default(),
        };
        match die % 9 {
            0 | 1 => RealtimeOutcome::Ok {
                usage: self.ticket(image, Channel::Realtime, None),
                observed,
            },
            2 => RealtimeOutcome::RateLimited {
                retry_after: Some(Duration::from_millis(u64::from(die) * 7)),
                observed,
            },
            3 => RealtimeOutcome::RateLimited {
                retry_after: None,
                observed,
            },
            // Beyond every preset's retry_after_max_ms: a daily limit says hours.
            4 => RealtimeOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(6 * 3600)),
                observed,
            },
            5 => RealtimeOutcome::ServerError { status: 503 },
            6 | 7 => RealtimeOutcome::Timeout,
            _ => RealtimeOutcome::Rejected {
                status: 400,
                message: "bad image".into(),
            },
        }
    }

    fn status(die: u16) -> Result<BatchStatus, UpstreamError> {
        let state = match die % 12 {
            0 => BatchState::Completed,
            1 => return Err(err("poll")),
            2 => BatchState::Validating,
            3 => BatchState::InProgress,
            4 => BatchState::Finalizing,
            5 => BatchState::Cancelling,
            6 => BatchState::Failed {
                code: "invalid_json_line".into(),
            },
            7 => BatchState::Failed {
                code: "token_limit_exceeded".into(),
            },
            8 => BatchState::Expired,
            9 => BatchState::Cancelled,
            _ => BatchState::InProgress,
        };
        let files = !matches!(die % 5, 4);
        Ok(BatchStatus {
            state,
            output_file_id: files.then(|| "file-out".into()),
            error_file_id: files.then(|| "file-err".into()),
        })
    }

    /// A result file for `batch`: every line, or some failed, missing, duplicated with another
    /// outcome, foreign (another batch's image), or malformed.
    fn lines(&mut self, batch: BatchRef, die: u16) -> Result<Vec<LineResult>, UpstreamError> {
        let images = self.batch_images.get(&batch).cloned().unwrap_or_default();
        let mut lines = Vec::new();
        let kind = die % 8;
        if kind == 1 {
            return Err(err("download"));
        }
        for (i, &img) in images.iter().enumerate() {
            let pick = (i as u16).wrapping_mul(31).wrapping_add(die / 8) % 5;
            let fail = kind == 2 && pick == 0;
            let missing = kind == 3 && pick == 1;
            if missing {
                continue;
            }
            let outcome = if fail {
                Err("server_error".to_owned())
            } else {
                Ok(self.ticket(img, Channel::Batch, Some(batch)))
            };
            if kind == 4 && pick == 2 {
                // The same line twice, the copy with the other outcome, in either order.
                let other = match &outcome {
                    Ok(_) => Err("dup".to_owned()),
                    Err(_) => Ok(self.ticket(img, Channel::Batch, Some(batch))),
                };
                lines.push(LineResult {
                    custom_id: img.custom_id(),
                    outcome: other,
                });
            }
            lines.push(LineResult {
                custom_id: img.custom_id(),
                outcome,
            });
        }
        if kind == 5 {
            // Lines for images of other batches, with outcomes of their own.
            let foreign: Vec<(BatchRef, ImageId)> = self
                .batch_images
                .iter()
                .filter(|(b, _)| **b != batch)
                .flat_map(|(b, imgs)| imgs.iter().take(2).map(move |i| (*b, *i)))
                .collect();
            for (_, img) in foreign {
                let usage = self.ticket(img, Channel::Batch, Some(batch));
                lines.push(LineResult {
                    custom_id: img.custom_id(),
                    outcome: Ok(usage),
                });
            }
        }
        if kind == 6 {
            // This batch's first image's id with a leading zero, carrying its second image's
            // answer, ahead of the real lines: not an id core wrote, so it must tag nothing
            // (read as the first image's, it would tag it with the second's answer).
            if let (Some(&first), Some(&second)) = (images.first(), images.get(1)) {
                let usage = self.ticket(second, Channel::Batch, Some(batch));
                lines.insert(
                    0,
                    LineResult {
                        custom_id: format!("u0{}-i{}", first.upload.0, first.index).into(),
                        outcome: Ok(usage),
                    },
                );
            }
            for junk in [
                "",
                "u",
                "u0-i",
                "u0-i4294967295",
                "u4294967295-i0",
                "x0-i0",
                "u0_i0",
                "u0-i0 ",
            ] {
                lines.push(LineResult {
                    custom_id: junk.into(),
                    outcome: Ok(Usage::default()),
                });
            }
        }
        if kind == 7 {
            lines.reverse();
        }
        Ok(lines)
    }

    fn answer(&mut self, action: &Action, die: u16) {
        let now = self.now;
        self.answered_batch = match action {
            Action::SendRealtime { .. } | Action::CancelBatch { .. } => None,
            Action::UploadBatchFile { batch, .. }
            | Action::CreateBatch { batch, .. }
            | Action::PollBatch { batch, .. }
            | Action::DownloadResults { batch, .. } => Some(*batch),
        };
        match action {
            Action::SendRealtime { request, image, .. } => {
                let outcome = self.realtime_outcome(*image, die);
                if self.live_rt.get(image) == Some(request) {
                    self.live_rt.remove(image);
                }
                self.engine.handle_realtime_response(now, *request, outcome);
            }
            Action::UploadBatchFile { batch, .. } => {
                let r = if die % 4 == 3 {
                    self.batch_may_have_ended.insert(*batch);
                    Err(err("upload"))
                } else {
                    Ok(format!("file-{}", batch.0))
                };
                self.engine.handle_file_uploaded(now, *batch, r);
            }
            Action::CreateBatch { batch, .. } => {
                let r = if die % 4 == 3 {
                    self.batch_may_have_ended.insert(*batch);
                    Err(err("create"))
                } else {
                    let id = format!("batch_{}", batch.0);
                    self.batch_ids.insert(*batch, id.clone());
                    // A re-delivered create answer does not move the batch's birth.
                    self.created_at.entry(*batch).or_insert(now);
                    Ok(id)
                };
                self.engine.handle_batch_created(now, *batch, r);
            }
            Action::PollBatch { batch, batch_id } => {
                assert_eq!(
                    self.batch_ids.get(batch).map(String::as_str),
                    Some(&**batch_id)
                );
                let r = Self::status(die);
                let ends = match &r {
                    Ok(s) => !matches!(
                        s.state,
                        BatchState::Validating
                            | BatchState::InProgress
                            | BatchState::Finalizing
                            | BatchState::Cancelling
                    ),
                    Err(_) => false,
                };
                // Whether this answer lets core's time limits end its hold on the batch.
                let p = &self.engine.config().policy;
                let age = now - self.created_at[batch];
                let past = |l: Option<u64>| l.is_some_and(|ms| age >= Duration::from_millis(ms));
                let cancelled = self.cancel_at.get(batch).copied();
                let mut let_go = past(p.poll_give_up_ms) && cancelled.is_none();
                if !let_go && past(p.batch_overdue_ms) {
                    match cancelled {
                        None => {
                            self.cancel_at.insert(*batch, now);
                        }
                        Some(c) => let_go = now - c >= tagstorm_core::engine::CANCEL_GRACE,
                    }
                }
                if ends || let_go {
                    self.batch_may_have_ended.insert(*batch);
                }
                self.engine.handle_batch_status(now, *batch, r);
            }
            Action::DownloadResults { batch, .. } => {
                self.batch_may_have_ended.insert(*batch);
                let r = self.lines(*batch, die);
                self.engine.handle_batch_results(now, *batch, r);
            }
            // Never kept as outstanding: it takes no answer.
            Action::CancelBatch { .. } => {}
        }
    }

    /// An answer to something the engine never asked, or asked of another batch.
    fn made_up(&mut self, a: u16, die: u16) {
        let now = self.now;
        let batch = BatchRef(u32::from(a) % (self.batch_images.len() as u32 + 3));
        let known = self.batch_images.contains_key(&batch);
        match die % 5 {
            0 => {
                // A request id never handed out, or one already answered.
                let r = RequestId(u64::from(a) % (self.next_request_seen + 2));
                if self.rt_image.contains_key(&r) && !self.live_rt.values().any(|x| *x == r) {
                    let image = self.rt_image[&r];
                    let o = self.realtime_outcome(image, die / 5);
                    self.engine.handle_realtime_response(now, r, o);
                } else if !self.rt_image.contains_key(&r) {
                    self.engine
                        .handle_realtime_response(now, r, RealtimeOutcome::Timeout);
                }
            }
            1 if !known => {
                self.engine
                    .handle_file_uploaded(now, batch, Ok("file-x".into()));
            }
            2 if !known => {
                self.engine
                    .handle_batch_created(now, batch, Ok("batch_x".into()));
            }
            3 if !known => {
                self.engine
                    .handle_batch_status(now, batch, Self::status(die / 5));
            }
            _ => {
                // Results nobody asked for: for an unknown batch they name nothing; for a
                // known one they only count if a download is pending, which the driver can't
                // fake, so send them only for unknown batches.
                if !known {
                    let l = self.lines(batch, die / 5);
                    self.engine.handle_batch_results(now, batch, l);
                }
            }
        }
    }

    fn advance(&mut self, a: u16, die: u16) {
        let by = match die % 4 {
            0 => match self.engine.poll_timeout() {
                Some(t) => t.saturating_duration_since(self.now),
                None => Duration::ZERO,
            },
            1 => Duration::from_millis(u64::from(a) * 3),
            2 => Duration::from_secs(3600),
            _ => Duration::from_secs(25 * 3600),
        };
        self.now += by;
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.engine.handle_timeout(self.now);
        }
    }

    pub fn run(&mut self, script: &[Step]) {
        for &(op, a, die) in script {
            match op % 8 {
                0 => self.upload(a, die),
                1..=4 if !self.outstanding.is_empty() => {
                    let i = a as usize % self.outstanding.len();
                    // One in four answers is kept to be delivered again later.
                    let action = if die % 4 == 1 {
                        self.outstanding[i].clone()
                    } else {
                        self.outstanding.swap_remove(i)
                    };
                    self.answer(&action, die / 4);
                }
                5 => self.made_up(a, die),
                _ => self.advance(a, die),
            }
            self.drain();
        }
        self.check_all_pending();
        self.finish_honestly();
    }

    /// Answers everything with success, oldest first, and wakes the engine at every timer
    /// until it has nothing left; then every image must have ended exactly once.
    fn finish_honestly(&mut self) {
        let deadline = self.now + Duration::from_secs(90 * 86_400);
        for _ in 0..2_000_000 {
            self.drain();
            if !self.outstanding.is_empty() {
                let a = self.outstanding.remove(0);
                self.answer(&a, 0);
                continue;
            }
            match self.engine.poll_timeout() {
                Some(t) => {
                    assert!(t <= deadline, "the engine still waits at {t:?}");
                    self.now = self.now.max(t);
                    self.engine.handle_timeout(self.now);
                }
                None => break,
            }
        }
        self.drain();
        assert!(self.outstanding.is_empty());
        assert_eq!(self.engine.poll_timeout(), None);
        let mut total = 0;
        for &(upload, n) in &self.uploads {
            total += n as usize;
            for index in 0..n {
                let img = ImageId { upload, index };
                assert!(self.ended.contains_key(&img), "{img} never ended");
            }
            assert!(self.complete.contains(&upload), "{upload} never completed");
        }
        assert_eq!(self.ended.len(), total);
        assert!(self.engine.is_idle());
    }
}
