//! A virtual-time driver for the engine against a fake upstream that enforces the same limits.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use tagstorm_core::cost::Channel;
use tagstorm_core::limit::{Denied, Observed, RateLimits};
use tagstorm_core::tokens::{Detail, ImageSpec, Usage};
use tagstorm_core::{
    Action, BatchRef, BatchState, BatchStatus, Config, Engine, Event, FailReason, ImageId,
    ImageInput, LineResult, RealtimeOutcome, RequestId, Stage, Time, Upload, UploadId,
    UpstreamError, WorkspaceId,
};

/// Fault rates of the fake upstream, each a probability per call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub server_error: f64,
    pub timeout: f64,
    pub extra_429: f64,
    pub upload_fail: f64,
    pub create_fail: f64,
    pub poll_fail: f64,
    pub download_fail: f64,
    pub batch_validation_fail: f64,
    pub batch_token_limit: f64,
    pub batch_expire: f64,
    pub line_fail: f64,
    /// Adversarial driver, each a probability: an answer delivered twice (the copy up to 10 s
    /// later); an answer delayed by up to 5 s, so answers overtake each other; results with
    /// duplicate, foreign and malformed lines. A timeout is also followed, with `duplicate`,
    /// by a late 200 for the abandoned request.
    pub duplicate: f64,
    pub reorder: f64,
    pub junk_lines: f64,
}

#[derive(Clone, Debug)]
enum Delivery {
    Realtime(RequestId, RealtimeOutcome),
    FileUploaded(BatchRef, Result<String, UpstreamError>),
    BatchCreated(BatchRef, Result<String, UpstreamError>),
    Status(BatchRef, Result<BatchStatus, UpstreamError>),
    Results(BatchRef, Result<Vec<LineResult>, UpstreamError>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    Complete,
    FailValidation,
    TokenLimit,
    Expire,
    /// In progress until cancelled, past any window, with nothing done.
    Stuck,
    /// In progress forever: a cancel changes nothing.
    Lost,
}

#[derive(Debug)]
struct FakeBatch {
    images: Vec<ImageId>,
    created: Time,
    plan: Plan,
    cancelled: bool,
}

/// What the fake upstream and the engine's events recorded.
#[derive(Debug, Default)]
pub struct Log {
    pub tagged: BTreeMap<ImageId, (Time, u32)>,
    /// The tagged images whose tags came from a realtime request.
    pub tagged_realtime: BTreeSet<ImageId>,
    pub failed: BTreeMap<ImageId, (FailReason, u32)>,
    pub upload_complete: BTreeMap<UploadId, Time>,
    pub upload_start: BTreeMap<UploadId, Time>,
    pub realtime_requests: u64,
    pub upstream_429: u64,
    pub batches_created: u64,
    pub download_failures_surfaced: u64,
    /// Every batch id the engine polled, with the first time it did.
    pub first_poll: HashMap<String, Time>,
    pub last_poll: HashMap<String, Time>,
    /// Every batch id the engine asked to cancel, with when.
    pub cancels: Vec<(String, Time)>,
}

pub struct Harness {
    pub engine: Engine,
    pub now: Time,
    pub log: Log,
    pub faults: Faults,
    pub latency: Duration,
    pub batch_turnaround: Duration,
    /// Upload files fail this many times before succeeding (scripted, on top of `faults`).
    pub fail_next_downloads: u32,
    /// Every failed download answer is delivered twice (a duplicated message).
    pub duplicate_download_failures: bool,
    pub fail_next_creates: u32,
    /// This many of the next batches created never end by themselves (scripted), and end
    /// cancelled with nothing done once cancelled.
    pub stuck_next_batches: u32,
    /// This many of the next batches (after the stuck ones) never end, cancelled or not.
    pub lost_next_batches: u32,
    /// This many of the next cancel requests are lost on their way (logged as sent, never
    /// applied).
    pub drop_next_cancels: u32,
    /// Times `run` woke core for a timer.
    pub wakeups: u64,
    /// This many of the next batches (after those) expire at 24 h with half their lines done.
    pub expire_next_batches: u32,
    limits: RateLimits,
    rng: Pcg64Mcg,
    deliveries: BinaryHeap<Reverse<(Time, u64, usize)>>,
    slots: Vec<Option<Delivery>>,
    seq: u64,
    files: HashMap<String, Vec<ImageId>>,
    batches: HashMap<String, FakeBatch>,
    accepted_images: HashMap<ImageId, u32>,
}

pub fn image(w: u32, h: u32, detail: Detail) -> ImageInput {
    ImageInput {
        spec: ImageSpec {
            width_px: w,
            height_px: h,
            detail,
        },
        url_len: 48,
    }
}

pub fn low() -> ImageInput {
    image(1024, 768, Detail::Low)
}

impl Harness {
    pub fn new(cfg: Config, seed: u64) -> Harness {
        let account = cfg.account;
        let mut limits = RateLimits::new(account.rpm, account.tpm);
        if let Some(rpd) = account.rpd {
            limits = limits.with_rpd(rpd);
        }
        Harness {
            engine: Engine::new(cfg).expect("valid config"),
            now: Time::ZERO,
            log: Log::default(),
            faults: Faults::default(),
            latency: Duration::from_secs(3),
            batch_turnaround: Duration::from_secs(20 * 60),
            fail_next_downloads: 0,
            duplicate_download_failures: false,
            fail_next_creates: 0,
            stuck_next_batches: 0,
            lost_next_batches: 0,
            drop_next_cancels: 0,
            wakeups: 0,
            expire_next_batches: 0,
            limits,
            rng: Pcg64Mcg::seed_from_u64(seed),
            deliveries: BinaryHeap::new(),
            slots: Vec::new(),
            seq: 0,
            files: HashMap::new(),
            batches: HashMap::new(),
            accepted_images: HashMap::new(),
        }
    }

