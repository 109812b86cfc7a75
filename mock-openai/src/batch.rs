//! The Batch API lifecycle, evaluated lazily from `now`: a batch's whole timeline is sampled
//! once at creation, and every view (status, counts, results) is a function of that timeline
//! and `now`, so no ticking is needed and each call is O(1) or O(log n) apart from results.
//!
//! Timeline (facts §5, durations from [`crate::config::BatchConfig`]):
//! `validating → in_progress → finalizing → completed`; `validating → failed` (input errors,
//! `token_limit_exceeded`, scripted or random failure); `expired` at `expires_at` when
//! `in_progress` would overrun the window (it does not pass through `finalizing`, an
//! unconfirmed detail); `cancelling → cancelled` after a cancel in `validating` or
//! `in_progress` (others get 409, also unconfirmed).
//!
//! Requests finish one by one, in input order, evenly spread over `in_progress`, so
//! `request_counts` grows and expiry or cancellation leave real partial results. Work stops at
//! `cancelling_at`; the unfinished requests get `batch_cancelled` (or `batch_expired`).
//!
//! Queue: a batch's input tokens are enqueued at creation (the check is made then; a batch that
//! does not fit fails with `token_limit_exceeded` when validation ends and holds nothing) and
//! released when it ends — failed, completed, expired or cancelled.

use std::cmp::Reverse;
use std::time::Duration;

use compact_str::CompactString;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use serde::Serialize;
use tagstorm_core::Time;
use tagstorm_core::tokens::{Model, Usage};

use crate::error::ApiError;
use crate::fault::BatchOutcomeKind;
use crate::ids;
use crate::jsonl::BatchError;
use crate::latency::lognormal_ms;
use crate::org::OrgId;
use crate::tags::Tags;
use crate::upstream::Upstream;

/// The only endpoint the model serves batches for.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";

/// One request of a structured batch (the simulator's path: no JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLine {
    /// The caller's id, unique within the batch.
    pub custom_id: CompactString,
    /// The tags a successful answer carries: [`Tags::of`] the request's image URL, worked out
    /// once when the line is submitted.
    pub tags: Tags,
    /// Input tokens this request counts against the enqueued-token limit.
    pub charge_tokens: u64,
    /// The billing usage the request reports when it succeeds.
    pub usage: Usage,
}

/// A batch's status (facts §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Input being validated.
    Validating,
    /// Validation failed (or the enqueued-token limit was reached).
    Failed,
    /// Running.
    InProgress,
    /// Results being prepared.
    Finalizing,
    /// Results ready.
    Completed,
    /// Not completed within the window; partial results.
    Expired,
    /// Being cancelled.
    Cancelling,
    /// Cancelled; partial results.
    Cancelled,
}

impl BatchStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Failed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the batch has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Failed
                | BatchStatus::Completed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

/// `request_counts` of a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Requests in the batch.
    pub total: u64,
    /// Requests that succeeded so far.
    pub completed: u64,
    /// Requests that failed so far (at expiry/cancellation: including those never run).
    pub failed: u64,
}

/// What [`Upstream::poll_batch`] returns: the parts of a [`Batch`] a poller acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPoll {
    /// `status`.
    pub status: BatchStatus,
    /// `output_file_id`.
    pub output_file_id: Option<String>,
    /// `error_file_id`.
    pub error_file_id: Option<String>,
    /// The `code` of the first of `errors`, if any.
    pub error_code: Option<String>,
}

/// `errors` of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchErrors {
    /// Always `list`.
    pub object: &'static str,
    /// The errors.
    pub data: Vec<BatchError>,
}

/// `usage` of a batch (filled once it has ended; zeros before).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchUsage {
    /// Input tokens of the succeeded requests.
    pub input_tokens: u64,
    /// `{cached_tokens}`.
    pub input_tokens_details: CachedTokens,
    /// Output tokens of the succeeded requests.
    pub output_tokens: u64,
    /// `{reasoning_tokens}`.
    pub output_tokens_details: ReasoningTokens,
    /// Input + output.
    pub total_tokens: u64,
}

/// `input_tokens_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CachedTokens {
    /// Always 0 in the model.
    pub cached_tokens: u64,
}

/// `output_tokens_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReasoningTokens {
    /// Always 0 in the model.
    pub reasoning_tokens: u64,
}

/// The batch object as `GET /v1/batches/{id}` shows it (facts §5); timestamps in Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Batch {
    /// `batch_` + 32 hex.
    pub id: String,
    /// Always `batch`.
    pub object: &'static str,
    /// The endpoint its requests go to.
    pub endpoint: String,
    /// The model of its requests.
    pub model: String,
    /// Validation errors, if it failed validation.
    pub errors: Option<BatchErrors>,
    /// The input file (`file-…`, or a synthetic id on the structured path).
    pub input_file_id: String,
    /// Always `24h`.
    pub completion_window: String,
    /// Status at the time of the call.
    pub status: BatchStatus,
    /// The output file, once ended with at least one success.
    pub output_file_id: Option<String>,
    /// The error file, once ended with at least one failed request.
    pub error_file_id: Option<String>,
    /// Creation.
    pub created_at: u64,
    /// Validation passed.
    pub in_progress_at: Option<u64>,
    /// End of the completion window.
    pub expires_at: Option<u64>,
    /// All requests done.
    pub finalizing_at: Option<u64>,
    /// Results ready.
    pub completed_at: Option<u64>,
    /// Failed.
    pub failed_at: Option<u64>,
    /// Expired.
    pub expired_at: Option<u64>,
    /// Cancel requested.
    pub cancelling_at: Option<u64>,
    /// Cancelled.
    pub cancelled_at: Option<u64>,
    /// Counts at the time of the call.
    pub request_counts: RequestCounts,
    /// Token usage of succeeded requests (zeros until the batch ends).
    pub usage: BatchUsage,
    /// Always null in the model.
    pub metadata: Option<serde_json::Value>,
}

