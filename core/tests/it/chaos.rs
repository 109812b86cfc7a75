//! A hostile driver: answers actions in any order, twice, late, or not at all for a while, with
//! any outcome, and makes up answers for ids and phases that don't match. The engine must never
//! panic, never end an image twice, keep its per-stage counts in step, and once the driver turns
//! honest, end every image.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use tagstorm_core::limit::Observed;
use tagstorm_core::tokens::Usage;
use tagstorm_core::{
    Action, BatchRef, BatchState, BatchStatus, Config, Engine, Event, ImageId, LineResult,
    RealtimeOutcome, RequestId, Stage, Time, Upload, UploadId, UpstreamError, WorkspaceId,
};

use crate::harness::low;

fn err(msg: &str) -> UpstreamError {
    UpstreamError {
        status: Some(500),
        message: msg.into(),
    }
}

fn ok_usage() -> Usage {
    Usage {
        input_tokens: 2_850,
        output_tokens: 40,
    }
}

pub struct Chaos {
    pub engine: Engine,
    now: Time,
    rng: Pcg64Mcg,
    outstanding: Vec<Action>,
    batch_images: HashMap<BatchRef, Vec<ImageId>>,
    batch_ids: HashMap<BatchRef, String>,
    uploads: Vec<(UploadId, u32)>,
    terminal: BTreeMap<ImageId, u32>,
    complete: BTreeMap<UploadId, u32>,
    next_request_seen: u64,
}

impl Chaos {
    pub fn new(cfg: Config, seed: u64) -> Chaos {
        Chaos {
            engine: Engine::new(cfg).expect("valid config"),
            now: Time::ZERO,
            rng: Pcg64Mcg::seed_from_u64(seed),
            outstanding: Vec::new(),
            batch_images: HashMap::new(),
            batch_ids: HashMap::new(),
            uploads: Vec::new(),
            terminal: BTreeMap::new(),
            complete: BTreeMap::new(),
            next_request_seen: 0,
        }
    }