    pub fn upload(&mut self, workspace: u32, images: Vec<ImageInput>) -> UploadId {
        let id = self
            .engine
            .handle_upload(
                self.now,
                Upload {
                    workspace: WorkspaceId(workspace),
                    images,
                    deadline: None,
                },
            )
            .expect("valid upload");
        self.log.upload_start.insert(id, self.now);
        self.pump();
        id
    }

    fn deliver_at(&mut self, mut at: Time, d: Delivery) {
        if self.chance(self.faults.reorder) {
            at += Duration::from_millis(self.rng.random_range(0..5_000));
        }
        if self.chance(self.faults.duplicate) {
            let again = at + Duration::from_millis(self.rng.random_range(0..10_000));
            self.push_delivery(again, d.clone());
        }
        self.push_delivery(at, d);
    }

    fn push_delivery(&mut self, at: Time, d: Delivery) {
        self.seq += 1;
        self.slots.push(Some(d));
        self.deliveries
            .push(Reverse((at, self.seq, self.slots.len() - 1)));
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    /// Hands every pending action to the fake upstream and records every event.
    fn pump(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            self.act(action);
        }
        while let Some(event) = self.engine.poll_event() {
            match event {
                Event::ImageTagged {
                    image, at, channel, ..
                } => {
                    self.log.tagged.entry(image).or_insert((at, 0)).1 += 1;
                    if channel == Channel::Realtime {
                        self.log.tagged_realtime.insert(image);
                    }
                }
                Event::ImageFailed { image, reason, .. } => {
                    self.log.failed.entry(image).or_insert((reason, 0)).1 += 1
                }
                Event::UploadComplete { upload, at } => {
                    self.log.upload_complete.insert(upload, at);
                }
                Event::DownloadFailed { .. } => self.log.download_failures_surfaced += 1,
                Event::Progress(p) => {
                    // Pending upstream is only allowed for images whose batch upstream accepted.
                    let pending = p.count(Stage::Submitted)
                        + p.count(Stage::Processing)
                        + p.count(Stage::Completing);
                    let accepted = self
                        .accepted_images
                        .keys()
                        .filter(|i| i.upload == p.upload)
                        .count() as u32;
                    assert!(
                        pending <= accepted,
                        "{pending} pending but only {accepted} accepted upstream"
                    );
                }
            }
        }
    }