/// `GET /v1/batches`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchList {
    /// Always `list`.
    pub object: &'static str,
    /// Newest first.
    pub data: Vec<Batch>,
    /// Id of the first entry.
    pub first_id: Option<String>,
    /// Id of the last entry.
    pub last_id: Option<String>,
    /// Whether older batches follow.
    pub has_more: bool,
}

/// What happened to one request of an ended batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineOutcome {
    /// It succeeded.
    Ok {
        /// Billing usage.
        usage: Usage,
        /// Its image's tags: the content is `{"tags":[…]}`.
        tags: Tags,
    },
    /// It failed or never ran.
    Err {
        /// HTTP status for a request that ran and failed (500, or 400 for an invalid body on
        /// the file path); `None` if it never ran.
        status: Option<u16>,
        /// `server_error`, `invalid_request_error`, `batch_expired` or `batch_cancelled`.
        code: &'static str,
        /// The message.
        message: &'static str,
    },
}

/// One request's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineResult {
    /// The caller's id.
    pub custom_id: CompactString,
    /// Its outcome.
    pub outcome: LineOutcome,
}

/// The results of an ended batch, in input order (a failed batch has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchResults {
    /// The final status.
    pub status: BatchStatus,
    /// One entry per request.
    pub lines: Vec<LineResult>,
}

/// Message of a request that failed while running (facts §2, 500 body).
pub(crate) const LINE_FAILED_MESSAGE: &str =
    "The server had an error while processing your request. Sorry about that!";
/// Message of a request whose body was invalid, in [`BatchResults`] (the error file carries
/// the endpoint's own error for the body).
pub(crate) const REJECTED_MESSAGE: &str =
    "The request body is invalid; the batch's error file holds the error for it.";
/// Message of an expired request (facts §5, verbatim).
pub(crate) const EXPIRED_MESSAGE: &str =
    "This request could not be executed before the completion window expired.";
/// Message of a cancelled request (**[inferred]**, no verbatim source).
pub(crate) const CANCELLED_MESSAGE: &str =
    "This request was not executed because the batch was cancelled.";
/// Message of a random or scripted batch failure (**[inferred]**).
const BATCH_FAILED_MESSAGE: &str = "The batch failed due to an internal error. Please try again.";

/// The sampled plan of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Fails when validation ends.
    Fail { at: Time },
    /// Runs: requests finish evenly over `[in_progress_at, finalizing_at]`.
    Run {
        in_progress_at: Time,
        finalizing_at: Time,
        completed_at: Time,
    },
}

/// One batch's state.
#[derive(Debug)]
pub(crate) struct BatchState {
    pub id: String,
    pub org: OrgId,
    pub input_file_id: String,
    pub model: Model,
    pub lines: Vec<BatchLine>,
    /// Sorted indices of requests that fail while running (those of `rejected` included).
    pub failed_lines: Vec<u32>,
    /// Requests whose body the realtime endpoint would refuse (file path only), sorted by
    /// index, with that endpoint's error: they run and fail with it, unbilled. Empty on the
    /// structured path, which never looks here but for a line of `failed_lines`.
    pub rejected: Vec<(u32, ApiError)>,
    /// Sorted indices of requests whose answer `max_tokens` cuts short (file path only):
    /// their output line carries the truncated content and `finish_reason: "length"`, as the
    /// realtime answer does.
    pub cut_lines: Vec<u32>,
    pub errors: Vec<BatchError>,
    pub created: Time,
    pub expires: Time,
    /// Scripted [`BatchOutcomeKind::Stuck`]: its window never ends it.
    pub stuck: bool,
    pub plan: Plan,
    /// (cancelling_at, cancelled_at).
    pub cancel: Option<(Time, Time)>,
    pub queued_tokens: u64,
    pub released: bool,
    pub output_file_id: String,
    pub error_file_id: String,
    /// Whether the result files have been registered in the file store.
    pub files_registered: bool,
    /// How long its result files live after their creation (`output_expires_after`);
    /// `None`: the 30 days of batch files.
    pub output_ttl: Option<Duration>,
    /// Usage of succeeded requests, computed once the batch has ended.
    pub final_usage: Option<Usage>,
}