    fn drain(&mut self) {
        while let Some(a) = self.engine.poll_action() {
            match &a {
                Action::UploadBatchFile { batch, images, .. } => {
                    self.batch_images.insert(*batch, images.clone());
                }
                Action::SendRealtime { request, .. } => {
                    self.next_request_seen = self.next_request_seen.max(request.0 + 1);
                }
                _ => {}
            }
            self.outstanding.push(a);
        }
        while let Some(e) = self.engine.poll_event() {
            match e {
                Event::ImageTagged { image, .. } | Event::ImageFailed { image, .. } => {
                    let n = self.terminal.entry(image).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "{image} ended twice");
                    let stage = self.engine.stage(image).expect("known image");
                    assert!(stage.is_terminal(), "{image} ended but is {stage:?}");
                }
                Event::UploadComplete { upload, .. } => {
                    let n = self.complete.entry(upload).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "{upload} completed twice");
                }
                Event::Progress(p) => {
                    assert_eq!(p.by_stage.iter().sum::<u32>(), p.total, "{p:?}");
                }
                Event::DownloadFailed { .. } => {}
            }
        }
        for &(upload, _) in &self.uploads {
            let p = self
                .engine
                .progress(self.now, upload)
                .expect("known upload");
            assert_eq!(p.by_stage.iter().sum::<u32>(), p.total, "{p:?}");
        }
    }

    fn upload(&mut self) {
        let n = if self.rng.random_bool(0.3) {
            self.rng.random_range(20..400)
        } else {
            self.rng.random_range(1..20)
        };
        let ws = self.rng.random_range(0..3);
        let id = self
            .engine
            .handle_upload(
                self.now,
                Upload {
                    workspace: WorkspaceId(ws),
                    images: vec![low(); n as usize],
                    deadline: None,
                },
            )
            .expect("valid upload");
        self.uploads.push((id, n));
    }

    fn random_status(&mut self) -> Result<BatchStatus, UpstreamError> {
        let state = match self.rng.random_range(0..10) {
            0 => return Err(err("poll")),
            1 => BatchState::Validating,
            2 => BatchState::InProgress,
            3 => BatchState::Finalizing,
            4 | 5 => BatchState::Completed,
            6 => BatchState::Failed {
                code: "invalid".into(),
            },
            7 => BatchState::Failed {
                code: "token_limit_exceeded".into(),
            },
            8 => BatchState::Expired,
            _ => BatchState::Cancelled,
        };
        Ok(BatchStatus {
            state,
            output_file_id: Some("out".into()),
            error_file_id: None,
        })
    }

    fn random_lines(&mut self, batch: BatchRef) -> Result<Vec<LineResult>, UpstreamError> {
        if self.rng.random_bool(0.15) {
            return Err(err("download"));
        }
        let mut ids: Vec<ImageId> = self.batch_images.get(&batch).cloned().unwrap_or_default();
        // Some lines of another batch, some duplicates, some missing.
        if let Some(other) = self.batch_images.values().next() {
            ids.extend(other.iter().take(3));
        }
        let mut lines = Vec::new();
        for id in ids {
            if self.rng.random_bool(0.1) {
                continue;
            }
            let copies = if self.rng.random_bool(0.1) { 2 } else { 1 };
            for _ in 0..copies {
                let outcome = if self.rng.random_bool(0.2) {
                    Err("line_failed".into())
                } else {
                    Ok(ok_usage())
                };
                lines.push(LineResult {
                    custom_id: id.custom_id(),
                    outcome,
                });
            }
        }
        Ok(lines)
    }

    fn random_realtime(&mut self) -> RealtimeOutcome {
        match self.rng.random_range(0..8) {
            0 => RealtimeOutcome::RateLimited {
                retry_after: Some(Duration::from_millis(self.rng.random_range(0..5_000))),
                observed: Observed {
                    remaining_requests: Some(self.rng.random_range(0..10)),
                    remaining_tokens: Some(self.rng.random_range(0..10_000)),
                    retry_after: None,
                },
            },
            1 => RealtimeOutcome::ServerError { status: 503 },
            2 => RealtimeOutcome::Timeout,
            3 => RealtimeOutcome::Rejected {
                status: 400,
                message: "bad".into(),
            },
            _ => RealtimeOutcome::Ok {
                usage: Usage {
                    input_tokens: self.rng.random_range(0..10_000),
                    output_tokens: 40,
                },
                observed: Observed::default(),
            },
        }
    }

    /// Answers `action`, honestly (success) or not.
    fn answer(&mut self, action: &Action, honest: bool) {
        let now = self.now;
        match action {
            Action::SendRealtime { request, .. } => {
                let outcome = if honest {
                    RealtimeOutcome::Ok {
                        usage: ok_usage(),
                        observed: Observed::default(),
                    }
                } else {
                    self.random_realtime()
                };
                self.engine.handle_realtime_response(now, *request, outcome);
            }
            Action::UploadBatchFile { batch, .. } => {
                let r = if honest || self.rng.random_bool(0.7) {
                    Ok(format!("file-{}", batch.0))
                } else {
                    Err(err("upload"))
                };
                self.engine.handle_file_uploaded(now, *batch, r);
            }
            Action::CreateBatch { batch, .. } => {
                let r = if honest || self.rng.random_bool(0.7) {
                    let id = format!("batch_{}", batch.0);
                    self.batch_ids.insert(*batch, id.clone());
                    Ok(id)
                } else {
                    Err(err("create"))
                };
                self.engine.handle_batch_created(now, *batch, r);
            }
            Action::PollBatch { batch, batch_id } => {
                assert_eq!(
                    self.batch_ids.get(batch).map(String::as_str),
                    Some(&**batch_id),
                    "a poll carries the id create answered"
                );
                let r = if honest {
                    Ok(BatchStatus {
                        state: BatchState::Completed,
                        output_file_id: Some("out".into()),
                        error_file_id: None,
                    })
                } else {
                    self.random_status()
                };
                self.engine.handle_batch_status(now, *batch, r);
            }
            // Takes no answer.
            Action::CancelBatch { .. } => {}
            Action::DownloadResults { batch, .. } => {
                let r = if honest {
                    let lines = self.batch_images[batch]
                        .iter()
                        .map(|id| LineResult {
                            custom_id: id.custom_id(),
                            outcome: Ok(ok_usage()),
                        })
                        .collect();
                    Ok(lines)
                } else {
                    self.random_lines(*batch)
                };
                self.engine.handle_batch_results(now, *batch, r);
            }
        }
    }

    /// An answer nobody asked for: a random kind, id and outcome.
    fn made_up(&mut self) {
        let now = self.now;
        let batches = self.batch_images.len() as u32 + 2;
        let batch = BatchRef(self.rng.random_range(0..batches));
        match self.rng.random_range(0..5) {
            0 => {
                let r = RequestId(self.rng.random_range(0..self.next_request_seen + 2));
                let o = self.random_realtime();
                self.engine.handle_realtime_response(now, r, o);
            }
            1 => {
                let r = if self.rng.random_bool(0.5) {
                    Ok("file-x".into())
                } else {
                    Err(err("upload"))
                };
                self.engine.handle_file_uploaded(now, batch, r);
            }
            2 => {
                // Only failures: a made-up success would be an acceptance the fake never gave.
                self.engine
                    .handle_batch_created(now, batch, Err(err("create")));
            }
            3 => {
                let s = self.random_status();
                self.engine.handle_batch_status(now, batch, s);
            }
            _ => {
                let l = self.random_lines(batch);
                self.engine.handle_batch_results(now, batch, l);
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.engine.handle_timeout(self.now);
        }
    }

    pub fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            match self.rng.random_range(0..20) {
                0 => self.upload(),
                1..=9 if !self.outstanding.is_empty() => {
                    let i = self.rng.random_range(0..self.outstanding.len());
                    // Sometimes the answer comes again later: keep the action around.
                    let a = if self.rng.random_bool(0.15) {
                        self.outstanding[i].clone()
                    } else {
                        self.outstanding.swap_remove(i)
                    };
                    self.answer(&a, false);
                }
                10 | 11 => self.made_up(),
                _ => {
                    let ms = self.rng.random_range(0..120_000);
                    self.advance(Duration::from_millis(ms));
                }
            }
            self.drain();
        }
        // Honest from here: answer everything with success, wake at every timer.
        for _ in 0..1_000_000 {
            self.drain();
            if let Some(a) = self.outstanding.pop() {
                self.answer(&a, true);
                continue;
            }
            match self.engine.poll_timeout() {
                Some(t) => {
                    self.now = self.now.max(t);
                    self.engine.handle_timeout(self.now);
                }
                None => break,
            }
        }
        self.drain();
        for &(upload, n) in &self.uploads {
            for index in 0..n {
                let img = ImageId { upload, index };
                assert_eq!(self.terminal.get(&img), Some(&1), "{img} never ended");
                let stage = self.engine.stage(img).expect("known");
                assert!(stage.is_terminal(), "{img} left in {stage:?}");
            }
            assert_eq!(
                self.complete.get(&upload),
                Some(&1),
                "{upload} never completed"
            );
        }
        assert!(self.engine.is_idle());
        let _ = Stage::Queued;
    }
}