    fn act(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::SendRealtime {
                request, charge, ..
            } => {
                self.log.realtime_requests += 1;
                let obs = |l: &RateLimits, now| Observed {
                    remaining_requests: Some(l.requests().remaining(now)),
                    remaining_tokens: Some(l.tokens().remaining(now)),
                    retry_after: None,
                };
                let outcome = match self.limits.check(now, charge) {
                    Err(Denied::NotUntil { earliest, .. }) => {
                        self.log.upstream_429 += 1;
                        RealtimeOutcome::RateLimited {
                            retry_after: Some(earliest - now),
                            observed: obs(&self.limits, now),
                        }
                    }
                    Err(Denied::Never { .. }) => {
                        self.log.upstream_429 += 1;
                        RealtimeOutcome::RateLimited {
                            retry_after: None,
                            observed: obs(&self.limits, now),
                        }
                    }
                    Ok(()) => {
                        if self.chance(self.faults.extra_429) {
                            self.log.upstream_429 += 1;
                            RealtimeOutcome::RateLimited {
                                retry_after: Some(Duration::from_secs(1)),
                                observed: Observed::default(),
                            }
                        } else if self.chance(self.faults.server_error) {
                            RealtimeOutcome::ServerError { status: 500 }
                        } else if self.chance(self.faults.timeout) {
                            RealtimeOutcome::Timeout
                        } else {
                            RealtimeOutcome::Ok {
                                usage: Usage {
                                    input_tokens: charge.tokens,
                                    output_tokens: 40,
                                },
                                observed: obs(&self.limits, now),
                            }
                        }
                    }
                };
                let at = match outcome {
                    RealtimeOutcome::RateLimited { .. } => now + Duration::from_millis(50),
                    RealtimeOutcome::Timeout => now + Duration::from_secs(30),
                    _ => now + self.latency,
                };
                if outcome == RealtimeOutcome::Timeout && self.chance(self.faults.duplicate) {
                    // The request we gave up on answers after all, after its retry went out.
                    let late = RealtimeOutcome::Ok {
                        usage: Usage {
                            input_tokens: charge.tokens,
                            output_tokens: 40,
                        },
                        observed: Observed::default(),
                    };
                    self.push_delivery(
                        now + Duration::from_secs(60),
                        Delivery::Realtime(request, late),
                    );
                }
                self.deliver_at(at, Delivery::Realtime(request, outcome));
            }
            Action::UploadBatchFile { batch, images, .. } => {
                let result = if self.chance(self.faults.upload_fail) {
                    Err(UpstreamError {
                        status: Some(500),
                        message: "upload failed".into(),
                    })
                } else {
                    let id = format!("file-{}", self.files.len());
                    self.files.insert(id.clone(), images);
                    Ok(id)
                };
                self.deliver_at(
                    now + Duration::from_millis(200),
                    Delivery::FileUploaded(batch, result),
                );
            }
            Action::CreateBatch { batch, file_id } => {
                let fail = if self.fail_next_creates > 0 {
                    self.fail_next_creates -= 1;
                    true
                } else {
                    self.chance(self.faults.create_fail)
                };
                let result = if fail {
                    Err(UpstreamError {
                        status: Some(500),
                        message: "create failed".into(),
                    })
                } else {
                    let images = self.files.get(&file_id).cloned().unwrap_or_default();
                    let plan = if self.stuck_next_batches > 0 {
                        self.stuck_next_batches -= 1;
                        Plan::Stuck
                    } else if self.lost_next_batches > 0 {
                        self.lost_next_batches -= 1;
                        Plan::Lost
                    } else if self.expire_next_batches > 0 {
                        self.expire_next_batches -= 1;
                        Plan::Expire
                    } else if self.chance(self.faults.batch_validation_fail) {
                        Plan::FailValidation
                    } else if self.chance(self.faults.batch_token_limit) {
                        Plan::TokenLimit
                    } else if self.chance(self.faults.batch_expire) {
                        Plan::Expire
                    } else {
                        Plan::Complete
                    };
                    for img in &images {
                        *self.accepted_images.entry(*img).or_default() += 1;
                    }
                    let id = format!("batch_{}", self.batches.len());
                    self.batches.insert(
                        id.clone(),
                        FakeBatch {
                            images,
                            created: now,
                            plan,
                            cancelled: false,
                        },
                    );
                    self.log.batches_created += 1;
                    Ok(id)
                };
                self.deliver_at(
                    now + Duration::from_millis(200),
                    Delivery::BatchCreated(batch, result),
                );
            }
            Action::PollBatch { batch, batch_id } => {
                self.log
                    .first_poll
                    .entry(batch_id.to_string())
                    .or_insert(now);
                self.log.last_poll.insert(batch_id.to_string(), now);
                let result = if self.chance(self.faults.poll_fail) {
                    Err(UpstreamError {
                        status: None,
                        message: "connection reset".into(),
                    })
                } else {
                    Ok(self.status(&batch_id))
                };
                self.deliver_at(
                    now + Duration::from_millis(100),
                    Delivery::Status(batch, result),
                );
            }
            Action::CancelBatch { batch_id, .. } => {
                self.log.cancels.push((batch_id.to_string(), now));
                if self.drop_next_cancels > 0 {
                    self.drop_next_cancels -= 1;
                } else if let Some(b) = self.batches.get_mut(&*batch_id) {
                    b.cancelled = true;
                }
            }
            Action::DownloadResults {
                batch, batch_id, ..
            } => {
                let fail = if self.fail_next_downloads > 0 {
                    self.fail_next_downloads -= 1;
                    true
                } else {
                    self.chance(self.faults.download_fail)
                };
                let result = if fail {
                    let e = UpstreamError {
                        status: Some(503),
                        message: "download failed".into(),
                    };
                    if self.duplicate_download_failures {
                        self.deliver_at(
                            now + Duration::from_millis(310),
                            Delivery::Results(batch, Err(e.clone())),
                        );
                    }
                    Err(e)
                } else {
                    Ok(self.results(&batch_id))
                };
                self.deliver_at(
                    now + Duration::from_millis(300),
                    Delivery::Results(batch, result),
                );
            }
        }
    }