fn div_time(span: Duration, num: u64, den: u64) -> Duration {
    if den == 0 {
        return span;
    }
    let ns = span.as_nanos().saturating_mul(u128::from(num)) / u128::from(den);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

impl BatchState {
    /// When its completion window ends a batch still running: `expires`, or never for a stuck
    /// one.
    fn window_end(&self) -> Time {
        if self.stuck { Time::MAX } else { self.expires }
    }

    /// When the batch ends (its tokens leave the queue).
    pub fn end_time(&self) -> Time {
        if let Some((_, cancelled)) = self.cancel {
            return cancelled;
        }
        match self.plan {
            Plan::Fail { at } => at,
            Plan::Run { finalizing_at, .. } if finalizing_at > self.window_end() => self.expires,
            Plan::Run { completed_at, .. } => completed_at,
        }
    }

    pub fn status(&self, now: Time) -> BatchStatus {
        if let Some((cancelling, cancelled)) = self.cancel {
            if now >= cancelled {
                return BatchStatus::Cancelled;
            }
            if now >= cancelling {
                return BatchStatus::Cancelling;
            }
        }
        match self.plan {
            Plan::Fail { at } if now >= at => BatchStatus::Failed,
            Plan::Fail { .. } => BatchStatus::Validating,
            Plan::Run { finalizing_at, .. }
                if finalizing_at > self.window_end() && now >= self.expires =>
            {
                BatchStatus::Expired
            }
            Plan::Run { in_progress_at, .. } if now < in_progress_at => BatchStatus::Validating,
            Plan::Run { finalizing_at, .. } if finalizing_at > self.window_end() => {
                BatchStatus::InProgress
            }
            Plan::Run { finalizing_at, .. } if now < finalizing_at => BatchStatus::InProgress,
            Plan::Run { completed_at, .. } if now < completed_at => BatchStatus::Finalizing,
            Plan::Run { .. } => BatchStatus::Completed,
        }
    }

    /// Requests that have run (succeeded or failed) by `now`.
    pub fn done(&self, now: Time) -> u64 {
        let Plan::Run {
            in_progress_at,
            finalizing_at,
            ..
        } = self.plan
        else {
            return 0;
        };
        let mut stop = now.min(finalizing_at).min(self.window_end());
        if let Some((cancelling, _)) = self.cancel {
            stop = stop.min(cancelling);
        }
        let n = self.lines.len() as u64;
        if stop <= in_progress_at {
            return 0;
        }
        let span = finalizing_at - in_progress_at;
        if span.is_zero() {
            return n;
        }
        let ns = (stop - in_progress_at)
            .as_nanos()
            .saturating_mul(u128::from(n))
            / span.as_nanos();
        u64::try_from(ns).unwrap_or(n).min(n)
    }

    /// When request `i` finishes (for `created` in output lines).
    pub fn line_time(&self, i: u64) -> Time {
        match self.plan {
            Plan::Run {
                in_progress_at,
                finalizing_at,
                ..
            } => {
                in_progress_at
                    + div_time(
                        finalizing_at - in_progress_at,
                        i + 1,
                        self.lines.len() as u64,
                    )
            }
            Plan::Fail { at } => at,
        }
    }

    fn failed_before(&self, done: u64) -> u64 {
        self.failed_lines.partition_point(|&i| u64::from(i) < done) as u64
    }

    /// `request_counts` at `now`: all zero while `validating`, as OpenAI shows them (facts
    /// §5, observed `validating (0/0)`), the requests counted from `in_progress` on.
    /// `status` is [`BatchState::status`] at `now`, which the callers have already worked out.
    pub fn counts_at(&self, now: Time, status: BatchStatus) -> RequestCounts {
        if status == BatchStatus::Validating {
            return RequestCounts::default();
        }
        let total = self.lines.len() as u64;
        let done = self.done(now);
        let failed_run = self.failed_before(done);
        let never_run = if matches!(status, BatchStatus::Expired | BatchStatus::Cancelled) {
            total - done
        } else {
            0
        };
        RequestCounts {
            total,
            completed: done - failed_run,
            failed: failed_run + never_run,
        }
    }

    /// The error of request `i` if its body was invalid (see `rejected`).
    pub fn rejected_error(&self, i: usize) -> Option<&ApiError> {
        if self.rejected.is_empty() {
            return None;
        }
        let i = u32::try_from(i).ok()?;
        let at = self.rejected.binary_search_by_key(&i, |(k, _)| *k).ok()?;
        Some(&self.rejected[at].1)
    }

    /// Marks the requests of `rejected` (index and error, any order) as failing with their
    /// error when they run.
    pub fn reject_lines(&mut self, mut rejected: Vec<(u32, ApiError)>) {
        if rejected.is_empty() {
            return;
        }
        rejected.sort_by_key(|(i, _)| *i);
        self.failed_lines.extend(rejected.iter().map(|(i, _)| *i));
        self.failed_lines.sort_unstable();
        self.failed_lines.dedup();
        self.rejected = rejected;
    }

    pub fn line_outcome(
        &self,
        i: usize,
        done: u64,
        status: BatchStatus,
        tags: impl FnOnce() -> Tags,
    ) -> LineOutcome {
        if (i as u64) < done {
            if self.failed_lines.binary_search(&(i as u32)).is_ok() {
                match self.rejected_error(i) {
                    Some(e) => LineOutcome::Err {
                        status: Some(e.status),
                        code: "invalid_request_error",
                        message: REJECTED_MESSAGE,
                    },
                    None => LineOutcome::Err {
                        status: Some(500),
                        code: "server_error",
                        message: LINE_FAILED_MESSAGE,
                    },
                }
            } else {
                LineOutcome::Ok {
                    usage: self.lines[i].usage,
                    tags: tags(),
                }
            }
        } else if status == BatchStatus::Cancelled {
            LineOutcome::Err {
                status: None,
                code: "batch_cancelled",
                message: CANCELLED_MESSAGE,
            }
        } else {
            LineOutcome::Err {
                status: None,
                code: "batch_expired",
                message: EXPIRED_MESSAGE,
            }
        }
    }

    fn usage_of_successes(&self, done: u64) -> Usage {
        let mut sum = Usage::default();
        let mut failed = self.failed_lines.iter().peekable();
        for (i, line) in self
            .lines
            .iter()
            .enumerate()
            .take(usize::try_from(done).unwrap_or(usize::MAX))
        {
            if failed.peek().is_some_and(|&&f| f as usize == i) {
                failed.next();
                continue;
            }
            sum += line.usage;
        }
        sum
    }
}

/// Whether two of `lines` may share a `custom_id`: `false` only when the 64-bit FxHashes of
/// their ids are all different, so none repeats. The exact check (a set of the ids' strings)
/// then has nothing to find, and a batch of distinct ids, every batch the simulator makes,
/// skips it: the hashes go into an open-addressed table of bare `u64`s, half full at most,
/// where the set of strings cost about 90 instructions a line. Equal hashes, from a repeated
/// id or a collision, send the batch through the exact check, so the outcome is the same.
fn may_repeat_ids(lines: &[BatchLine]) -> bool {
    use std::hash::{Hash, Hasher};
    let size = (lines.len() * 2).next_power_of_two().max(2);
    let shift = 64 - size.trailing_zeros();
    // 0 marks an empty slot; a hash of 0 is taken as 1, which can only cost an exact check.
    let mut table = vec![0u64; size];
    for l in lines {
        let mut hasher = rustc_hash::FxHasher::default();
        l.custom_id.as_str().hash(&mut hasher);
        let h = hasher.finish().max(1);
        // The top bits: FxHash's best mixed.
        let mut i = (h >> shift) as usize;
        loop {
            match table[i] {
                0 => {
                    table[i] = h;
                    break;
                }
                v if v == h => return true,
                _ => i = (i + 1) & (size - 1),
            }
        }
    }
    false
}

/// The `input_file_id` the object of batch `idx` shows when it was created on the structured
/// path, with no uploaded file.
fn structured_input_file_id(seed: u64, idx: usize) -> String {
    ids::prefixed_alnum("file-", ids::mix(seed, ids::ns::FILE, !(idx as u64)), 22)
}

/// Why a batch is created already doomed.
pub(crate) enum Doom {
    None,
    Invalid(Vec<BatchError>),
}

/// Whether a new batch takes the next entry of `[batch] batch_outcomes`: every client batch
/// does; another client's batch in the simulator (`Upstream::submit_unscripted_batch`) does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Script {
    Take,
    Skip,
}

impl Upstream {
    /// The structured path (the simulator's): creates a batch of `lines` for `org` at `now`.
    /// Input problems (no lines, more than `max_requests`, duplicate `custom_id`s) make the
    /// batch fail validation, as on the file path; an unknown organization is a 401.
    pub fn submit_batch(
        &mut self,
        now: Time,
        org: OrgId,
        lines: Vec<BatchLine>,
    ) -> Result<Batch, ApiError> {
        let idx = self.submit_lines(now, org, lines, Script::Take)?;
        Ok(self.batch_view(now, idx))
    }

    /// [`Upstream::submit_batch`] for a batch that takes no entry of `[batch] batch_outcomes`:
    /// another client's batch in the same organization (the simulator's
    /// `sim.foreign_batch_tokens`), which a script written for the client under test does not
    /// mean. Its timeline is drawn as any batch's.
    pub fn submit_unscripted_batch(
        &mut self,
        now: Time,
        org: OrgId,
        lines: Vec<BatchLine>,
    ) -> Result<Batch, ApiError> {
        let idx = self.submit_lines(now, org, lines, Script::Skip)?;
        Ok(self.batch_view(now, idx))
    }

    /// [`Upstream::submit_batch`], answering with the new batch's id alone, with the same
    /// effects: the simulator reads nothing else of the batch object, whose strings cost more
    /// than the id.
    pub fn submit_batch_id(
        &mut self,
        now: Time,
        org: OrgId,
        lines: Vec<BatchLine>,
    ) -> Result<String, ApiError> {
        let idx = self.submit_lines(now, org, lines, Script::Take)?;
        // What the object's view does besides rendering: a batch that ended at once (a
        // zero-length timeline) registers its result files.
        self.settle(now, idx);
        Ok(self.batches[idx].id.clone())
    }