    fn status(&self, batch_id: &str) -> BatchStatus {
        let Some(b) = self.batches.get(batch_id) else {
            return BatchStatus {
                state: BatchState::Failed {
                    code: "not_found".into(),
                },
                output_file_id: None,
                error_file_id: None,
            };
        };
        let age = self.now - b.created;
        let state = match b.plan {
            Plan::Lost => BatchState::InProgress,
            _ if b.cancelled => BatchState::Cancelled,
            _ if age < Duration::from_secs(10) => BatchState::Validating,
            Plan::FailValidation => BatchState::Failed {
                code: "invalid_json_line".into(),
            },
            Plan::TokenLimit => BatchState::Failed {
                code: "token_limit_exceeded".into(),
            },
            Plan::Expire if age >= Duration::from_secs(86_400) => BatchState::Expired,
            Plan::Expire | Plan::Stuck => BatchState::InProgress,
            Plan::Complete if age >= self.batch_turnaround + Duration::from_secs(30) => {
                BatchState::Completed
            }
            Plan::Complete if age >= self.batch_turnaround => BatchState::Finalizing,
            Plan::Complete => BatchState::InProgress,
        };
        BatchStatus {
            state,
            output_file_id: Some(format!("out-{batch_id}")),
            error_file_id: Some(format!("err-{batch_id}")),
        }
    }