    /// Checks `lines` and creates their batch: its index.
    fn submit_lines(
        &mut self,
        now: Time,
        org: OrgId,
        lines: Vec<BatchLine>,
        script: Script,
    ) -> Result<usize, ApiError> {
        let mut errors = Vec::new();
        if lines.is_empty() {
            errors.push(BatchError {
                code: "empty_file".into(),
                message: "The input file has no requests.".into(),
                param: None,
                line: None,
            });
        } else if lines.len() as u64 > u64::from(self.config.batch.max_requests) {
            errors.push(BatchError {
                code: "too_many_tasks".into(),
                message: format!(
                    "The batch has {} requests; the limit is {} requests per batch.",
                    lines.len(),
                    self.config.batch.max_requests
                ),
                param: None,
                line: None,
            });
        } else if may_repeat_ids(&lines) {
            // FxHash, not SipHash: this structured path serves the simulator (50,000-line
            // batches of ids it wrote), not untrusted input; the JSONL path checks on its own.
            let mut seen = rustc_hash::FxHashSet::default();
            seen.reserve(lines.len());
            for (i, l) in lines.iter().enumerate() {
                if !seen.insert(l.custom_id.as_str()) {
                    errors.push(BatchError {
                        code: "duplicate_custom_id".into(),
                        message: format!("The custom_id '{}' is a duplicate of an earlier request; custom_id must be unique within a batch.", l.custom_id),
                        param: Some("custom_id".into()),
                        line: Some(i as u64 + 1),
                    });
                    break;
                }
            }
        }
        let doom = if errors.is_empty() {
            Doom::None
        } else {
            Doom::Invalid(errors)
        };
        let model = self
            .org_limits(org)
            .map(|l| l.model)
            .ok_or_else(|| ApiError::invalid_api_key("sk-****"))?;
        self.create_batch_state(now, org, model, String::new(), lines, doom, script)
    }

    /// Creates the batch and samples its timeline. `input_file_id` empty = structured path.
    // Eight inputs, each from a different place (the caller, the file, the checks); a struct
    // built at both call sites only to be taken apart here would say the same at more length.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_batch_state(
        &mut self,
        now: Time,
        org: OrgId,
        model: Model,
        input_file_id: String,
        lines: Vec<BatchLine>,
        doom: Doom,
        script: Script,
    ) -> Result<usize, ApiError> {
        let now = self.advance(now);
        self.release_ended(now, org);
        let idx = self.batches.len();
        let Some(o) = self.orgs.get_mut(org.0 as usize) else {
            return Err(ApiError::invalid_api_key("sk-****"));
        };
        let cfg = &self.config.batch;
        let mut rng = Pcg64::seed_from_u64(ids::mix(self.seed, 0xba7c_0000, idx as u64));
        let scripted = match script {
            Script::Take => {
                let k = usize::try_from(o.batches_created).ok();
                o.batches_created = o.batches_created.saturating_add(1);
                k.and_then(|k| cfg.batch_outcomes.get(k).copied())
            }
            Script::Skip => None,
        };
        // Every draw below is made whatever the outcome, so one batch's fate does not shift the
        // timeline of another with the same index under a different configuration.
        let validating = cfg.validating.sample(&mut rng);
        let u_outcome: f64 = rng.random();
        let n = lines.len() as f64;
        let ip_median_s = cfg.in_progress_base_s + cfg.in_progress_s_per_request * n;
        let ip_s = lognormal_ms(&mut rng, ip_median_s, cfg.in_progress_sigma);
        let fin_median_s = cfg.finalizing_base_s + cfg.finalizing_s_per_request * n;
        let fin_s = lognormal_ms(&mut rng, fin_median_s, 0.5).clamp(
            cfg.finalizing_base_s,
            cfg.finalizing_max_s.max(cfg.finalizing_base_s),
        );
        let expire_fraction: f64 = rng.random_range(0.3..0.95);

        let created = now;
        let expires = created + Duration::from_secs(cfg.completion_window_s);
        let validated = created + validating;
        let tokens: u64 = lines
            .iter()
            .fold(0u64, |a, l| a.saturating_add(l.charge_tokens));
        let mut errors = Vec::new();
        let mut queued_tokens = 0;
        let secs = |s: f64| crate::latency::ms_to_duration(s * 1000.0);
        let plan = match doom {
            Doom::Invalid(e) => {
                errors = e;
                Plan::Fail { at: validated }
            }
            Doom::None => {
                let outcome = scripted.unwrap_or(if u_outcome < cfg.fail_rate {
                    BatchOutcomeKind::Failed
                } else if u_outcome < cfg.fail_rate + cfg.expire_rate {
                    BatchOutcomeKind::Expired
                } else {
                    BatchOutcomeKind::Completed
                });
                let queue = &mut o.model_mut(model).queue;
                if !queue.try_enqueue(tokens) {
                    let limit = queue.limit();
                    errors.push(BatchError {
                        code: "token_limit_exceeded".into(),
                        message: format!(
                            "Enqueued token limit reached for {model} in organization {}. Limit: {} enqueued tokens. Please try again once some in_progress batches have been completed.",
                            o.name,
                            thousands(limit)
                        ),
                        param: None,
                        line: None,
                    });
                    Plan::Fail { at: validated }
                } else {
                    queued_tokens = tokens;
                    match outcome {
                        BatchOutcomeKind::Failed => {
                            errors.push(BatchError {
                                code: "batch_failed".into(),
                                message: BATCH_FAILED_MESSAGE.into(),
                                param: None,
                                line: None,
                            });
                            Plan::Fail { at: validated }
                        }
                        BatchOutcomeKind::Expired => {
                            let left = expires - validated;
                            let run =
                                Duration::try_from_secs_f64(left.as_secs_f64() / expire_fraction)
                                    .unwrap_or(left);
                            let fin = validated + run;
                            Plan::Run {
                                in_progress_at: validated,
                                finalizing_at: fin,
                                completed_at: fin + secs(fin_s),
                            }
                        }
                        BatchOutcomeKind::Stuck => Plan::Run {
                            in_progress_at: validated,
                            finalizing_at: Time::MAX,
                            completed_at: Time::MAX,
                        },
                        BatchOutcomeKind::Completed => {
                            let fin = validated + secs(ip_s);
                            Plan::Run {
                                in_progress_at: validated,
                                finalizing_at: fin,
                                completed_at: fin + secs(fin_s),
                            }
                        }
                    }
                }
            }
        };
        let mut failed_lines = Vec::new();
        if cfg.line_failure_rate > 0.0 && matches!(plan, Plan::Run { .. }) {
            for i in 0..lines.len() {
                if rng.random::<f64>() < cfg.line_failure_rate {
                    failed_lines.push(i as u32);
                }
            }
        }
        let id = self.fresh_batch_id();
        let (output_file_id, error_file_id) = self.fresh_file_id_pair();
        let state = BatchState {
            id: id.clone(),
            org,
            // Empty on the structured path: the batch object names a file id derived from
            // the batch's index (`structured_input_file_id`), worked out only when the object
            // is rendered; the simulator never reads it.
            input_file_id,
            model,
            lines,
            failed_lines,
            rejected: Vec::new(),
            cut_lines: Vec::new(),
            errors,
            created,
            expires,
            stuck: scripted == Some(BatchOutcomeKind::Stuck) && matches!(plan, Plan::Run { .. }),
            plan,
            cancel: None,
            queued_tokens,
            released: queued_tokens == 0,
            output_file_id,
            error_file_id,
            files_registered: false,
            output_ttl: None,
            final_usage: None,
        };
        let end = state.end_time();
        if let Some(o) = self.orgs.get_mut(org.0 as usize) {
            if queued_tokens > 0 {
                o.ending.push(Reverse((end, idx)));
            }
            o.batches.push(idx);
        }
        self.batches.push(state);
        self.batch_by_id.insert(id, idx);
        Ok(idx)
    }

    fn fresh_batch_id(&mut self) -> String {
        let mut k = self.batches.len() as u64;
        loop {
            let id = ids::prefixed_hex("batch_", ids::mix(self.seed, ids::ns::BATCH, k), 32);
            // A collision of 128 random bits is practically impossible; the bound only
            // guarantees termination.
            if !self.batch_by_id.contains_key(&id) || k > self.batches.len() as u64 + 64 {
                return id;
            }
            k += 1 << 32;
        }
    }

    /// Finds `id` among `org`'s batches.
    pub(crate) fn find_batch(&self, org: OrgId, id: &str) -> Result<usize, ApiError> {
        match self.batch_by_id.get(id) {
            Some(&idx) if self.batches.get(idx).is_some_and(|b| b.org == org) => Ok(idx),
            _ => Err(ApiError::no_such_object("Batch", id)),
        }
    }

    /// `GET /v1/batches/{id}`.
    pub fn retrieve_batch(&mut self, now: Time, org: OrgId, id: &str) -> Result<Batch, ApiError> {
        let now = self.advance(now);
        self.release_ended(now, org);
        let idx = self.find_batch(org, id)?;
        Ok(self.batch_view(now, idx))
    }

    /// What a client polling `GET /v1/batches/{id}` acts on, without rendering the whole
    /// object: the same status, file ids and first error code as [`Upstream::retrieve_batch`],
    /// with the same effects (a batch that has ended registers its result files). The
    /// simulator polls through this; a test holds it to `retrieve_batch`.
    pub fn poll_batch(&mut self, now: Time, org: OrgId, id: &str) -> Result<BatchPoll, ApiError> {
        let now = self.advance(now);
        self.release_ended(now, org);
        let idx = self.find_batch(org, id)?;
        let status = self.settle(now, idx);
        // Only a batch that has ended shows file ids, so a running one's counts (a 128-bit
        // division) are not worked out: most polls find the batch running.
        let counts = if status.is_terminal() {
            self.batches[idx].counts_at(now, status)
        } else {
            RequestCounts::default()
        };
        let (output_file_id, error_file_id) = self.result_file_ids(idx, status, counts);
        Ok(BatchPoll {
            status,
            output_file_id,
            error_file_id,
            error_code: (status == BatchStatus::Failed)
                .then(|| self.batches[idx].errors.first().map(|e| e.code.clone()))
                .flatten(),
        })
    }

    /// The batch's status at `now`; registers its result files once it has ended.
    fn settle(&mut self, now: Time, idx: usize) -> BatchStatus {
        let status = self.batches[idx].status(now);
        if status.is_terminal()
            && status != BatchStatus::Failed
            && !self.batches[idx].files_registered
        {
            let counts = self.batches[idx].counts_at(now, status);
            self.register_result_files(idx, counts);
        }
        status
    }

    /// `output_file_id` and `error_file_id` as the batch object shows them: once the batch has
    /// ended with results, each file that has lines.
    fn result_file_ids(
        &self,
        idx: usize,
        status: BatchStatus,
        counts: RequestCounts,
    ) -> (Option<String>, Option<String>) {
        let b = &self.batches[idx];
        let ended_with_results = matches!(
            status,
            BatchStatus::Completed | BatchStatus::Expired | BatchStatus::Cancelled
        );
        (
            (ended_with_results && counts.completed > 0).then(|| b.output_file_id.clone()),
            (ended_with_results && counts.failed > 0).then(|| b.error_file_id.clone()),
        )
    }

    /// When the batch's status next changes after `now`, if it still will (lets the
    /// simulator schedule a wake-up instead of polling).
    pub fn next_batch_transition(&self, now: Time, org: OrgId, id: &str) -> Option<Time> {
        let b = &self.batches[self.find_batch(org, id).ok()?];
        let mut points = vec![b.expires, b.end_time()];
        match b.plan {
            Plan::Fail { at } => points.push(at),
            Plan::Run {
                in_progress_at,
                finalizing_at,
                completed_at,
            } => points.extend([in_progress_at, finalizing_at, completed_at]),
        }
        if let Some((c, cd)) = b.cancel {
            points.extend([c, cd]);
        }
        let end = b.end_time();
        points.into_iter().filter(|t| *t > now && *t <= end).min()
    }

    /// `POST /v1/batches/{id}/cancel`: from `validating` or `in_progress` → `cancelling`;
    /// `cancelling` again → unchanged; any other status → 409.
    pub fn cancel_batch(&mut self, now: Time, org: OrgId, id: &str) -> Result<Batch, ApiError> {
        let now = self.advance(now);
        self.release_ended(now, org);
        let idx = self.find_batch(org, id)?;
        let status = self.batches[idx].status(now);
        match status {
            BatchStatus::Validating | BatchStatus::InProgress => {
                let delay = Duration::from_millis(
                    self.rng_batch
                        .random_range(0..=self.config.batch.cancel_delay_s.saturating_mul(1000)),
                );
                let b = &mut self.batches[idx];
                b.cancel = Some((now, now + delay));
                // A doomed batch no longer fails later: cancellation takes over.
                let end = b.end_time();
                if !b.released {
                    if let Some(o) = self.orgs.get_mut(org.0 as usize) {
                        o.ending.push(Reverse((end, idx)));
                    }
                }
                self.release_ended(now, org);
                Ok(self.batch_view(now, idx))
            }
            BatchStatus::Cancelling => Ok(self.batch_view(now, idx)),
            other => Err(ApiError::cannot_cancel(other.as_str())),
        }
    }

    /// `GET /v1/batches?after=&limit=`: newest first; `limit` is clamped to 1..=100 (default
    /// 20); an unknown `after` gives an empty page.
    pub fn list_batches(
        &mut self,
        now: Time,
        org: OrgId,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> BatchList {
        let now = self.advance(now);
        self.release_ended(now, org);
        let limit = limit.unwrap_or(20).clamp(1, 100) as usize;
        let all: Vec<usize> = self
            .orgs
            .get(org.0 as usize)
            .map(|o| o.batches.iter().rev().copied().collect())
            .unwrap_or_default();
        let start = match after {
            None => 0,
            Some(a) => match all.iter().position(|&i| self.batches[i].id == a) {
                Some(p) => p + 1,
                None => all.len(),
            },
        };
        let page: Vec<usize> = all.iter().skip(start).take(limit).copied().collect();
        let has_more = start + page.len() < all.len();
        let data: Vec<Batch> = page.into_iter().map(|i| self.batch_view(now, i)).collect();
        BatchList {
            object: "list",
            first_id: data.first().map(|b| b.id.clone()),
            last_id: data.last().map(|b| b.id.clone()),
            has_more,
            data,
        }
    }

    /// How many batches, over every organization, are in each status at `now`, in
    /// [`BatchStatus::ALL`]'s order: one pass that builds no batch objects, for a metrics
    /// scrape that must not hold the model for long.
    pub fn batch_status_counts(&mut self, now: Time) -> [u64; 8] {
        let now = self.advance(now);
        let mut counts = [0u64; 8];
        for b in &self.batches {
            let status = b.status(now);
            if let Some(i) = BatchStatus::ALL.iter().position(|s| *s == status) {
                counts[i] += 1;
            }
        }
        counts
    }

    /// The structured results of an ended batch (`None` while it runs or if unknown).
    pub fn batch_results(&mut self, now: Time, org: OrgId, id: &str) -> Option<BatchResults> {
        let now = self.advance(now);
        self.release_ended(now, org);
        let idx = self.find_batch(org, id).ok()?;
        let b = &self.batches[idx];
        let status = b.status(now);
        if !status.is_terminal() {
            return None;
        }
        if status == BatchStatus::Failed {
            return Some(BatchResults {
                status,
                lines: Vec::new(),
            });
        }
        let done = b.done(now);
        let lines = b
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| LineResult {
                custom_id: l.custom_id.clone(),
                outcome: b.line_outcome(i, done, status, || l.tags),
            })
            .collect();
        Some(BatchResults { status, lines })
    }

    /// The batch object at `now`; registers result files once it has ended.
    pub(crate) fn batch_view(&mut self, now: Time, idx: usize) -> Batch {
        let status = self.settle(now, idx);
        let counts = self.batches[idx].counts_at(now, status);
        let usage = if status.is_terminal() {
            let b = &mut self.batches[idx];
            let done = b.done(now);
            let u = match b.final_usage {
                Some(u) => u,
                None => {
                    let u = b.usage_of_successes(done);
                    b.final_usage = Some(u);
                    u
                }
            };
            BatchUsage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                total_tokens: u.total(),
                ..BatchUsage::default()
            }
        } else {
            BatchUsage::default()
        };
        let epoch = self.config.epoch_unix_s;
        let unix = move |t: Time| epoch.saturating_add(t.as_nanos() / 1_000_000_000);
        let b = &self.batches[idx];
        let reached = |t: Time| (now >= t).then(|| unix(t));
        let (
            mut in_progress_at,
            mut finalizing_at,
            mut completed_at,
            mut failed_at,
            mut expired_at,
        ) = (None, None, None, None, None);
        match b.plan {
            Plan::Fail { at } => {
                if b.cancel.is_none_or(|(c, _)| c >= at) {
                    failed_at = reached(at);
                }
            }
            Plan::Run {
                in_progress_at: ip,
                finalizing_at: fin,
                completed_at: done,
            } => {
                let stop = b.cancel.map_or(Time::MAX, |(c, _)| c);
                in_progress_at = if ip < stop { reached(ip) } else { None };
                if fin > b.window_end() {
                    if b.expires < stop {
                        expired_at = reached(b.expires);
                    }
                } else if fin < stop {
                    finalizing_at = reached(fin);
                    completed_at = if done < stop { reached(done) } else { None };
                }
            }
        }
        let (output_file_id, error_file_id) = self.result_file_ids(idx, status, counts);
        Batch {
            id: b.id.clone(),
            object: "batch",
            // The only endpoint batches are created for.
            endpoint: CHAT_ENDPOINT.to_owned(),
            model: b.model.as_str().to_owned(),
            // Validation errors appear when the batch fails, not while it validates (nor
            // after a cancel that came first).
            errors: (status == BatchStatus::Failed && !b.errors.is_empty()).then(|| BatchErrors {
                object: "list",
                data: b.errors.clone(),
            }),
            input_file_id: if b.input_file_id.is_empty() {
                structured_input_file_id(self.seed, idx)
            } else {
                b.input_file_id.clone()
            },
            completion_window: "24h".to_owned(),
            status,
            output_file_id,
            error_file_id,
            created_at: unix(b.created),
            in_progress_at,
            expires_at: Some(unix(b.expires)),
            finalizing_at,
            completed_at,
            failed_at,
            expired_at,
            cancelling_at: b.cancel.and_then(|(c, _)| reached(c)),
            cancelled_at: b.cancel.and_then(|(_, cd)| reached(cd)),
            request_counts: counts,
            usage,
            metadata: None,
        }
    }
}