    fn results(&mut self, batch_id: &str) -> Vec<LineResult> {
        let Some(b) = self.batches.get(batch_id) else {
            return Vec::new();
        };
        let (plan, images) = (b.plan, b.images.clone());
        if plan == Plan::Stuck {
            // Cancelled with nothing done: no line for any image.
            return Vec::new();
        }
        let mut lines = Vec::new();
        for (i, img) in images.iter().enumerate() {
            // An expired batch finished only its first half.
            if plan == Plan::Expire && i % 2 == 1 {
                continue;
            }
            let outcome = if self.chance(self.faults.line_fail) {
                Err("server_error".to_owned())
            } else {
                Ok(Usage {
                    input_tokens: 2_850,
                    output_tokens: 40,
                })
            };
            lines.push(LineResult {
                custom_id: img.custom_id(),
                outcome,
            });
        }
        if self.chance(self.faults.junk_lines) {
            // A failed and a tagged copy of a line, a line for an image of another batch, and
            // lines that name no image of ours.
            if let Some(first) = images.first() {
                for outcome in [Err("dup".to_owned()), Ok(Usage::default())] {
                    lines.insert(
                        0,
                        LineResult {
                            custom_id: first.custom_id(),
                            outcome,
                        },
                    );
                }
            }
            let foreign = self
                .batches
                .iter()
                .filter(|(id, _)| id.as_str() != batch_id)
                .flat_map(|(_, b)| b.images.first().copied())
                .min();
            if let Some(other) = foreign {
                lines.push(LineResult {
                    custom_id: other.custom_id(),
                    outcome: Ok(Usage::default()),
                });
            }
            for junk in ["", "u0-i4294967295", "u99999-i0", "x", "u1-i+1"] {
                lines.push(LineResult {
                    custom_id: junk.into(),
                    outcome: Ok(Usage::default()),
                });
            }
        }
        lines
    }

    /// Runs until the engine is idle and nothing is in flight, or `limit` of virtual time passes.
    pub fn run(&mut self, limit: Duration) {
        let end = self.now + limit;
        for _ in 0..10_000_000u64 {
            self.pump();
            let next_delivery = self.deliveries.peek().map(|Reverse((t, _, _))| *t);
            let next = [next_delivery, self.engine.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { return };
            if next > end {
                return;
            }
            self.now = self.now.max(next);
            if next_delivery == Some(next) {
                let Some(Reverse((_, _, slot))) = self.deliveries.pop() else {
                    return;
                };
                let d = self.slots[slot].take().expect("each delivery once");
                let now = self.now;
                match d {
                    Delivery::Realtime(r, o) => self.engine.handle_realtime_response(now, r, o),
                    Delivery::FileUploaded(b, r) => self.engine.handle_file_uploaded(now, b, r),
                    Delivery::BatchCreated(b, r) => self.engine.handle_batch_created(now, b, r),
                    Delivery::Status(b, r) => self.engine.handle_batch_status(now, b, r),
                    Delivery::Results(b, r) => self.engine.handle_batch_results(now, b, r),
                }
            } else {
                self.wakeups += 1;
                self.engine.handle_timeout(self.now);
            }
        }
        panic!("harness loop bound reached");
    }

    /// Every image of every upload ended exactly once, and the engine agrees.
    pub fn assert_all_terminal_once(&self, uploads: &[(UploadId, u32)]) {
        for &(upload, n) in uploads {
            for index in 0..n {
                let img = ImageId { upload, index };
                let tagged = self.log.tagged.get(&img).map_or(0, |t| t.1);
                let failed = self.log.failed.get(&img).map_or(0, |f| f.1);
                assert_eq!(
                    tagged + failed,
                    1,
                    "{img}: tagged {tagged} times, failed {failed} times"
                );
                let stage = self.engine.stage(img).expect("known image");
                assert!(stage.is_terminal(), "{img} left in {stage:?}");
            }
            assert!(
                self.log.upload_complete.contains_key(&upload),
                "{upload} never completed"
            );
        }
        assert!(self.engine.is_idle());
    }
}