/// `2000000` → `2,000,000`, as the queue-limit message prints it (facts §5).
pub fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_limits_print_with_thousands_separators() {
        // Facts §5: "Limit: 2,000,000 enqueued tokens." The tier limits of facts §7 print alike.
        for (v, text) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (90_000, "90,000"),
            (2_000_000, "2,000,000"),
            (20_000_000, "20,000,000"),
            (15_000_000_000, "15,000,000,000"),
            (u64::MAX, "18,446,744,073,709,551,615"),
        ] {
            assert_eq!(thousands(v), text);
        }
    }

    #[test]
    fn repeated_custom_ids_are_always_suspected() {
        let line = |id: String| BatchLine {
            custom_id: id.into(),
            tags: Tags::of("x"),
            charge_tokens: 1,
            usage: Usage::default(),
        };
        for n in [1_usize, 2, 3, 7, 64, 200, 1_000] {
            let ids: Vec<String> = (0..n).map(|i| format!("u3-i{i}")).collect();
            let distinct: Vec<BatchLine> = ids.iter().cloned().map(line).collect();
            assert!(!may_repeat_ids(&distinct), "{n} distinct ids");
            for (a, b) in [(0, n - 1), (n / 2, n / 2 + 1), (n - 1, n)] {
                let mut with_repeat = ids.clone();
                with_repeat.insert(b.min(n), ids[a].clone());
                let lines: Vec<BatchLine> = with_repeat.into_iter().map(line).collect();
                assert!(may_repeat_ids(&lines), "{n} ids, {a} again at {b}");
            }
        }
        assert!(!may_repeat_ids(&[]));
    }
}
