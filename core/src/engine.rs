//! The sans-IO engine: uploads and upstream answers in through `handle_*`, actions out through `poll_*`.
//!
//! The engine owns every decision and every image's bookkeeping. A driver (the simulator, the
//! gateway, a test) owns time and I/O: it calls `handle_*(now, …)` with whatever happened,
//! then drains [`Engine::poll_action`] and [`Engine::poll_event`], and calls
//! [`Engine::handle_timeout`] at [`Engine::poll_timeout`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
// Fx over SipHash: these maps are keyed by our own dense ids, never by user input, and are only
// looked up, never iterated, so neither HashDoS nor iteration order matters here.
use rustc_hash::FxHashMap as HashMap;

use crate::config::{Config, Exhausted, PolicyError, Preference, RealtimeOrder, Routing, scaled};
use crate::cost::Channel;
use crate::ids::{BatchRef, ImageId, RequestId, UploadId, WorkspaceId};
use crate::limit::{self, Bucket, Charge, Denied, Observed, RateLimits, TokenQueue};
use crate::retry::Backoff;
use crate::split::{self, LineParams, SplitItem};
use crate::state::{FailReason, Progress, Stage};
use crate::time::Time;
use crate::tokens::{self, ImageSpec, Usage};

/// Images one upload may carry. Bounded so one request can't exhaust memory.
pub const MAX_IMAGES_PER_UPLOAD: usize = 1_000_000;

/// How often a token-limit hold is retried before its images fail with [`FailReason::QueueFull`].
const MAX_QUEUE_HOLDS: u8 = 24;

/// How long a batch core has cancelled (`batch_overdue_ms`) may take to end before core lets
/// go of it without its results: cancelling takes up to 10 minutes (facts §5), so an hour
/// means upstream is not going to end it.
pub const CANCEL_GRACE: Duration = Duration::from_secs(3600);

/// How long after a cancel core asks again while upstream still reports the batch running (not
/// `cancelling`): the request may have been lost on its way or refused for a moment.
pub const CANCEL_RETRY: Duration = Duration::from_secs(300);

/// Under `realtime_order = "smallest-upload"`, an upload's realtime images are ordered by its
/// start plus `AGING` times how long its images take at the account's rate: a later upload
/// passes it only while it would be done sooner that way, so a large upload lets others pass
/// for at most about eight times its own length. On the x12.5 workday (three seeds) this gives
/// upload-complete p50 21-24% below arrival order with the slowest upload at most 19% later;
/// pure smallest-first (no aging) gave p50 about 55% lower but the slowest upload 1.6-2.6x
/// later.
const AGING: u64 = 8;

/// How long a learned [`ForeignShare`] is first kept before core probes the whole queue
/// again; it doubles with each refused round in a row.
const FOREIGN_HOLD: Duration = Duration::from_secs(60);

/// Tokens other clients of the organization hold in upstream's enqueued-token queue, which
/// core cannot see. A `token_limit_exceeded` teaches it: all of the queue that is not ours is
/// taken as theirs, so the queue reads full. Room our own batches free after that is ours to
/// take again at once. Theirs is kept for [`FOREIGN_HOLD`], doubled with every refused round
/// in a row up to one batch turnaround, and then dropped: the next batches probe the whole
/// queue. A refused probe costs a validation, and each of its images one of its
/// `MAX_QUEUE_HOLDS`; a probe upstream accepts ends the run of refusals.
#[derive(Clone, Copy, Debug, Default)]
struct ForeignShare {
    tokens: u64,
    until: Time,
    /// Refused rounds since upstream last accepted a probe.
    strikes: u32,
    /// When the last lesson was learned: a batch planned before it was refused for what that
    /// lesson already says.
    learned_at: Time,
}

impl ForeignShare {
    /// What is still taken as theirs at `now`.
    fn tokens_at(&self, now: Time) -> u64 {
        if now < self.until { self.tokens } else { 0 }
    }

    /// A `token_limit_exceeded` at `now` for a batch planned at `planned`, with `theirs` the
    /// queue's tokens that are not ours.
    fn learn(&mut self, now: Time, planned: Time, theirs: u64, longest: Duration) {
        self.tokens = theirs;
        if planned < self.learned_at {
            // One round fills the queue with several batches, refused one after another: the
            // first refusal taught it; the others say nothing new.
            return;
        }
        self.learned_at = now;
        let hold = FOREIGN_HOLD
            .saturating_mul(1 << self.strikes.min(16))
            .min(longest.max(FOREIGN_HOLD));
        self.strikes = self.strikes.saturating_add(1);
        self.until = now + hold;
    }
}

/// Whether a saturating per-image attempt counter has used up a policy's `max` attempts. A
/// saturated counter counts as exhausted: otherwise a `max` above the counter's range would
/// retry an image that always fails forever, and it would never end.
fn attempts_exhausted(attempts: u16, max: u32) -> bool {
    u32::from(attempts) >= max || attempts == u16::MAX
}

/// One image of an upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInput {
    /// Size and detail, for the token estimate.
    pub spec: ImageSpec,
    /// Length in bytes of the image URL as it appears JSON-escaped in a batch line (a data URL
    /// is long), so batch files are split by their real size.
    pub url_len: u32,
}

/// An upload of images by one workspace.
#[derive(Clone, Debug, PartialEq)]
pub struct Upload {
    /// The uploading workspace.
    pub workspace: WorkspaceId,
    /// The images, in order; an image's index is its position here.
    pub images: Vec<ImageInput>,
    /// When the upload should be complete, after it starts; the policy's `deadline_ms` if `None`.
    pub deadline: Option<Duration>,
}

/// An upload core refuses. Nothing is recorded for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// The upload has no images.
    #[error("images: an upload needs at least one image")]
    Empty,
    /// The upload has more images than [`MAX_IMAGES_PER_UPLOAD`].
    #[error("images: {count} images is more than the {max} an upload may carry")]
    TooMany {
        /// Images in the upload.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An image has a zero width or height.
    #[error("images[{index}]: width_px and height_px must be at least 1")]
    ZeroSize {
        /// The image's index.
        index: usize,
    },
}

/// Something core wants the driver to do. Each is answered by one `handle_*` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send one realtime chat completion for `image`; answer with
    /// [`Engine::handle_realtime_response`].
    SendRealtime {
        /// This attempt's id.
        request: RequestId,
        /// The image.
        image: ImageId,
        /// Its workspace.
        workspace: WorkspaceId,
        /// Its size and detail.
        spec: ImageSpec,
        /// What the request counts against RPM and TPM.
        charge: Charge,
        /// The request's `max_tokens`.
        max_tokens: u32,
    },
    /// Write these images as a JSONL file (one line each, `custom_id` = the image id) and upload
    /// it; answer with [`Engine::handle_file_uploaded`].
    UploadBatchFile {
        /// Core's handle on the batch.
        batch: BatchRef,
        /// The images, one line each.
        images: Vec<ImageId>,
        /// The file's size, counted from the real line bytes.
        bytes: u64,
        /// Input tokens the batch counts against the enqueued-token queue.
        tokens: u64,
    },
    /// Create a batch from the uploaded file; answer with [`Engine::handle_batch_created`].
    CreateBatch {
        /// Core's handle.
        batch: BatchRef,
        /// The uploaded input file.
        file_id: String,
    },
    /// Retrieve the batch's status; answer with [`Engine::handle_batch_status`].
    PollBatch {
        /// Core's handle.
        batch: BatchRef,
        /// Upstream's batch id, shared with core's record of the batch: a batch is polled
        /// every minute or so for hours, and each poll copied the id into a new `String`.
        batch_id: Arc<str>,
    },
    /// Ask upstream to cancel a batch that passed the policy's `batch_overdue_ms`. Core needs
    /// no answer: it goes on polling the batch, and a refusal (the batch has just ended)
    /// changes nothing.
    CancelBatch {
        /// Core's handle.
        batch: BatchRef,
        /// Upstream's batch id.
        batch_id: Arc<str>,
    },
    /// Download the batch's output and error files; answer with [`Engine::handle_batch_results`].
    DownloadResults {
        /// Core's handle.
        batch: BatchRef,
        /// Upstream's batch id.
        batch_id: Arc<str>,
        /// The output file, if any.
        output_file_id: Option<String>,
        /// The error file, if any.
        error_file_id: Option<String>,
    },
}

/// Something that happened, for the driver to record or push to users.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An image was tagged. Emitted once per image, and then never a failure for it.
    ImageTagged {
        /// The image.
        image: ImageId,
        /// When.
        at: Time,
        /// Which API tagged it.
        channel: Channel,
        /// Tokens billed for it.
        usage: Usage,
    },
    /// An image failed for good. Emitted once per image, and then never a tag for it.
    ImageFailed {
        /// The image.
        image: ImageId,
        /// When.
        at: Time,
        /// Why.
        reason: FailReason,
    },
    /// Every image of the upload is terminal.
    UploadComplete {
        /// The upload.
        upload: UploadId,
        /// When.
        at: Time,
    },
    /// A batch's results could not be downloaded; surfaced every time, retried until
    /// `download_max_attempts`.
    DownloadFailed {
        /// The batch.
        batch: BatchRef,
        /// Attempts so far.
        attempt: u32,
        /// The error.
        error: String,
    },
    /// An upload's counts changed (coalesced: at most one per upload per `handle_*` call).
    Progress(Progress),
}

/// How a realtime request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RealtimeOutcome {
    /// 200, with the usage upstream reported.
    Ok {
        /// Billed tokens.
        usage: Usage,
        /// The `x-ratelimit-remaining-*` values, if sent.
        observed: Observed,
    },
    /// 429 rate limited.
    RateLimited {
        /// The retry-after upstream sent, if any.
        retry_after: Option<Duration>,
        /// The `x-ratelimit-remaining-*` values, if sent.
        observed: Observed,
    },
    /// 5xx.
    ServerError {
        /// The status.
        status: u16,
    },
    /// No answer in time, or the connection broke.
    Timeout,
    /// A 4xx other than 429: the request itself is wrong and won't succeed on retry.
    Rejected {
        /// The status.
        status: u16,
        /// Upstream's message.
        message: String,
    },
}

/// A call to the Files or Batch API that failed (network, 5xx, 4xx).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamError {
    /// HTTP status, if there was a response.
    pub status: Option<u16>,
    /// What went wrong.
    pub message: String,
}

/// A batch's status as the Batch API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchState {
    /// Input being validated.
    Validating,
    /// Running.
    InProgress,
    /// Results being prepared.
    Finalizing,
    /// Results ready.
    Completed,
    /// Failed validation, or the enqueued-token limit (`code` = `token_limit_exceeded`).
    Failed {
        /// The first error's code.
        code: String,
    },
    /// Not finished within the completion window; finished lines are in the output.
    Expired,
    /// Being cancelled.
    Cancelling,
    /// Cancelled; finished lines are in the output.
    Cancelled,
}

/// A batch status answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchStatus {
    /// The state.
    pub state: BatchState,
    /// The output file, once there is one.
    pub output_file_id: Option<String>,
    /// The error file, once there is one.
    pub error_file_id: Option<String>,
}

/// One line of a batch's output or error file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineResult {
    /// The line's `custom_id`.
    pub custom_id: CompactString,
    /// What happened to it.
    pub outcome: Result<Usage, String>,
}

/// Counters the engine keeps about its own traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Realtime requests handed out.
    pub realtime_sent: u64,
    /// Realtime answers that were 429.
    pub rate_limited: u64,
    /// Realtime answers that were 5xx.
    pub server_errors: u64,
    /// Realtime timeouts.
    pub timeouts: u64,
    /// Retries scheduled (realtime re-sends and batch re-submissions).
    pub retries: u64,
    /// Batches upstream accepted.
    pub batches_created: u64,
    /// Images moved from the realtime queue to the batch queue after a failure.
    pub fallbacks_to_batch: u64,
    /// Batches still running past `batch_overdue_ms`, each cancelled once with an
    /// [`Action::CancelBatch`] (upstream may refuse: the batch had just ended).
    pub batches_overdue: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ChunkRelease(UploadId),
    Retry(ImageId),
    Poll(BatchRef),
    Download(BatchRef),
    BatchHold,
}

/// Where a realtime image joins the queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// The first images of an upload, for a fast first tag: served before every workspace's
    /// other work, in upload order.
    Head,
    /// Everything else, in arrival order.
    Rest,
    /// A retry whose wait is over: first in line.
    Retry,
}

/// A workspace's realtime queue: retries (and heads its own quota held back) ahead of the rest.
///
/// The rest goes in arrival order, or the soonest done first ([`RealtimeOrder`]). Then it
/// is kept as runs of consecutive images of one upload, since an upload's images are queued
/// one after another: a run costs one heap entry however large the upload, and taking its
/// next image changes only the run's start (which keeps it least among its upload's runs).
#[derive(Debug, Default)]
struct Lanes {
    heads: VecDeque<ImageId>,
    rest: VecDeque<ImageId>,
    /// Smallest upload first: runs, least `(key, upload, start)` first.
    runs: BinaryHeap<Reverse<Run>>,
    /// The run being queued into, not yet in `runs`.
    open: Option<Run>,
}

/// Images `start..end` of one upload, queued in the order of `key` (its upload's
/// `order_key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Run {
    key: u64,
    upload: u32,
    start: u32,
    end: u32,
}

impl Run {
    fn first(&self) -> ImageId {
        ImageId {
            upload: UploadId(self.upload),
            index: self.start,
        }
    }
}

impl Lanes {
    /// Queues `image`; `key` orders the rest when it does not go in arrival order.
    fn push(&mut self, image: ImageId, lane: Lane, key: Option<u64>) {
        match (lane, key) {
            // Parked heads keep their upload order; a retry goes first.
            (Lane::Head, _) => self.heads.push_back(image),
            (Lane::Retry, _) => self.heads.push_front(image),
            (Lane::Rest, None) => self.rest.push_back(image),
            (Lane::Rest, Some(key)) => match &mut self.open {
                Some(r) if r.upload == image.upload.0 && r.end == image.index => r.end += 1,
                open => {
                    if let Some(r) = open.take() {
                        self.runs.push(Reverse(r));
                    }
                    *open = Some(Run {
                        key,
                        upload: image.upload.0,
                        start: image.index,
                        end: image.index + 1,
                    });
                }
            },
        }
    }

    /// Whether the open run goes before the heap's least run.
    fn open_first(&self) -> bool {
        match (&self.open, self.runs.peek()) {
            (Some(o), Some(Reverse(r))) => o < r,
            (open, _) => open.is_some(),
        }
    }

    fn front(&self) -> Option<ImageId> {
        if let Some(&image) = self.heads.front() {
            return Some(image);
        }
        if let Some(&image) = self.rest.front() {
            return Some(image);
        }
        if self.open_first() {
            return self.open.map(|r| r.first());
        }
        self.runs.peek().map(|Reverse(r)| r.first())
    }

    fn pop_front(&mut self) -> Option<ImageId> {
        if let Some(image) = self.heads.pop_front() {
            return Some(image);
        }
        if let Some(image) = self.rest.pop_front() {
            return Some(image);
        }
        if self.open_first() {
            let r = self.open.as_mut()?;
            let image = r.first();
            r.start += 1;
            if r.start == r.end {
                self.open = None;
            }
            return Some(image);
        }
        let mut top = self.runs.peek_mut()?;
        let image = top.0.first();
        top.0.start += 1;
        if top.0.start == top.0.end {
            std::collections::binary_heap::PeekMut::pop(top);
        }
        Some(image)
    }

    fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.rest.is_empty() && self.open.is_none() && self.runs.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Realtime,
    Batch,
}

#[derive(Clone, Copy, Debug)]
struct ImageRec {
    spec: ImageSpec,
    url_len: u32,
    /// What the image's realtime request counts against TPM.
    charge_tokens: u64,
    /// Input tokens it counts against the batch queue.
    queue_tokens: u64,
    stage: Stage,
    route: Route,
    /// Realtime attempts and trips through the Batch API so far. The policy's limits are u32;
    /// these counters saturate at `u16::MAX` (which then counts as exhausted, see
    /// `attempts_exhausted`) so that a record stays 64 bytes. They were u8 once, and a policy
    /// above 255 attempts then retried a failing image forever.
    attempts: u16,
    batch_attempts: u16,
    holds: u8,
    /// The realtime attempt in flight, if any.
    request: Option<RequestId>,
    batch: Option<BatchRef>,
}

#[derive(Debug)]
struct UploadState {
    workspace: usize,
    start: Time,
    /// Under `smallest-upload`: its start plus [`AGING`] times how long its images take at the
    /// account's rate (ns); its realtime images go in this order.
    order_key: u64,
    images: Vec<ImageRec>,
    by_stage: [u32; 7],
    /// Next image index a chunked upload releases, and how many remain unreleased.
    chunk_next: u32,
    chunk_end: u32,
    done: bool,
    progress_dirty: bool,
}

#[derive(Debug)]
struct WorkspaceState {
    id: WorkspaceId,
    limits: Option<RateLimits>,
    realtime: Lanes,
    /// Images waiting for a batch, each with what the splitter needs of it (its line's bytes
    /// and its queue tokens), worked out once when it joins: core re-plans this queue tens of
    /// thousands of times a day, and a lookup of each image's record there (a likely cache
    /// miss) and the digits of its `custom_id` were most of a plan's cost.
    batch: VecDeque<(ImageId, SplitItem)>,
    deficit: u64,
    in_ring: bool,
    blocked_until: Time,
    batches_per_hour: Option<Bucket>,
    images_per_hour: Option<Bucket>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BatchPhase {
    Uploading,
    Creating,
    Running,
    Downloading,
    Done,
}

#[derive(Debug)]
struct BatchRec {
    images: Vec<ImageId>,
    tokens: u64,
    phase: BatchPhase,
    batch_id: Option<Arc<str>>,
    created_at: Time,
    next_poll: Time,
    poll_interval: Duration,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    download_attempts: u32,
    /// A download was asked for and not yet answered: a second answer to the same request
    /// (a duplicated message) must not count as another attempt.
    download_pending: bool,
    queue_released: bool,
    terminal_state: Option<BatchState>,
    /// The stage the batch's pending images were last moved to. A poll that reports the same
    /// stage again (most polls: a batch runs for hours) leaves them as they are instead of
    /// walking every image.
    reported: Stage,
    /// When core first asked upstream to cancel it (`batch_overdue_ms`).
    cancel_sent: Option<Time>,
    /// When core may ask again, should upstream still report it running.
    cancel_again_at: Time,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    image: ImageId,
    charge: Charge,
    sent_at: Time,
}

/// The lists one batch plan works in; empty between plans.
#[derive(Debug, Default)]
struct PlanScratch {
    waiting: Vec<ImageId>,
    items: Vec<SplitItem>,
    plan: split::Split,
}

/// The decision engine. See the crate docs for a complete driving loop.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    rng: Pcg64Mcg,
    backoff: Backoff,
    account: RateLimits,
    queue: TokenQueue,
    uploads: Vec<UploadState>,
    workspaces: Vec<WorkspaceState>,
    workspace_index: HashMap<WorkspaceId, usize>,
    /// Workspaces with realtime work, in service order.
    ring: VecDeque<usize>,
    /// Whether the workspace at the front of `ring` got its DRR credit for this turn.
    front_credited: bool,
    /// Every upload's head, in upload order, served before the ring.
    heads: VecDeque<ImageId>,
    /// The charges of `heads`, summed: in 128 bits, since a charge may be up to `u64::MAX`.
    heads_tokens: u128,
    /// Workspaces with images waiting for a batch, by first arrival.
    batch_waiting: VecDeque<usize>,
    /// Something that can change a batch plan happened (new images, queue room, a hold ended)
    /// since the last plan. Without it, a full queue would re-plan every waiting image on every
    /// event.
    batch_dirty: bool,
    /// The fewest queue tokens any image that joined a batch queue needed (never grows): with
    /// less room than this in the queue, no waiting image can start a batch.
    batch_min_tokens: u64,
    /// Images in the batch queues that can never be batched (`SplitLimits::never_fits`); a
    /// plan fails them, so it cannot be skipped while there are any.
    batch_never_fit: usize,
    in_flight: HashMap<RequestId, InFlight>,
    /// `dispatch_batches`' working lists, kept between plans: most plans hold everything
    /// again (the queue is full), and allocating three lists for each cost more than the plan.
    plan_scratch: PlanScratch,
    batches: Vec<BatchRec>,
    timers: BinaryHeap<Reverse<(Time, u64, Timer)>>,
    timer_seq: u64,
    /// Pacing wake-ups (`pacing_wake`, `workspace_wake`), apart from `timers`: one is armed
    /// and fired for nearly every realtime request while the account paces, and here it is
    /// the only entry (a stale one at most besides), where in `timers` it sifted past every
    /// running batch's poll. Firing one only clears `pacing_wake`, which no timer reads, so
    /// firing it before or after the other timers due in the same call changes nothing.
    wakes: BinaryHeap<Reverse<Time>>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    dirty_uploads: Vec<UploadId>,
    next_request: u64,
    pacing_wake: Option<Time>,
    /// A `handle_*` call ran at this instant and decisions are due at the next `poll_*`.
    drive_at: Option<Time>,
    workspace_wake: Option<Time>,
    /// The next retry of held batch work (a minute on, or when a spent per-hour budget
    /// refills); room our own batch frees clears it, so that room is taken at once.
    batch_hold_until: Option<Time>,
    /// After a failed file upload or batch creation, no new batch before this.
    submit_backoff_until: Time,
    /// What other clients hold in upstream's enqueued-token queue, as far as core can tell.
    foreign: ForeignShare,
    /// Realtime work queued: tokens and requests.
    backlog_tokens: u64,
    backlog_requests: u64,
    /// The DRR quantum: the largest charge seen, so every visit can send at least one image.
    quantum: u64,
    /// A moving average of realtime latency in nanoseconds (read through `realtime_latency`).
    realtime_latency_ns: u64,
    batch_turnaround: Duration,
    /// Bytes of a batch line with an empty `custom_id` and URL.
    line_base_bytes: u64,
    emit_progress: bool,
    stats: Stats,
}

impl Engine {
    /// An engine for `cfg`, or the first field at fault.
    pub fn new(cfg: Config) -> Result<Engine, PolicyError> {
        cfg.validate()?;
        let p = &cfg.policy;
        let headroom = p.account_headroom_percent;
        let mut account = RateLimits::new(
            scaled(cfg.account.rpm, headroom),
            scaled(cfg.account.tpm, headroom),
        );
        if let Some(rpd) = cfg.account.rpd {
            account = account.with_rpd(scaled(rpd, headroom));
        }
        let line_base_bytes = split::line_len(&LineParams {
            custom_id: "",
            model: cfg.request.model,
            prompt: &cfg.request.prompt,
            image_url: "",
            detail: tokens::Detail::Low,
            max_tokens: cfg.request.max_tokens,
        }) + 1; // "high" and "auto" are longer than "low" by at most one byte.
        Ok(Engine {
            rng: Pcg64Mcg::seed_from_u64(cfg.seed),
            backoff: Backoff {
                base: Duration::from_millis(p.retry_base_delay_ms),
                max: Duration::from_millis(p.retry_max_delay_ms),
                jitter_percent: p.retry_jitter_percent,
            },
            queue: TokenQueue::new(cfg.account.batch_queue_tokens.get()),
            account,
            uploads: Vec::new(),
            workspaces: Vec::new(),
            workspace_index: HashMap::default(),
            ring: VecDeque::new(),
            front_credited: false,
            heads: VecDeque::new(),
            heads_tokens: 0,
            batch_waiting: VecDeque::new(),
            batch_dirty: false,
            batch_min_tokens: u64::MAX,
            batch_never_fit: 0,
            in_flight: HashMap::default(),
            plan_scratch: PlanScratch::default(),
            batches: Vec::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            wakes: BinaryHeap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            dirty_uploads: Vec::new(),
            next_request: 0,
            pacing_wake: None,
            drive_at: None,
            workspace_wake: None,
            batch_hold_until: None,
            submit_backoff_until: Time::ZERO,
            foreign: ForeignShare::default(),
            backlog_tokens: 0,
            backlog_requests: 0,
            quantum: 1,
            realtime_latency_ns: 3_000_000_000,
            batch_turnaround: Duration::from_millis(p.batch_turnaround_estimate_ms),
            line_base_bytes,
            emit_progress: true,
            stats: Stats::default(),
            cfg,
        })
    }

    /// Turns [`Event::Progress`] on or off (on by default). A simulator of a million images
    /// that only wants tags and failures turns it off.
    pub fn set_progress_events(&mut self, on: bool) {
        self.emit_progress = on;
    }

    /// The config the engine runs.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters of the engine's own traffic.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// An image's stage, or `None` for an unknown id.
    pub fn stage(&self, image: ImageId) -> Option<Stage> {
        self.rec(image).map(|r| r.stage)
    }

    /// An image's input, or `None` for an unknown id.
    pub fn image(&self, image: ImageId) -> Option<ImageInput> {
        self.rec(image).map(|r| ImageInput {
            spec: r.spec,
            url_len: r.url_len,
        })
    }

    /// What an image counts against the batch queue and against TPM: (queue tokens, charge tokens).
    pub fn image_tokens(&self, image: ImageId) -> Option<(u64, u64)> {
        self.rec(image).map(|r| (r.queue_tokens, r.charge_tokens))
    }

    /// The upstream batch id of a batch, once created.
    pub fn batch_id(&self, batch: BatchRef) -> Option<&str> {
        self.batches
            .get(batch.0 as usize)
            .and_then(|b| b.batch_id.as_deref())
    }

    /// An upload's progress, or `None` for an unknown id.
    pub fn progress(&self, now: Time, upload: UploadId) -> Option<Progress> {
        let u = self.uploads.get(upload.0 as usize)?;
        let total = u.images.len() as u32;
        let elapsed = now - u.start;
        let terminal = u.by_stage[Stage::Completed as usize] + u.by_stage[Stage::Failed as usize];
        let eta = if terminal == 0 {
            None
        } else if terminal == total {
            Some(Duration::ZERO)
        } else {
            // The observed completion rate so far, extrapolated to the images left.
            let left = u64::from(total - terminal);
            Some(Duration::from_nanos(
                u64::try_from(elapsed.as_nanos() * u128::from(left) / u128::from(terminal))
                    .unwrap_or(u64::MAX),
            ))
        };
        Some(Progress {
            upload,
            total,
            by_stage: u.by_stage,
            elapsed,
            eta,
        })
    }

    /// True when no image of any upload is left non-terminal.
    pub fn is_idle(&self) -> bool {
        self.uploads.iter().all(|u| u.done)
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// Accepts an upload and routes it. Returns its id, or an error and records nothing.
    pub fn handle_upload(&mut self, now: Time, upload: Upload) -> Result<UploadId, UploadError> {
        let n = upload.images.len();
        if n == 0 {
            return Err(UploadError::Empty);
        }
        if n > MAX_IMAGES_PER_UPLOAD {
            return Err(UploadError::TooMany {
                count: n,
                max: MAX_IMAGES_PER_UPLOAD,
            });
        }
        if let Some(index) = upload
            .images
            .iter()
            .position(|i| i.spec.width_px == 0 || i.spec.height_px == 0)
        {
            return Err(UploadError::ZeroSize { index });
        }
        let id = UploadId(self.uploads.len() as u32);
        let ws = self.workspace(upload.workspace);
        let req = &self.cfg.request;
        let text = tokens::text_tokens(req.prompt.chars().count());
        let images: Vec<ImageRec> = upload
            .images
            .iter()
            .map(|img| {
                let billed = tokens::image_tokens(req.model, &img.spec);
                let limiter_image = req.image_charge_tokens.unwrap_or(billed);
                ImageRec {
                    spec: img.spec,
                    url_len: img.url_len,
                    charge_tokens: tokens::rate_limit_charge(
                        // Saturating: `image_charge_tokens` is only checked to be non-zero, and
                        // a scenario may set it to anything.
                        text.saturating_add(limiter_image),
                        u64::from(req.max_tokens),
                    ),
                    queue_tokens: text + billed,
                    stage: Stage::Queued,
                    route: Route::Realtime,
                    attempts: 0,
                    batch_attempts: 0,
                    holds: 0,
                    request: None,
                    batch: None,
                }
            })
            .collect();
        let mut by_stage = [0u32; 7];
        by_stage[Stage::Queued as usize] = n as u32;
        let order_key = {
            let tokens: u64 = images
                .iter()
                .fold(0u64, |sum, i| sum.saturating_add(i.charge_tokens));
            let at_rate = |b: &Bucket, amount: u64| {
                u128::from(amount) * b.window().as_nanos() / u128::from(b.limit().max(1))
            };
            let alone = at_rate(self.account.tokens(), tokens)
                .max(at_rate(self.account.requests(), n as u64));
            u64::try_from(u128::from(now.as_nanos()) + alone * u128::from(AGING))
                .unwrap_or(u64::MAX)
        };
        self.uploads.push(UploadState {
            workspace: ws,
            start: now,
            order_key,
            images,
            by_stage,
            chunk_next: 0,
            chunk_end: 0,
            done: false,
            progress_dirty: false,
        });
        let deadline = upload
            .deadline
            .unwrap_or(Duration::from_millis(self.cfg.policy.deadline_ms));
        self.route_upload(now, id, deadline);
        self.mark_dirty(id);
        self.schedule_drive(now);
        Ok(id)
    }

    /// Answers a [`Action::SendRealtime`]. Answers to unknown or superseded requests are ignored.
    pub fn handle_realtime_response(
        &mut self,
        now: Time,
        request: RequestId,
        outcome: RealtimeOutcome,
    ) {
        let Some(flight) = self.in_flight.remove(&request) else {
            return;
        };
        let image = flight.image;
        let Some(rec) = self.rec_mut(image) else {
            return;
        };
        if rec.request != Some(request) || rec.stage != Stage::Preparing {
            return;
        }
        rec.request = None;
        let ws = self.uploads[image.upload.0 as usize].workspace;
        match outcome {
            RealtimeOutcome::Ok { usage, observed } => {
                // Reserve-then-reconcile, upward only: when the limiter charge is the billing
                // estimate and the real prompt was larger, charge the difference. A smaller real
                // prompt is not refunded: OpenAI's limiter counts its own estimate made before
                // the request (facts §3), not the billed tokens, so a refund could let the pacer
                // send into a bucket upstream still sees as spent.
                // Upstream admitted the request, so its limiter charged at most the account's
                // TPM (a larger request is refused as too large): a usage above that (a corrupt
                // body) is capped there, or one answer could put the pacer years in debt.
                if self.cfg.request.image_charge_tokens.is_none() && self.cfg.policy.client_pacing {
                    let actual = Charge {
                        requests: 1,
                        tokens: tokens::rate_limit_charge(
                            usage.input_tokens,
                            u64::from(self.cfg.request.max_tokens),
                        )
                        .min(self.cfg.account.tpm.get())
                        .max(flight.charge.tokens),
                    };
                    let reservation = limit::Reservation {
                        reserved: flight.charge,
                    };
                    match self.workspaces[ws].limits.as_mut() {
                        Some(wl) => {
                            reservation.reconcile(&mut [wl, &mut self.account], now, actual)
                        }
                        None => reservation.reconcile(&mut [&mut self.account], now, actual),
                    }
                }
                self.observe(now, &observed);
                // A moving average of latency feeds the adaptive router's wait estimate.
                // In whole nanoseconds: `Duration`'s `* 7` and `/ 8` carry seconds and
                // nanoseconds apart, 26 M instructions on the million-image day, for the same
                // value (10^9 is a multiple of 8, so `Duration / 8` is the floor of its
                // nanoseconds over 8). The average is at most the larger input, so it fits.
                let latency = now.as_nanos().saturating_sub(flight.sent_at.as_nanos());
                let avg = (u128::from(self.realtime_latency_ns) * 7 + u128::from(latency)) / 8;
                self.realtime_latency_ns = u64::try_from(avg).unwrap_or(u64::MAX);
                self.finish(now, image, Ok((Channel::Realtime, usage)));
            }
            RealtimeOutcome::RateLimited {
                retry_after,
                mut observed,
            } => {
                self.stats.rate_limited += 1;
                // A retry-after is upstream's word, not a bound we trust blindly: past the cap,
                // the account pauses for the cap only, and this image stops waiting on realtime.
                let cap = Duration::from_millis(self.cfg.policy.retry_after_max_ms);
                let honor = self.cfg.policy.honor_retry_after;
                let beyond = honor
                    && (retry_after.is_some_and(|a| a > cap)
                        || observed.retry_after.is_some_and(|a| a > cap));
                let retry_after = retry_after.map(|a| a.min(cap));
                observed.retry_after = observed.retry_after.map(|a| a.min(cap));
                self.observe(now, &observed);
                if honor {
                    if let Some(after) = retry_after {
                        self.account.requests_mut().block_until(now, now + after);
                    }
                }
                if beyond {
                    self.set_stage(image, Stage::Queued);
                    self.retries_exhausted(
                        now,
                        image,
                        "rate_limited: retry-after beyond retry_after_max_ms",
                    );
                } else if self.cfg.policy.fallback_to_batch_on_rate_limit {
                    self.stats.fallbacks_to_batch += 1;
                    self.requeue_for_batch(image);
                } else {
                    let wait = if self.cfg.policy.honor_retry_after {
                        retry_after
                    } else {
                        None
                    };
                    self.retry_realtime(now, image, "rate_limited", wait);
                }
            }
            RealtimeOutcome::ServerError { status } => {
                self.stats.server_errors += 1;
                self.retry_realtime(now, image, &format!("server_error_{status}"), None);
            }
            RealtimeOutcome::Timeout => {
                self.stats.timeouts += 1;
                self.retry_realtime(now, image, "timeout", None);
            }
            RealtimeOutcome::Rejected { status, message } => {
                self.finish(now, image, Err(FailReason::Rejected { status, message }));
            }
        }
        self.schedule_drive(now);
    }

    /// Answers an [`Action::UploadBatchFile`].
    pub fn handle_file_uploaded(
        &mut self,
        now: Time,
        batch: BatchRef,
        result: Result<String, UpstreamError>,
    ) {
        let Some(b) = self.batches.get_mut(batch.0 as usize) else {
            return;
        };
        if b.phase != BatchPhase::Uploading {
            return;
        }
        match result {
            Ok(file_id) => {
                b.phase = BatchPhase::Creating;
                self.actions
                    .push_back(Action::CreateBatch { batch, file_id });
            }
            Err(e) => self.batch_submit_failed(now, batch, &e.message),
        }
        self.schedule_drive(now);
    }

    /// Answers an [`Action::CreateBatch`]. On success the batch id is recorded before anything
    /// waits on it, and only then are its images marked pending upstream.
    pub fn handle_batch_created(
        &mut self,
        now: Time,
        batch: BatchRef,
        result: Result<String, UpstreamError>,
    ) {
        let Some(b) = self.batches.get_mut(batch.0 as usize) else {
            return;
        };
        if b.phase != BatchPhase::Creating {
            return;
        }
        match result {
            Ok(batch_id) => {
                b.batch_id = Some(Arc::from(batch_id));
                b.phase = BatchPhase::Running;
                b.created_at = now;
                let interval = Duration::from_millis(self.cfg.policy.poll_interval_ms);
                b.poll_interval = interval;
                b.next_poll = now + interval;
                b.reported = Stage::Submitted;
                let images = std::mem::take(&mut b.images);
                for &img in &images {
                    self.set_stage(img, Stage::Submitted);
                }
                self.batches[batch.0 as usize].images = images;
                self.stats.batches_created += 1;
                self.timer(now + interval, Timer::Poll(batch));
            }
            Err(e) => self.batch_submit_failed(now, batch, &e.message),
        }
        self.schedule_drive(now);
    }

    /// Answers an [`Action::PollBatch`]. A failed poll is retried with backoff; polling stops
    /// only when the batch ends (or, if the policy says so, after `poll_give_up_ms`, failing
    /// the batch's images with a reason).
    pub fn handle_batch_status(
        &mut self,
        now: Time,
        batch: BatchRef,
        result: Result<BatchStatus, UpstreamError>,
    ) {
        let Some(b) = self.batches.get_mut(batch.0 as usize) else {
            return;
        };
        if b.phase != BatchPhase::Running {
            return;
        }
        let max_interval = Duration::from_millis(self.cfg.policy.poll_max_interval_ms);
        let base_interval = Duration::from_millis(self.cfg.policy.poll_interval_ms);
        let status = match result {
            Ok(s) => {
                b.poll_interval = base_interval;
                s
            }
            Err(_) => {
                // A failed poll is no reason to poll past the policy's limits: the time is up
                // whether or not upstream answers (the images would otherwise wait forever
                // while every poll fails).
                if self.time_up(now, batch, false) {
                    self.schedule_drive(now);
                    return;
                }
                let b = &mut self.batches[batch.0 as usize];
                b.poll_interval = (b.poll_interval * 2).min(max_interval);
                let next = now + b.poll_interval;
                b.next_poll = next;
                self.timer(next, Timer::Poll(batch));
                self.schedule_drive(now);
                return;
            }
        };
        if b.created_at >= self.foreign.until
            && matches!(
                status.state,
                BatchState::InProgress | BatchState::Finalizing | BatchState::Completed
            )
        {
            // Upstream took a batch made without the learned foreign share (a probe) into its
            // queue: the run of token-limit failures is over.
            self.foreign.strikes = 0;
        }
        let stage = match &status.state {
            BatchState::Validating => Some(Stage::Submitted),
            BatchState::InProgress | BatchState::Cancelling => Some(Stage::Processing),
            BatchState::Finalizing => Some(Stage::Completing),
            _ => None,
        };
        if let Some(stage) = stage {
            // While a batch runs, only this batch moves its images' stages, so when the stage
            // is the one they were last moved to there is nothing to do.
            if b.reported != stage {
                b.reported = stage;
                let images = std::mem::take(&mut b.images);
                for &img in &images {
                    if self.stage(img).is_some_and(|s| s.is_pending_upstream()) {
                        self.set_stage(img, stage);
                    }
                }
                self.batches[batch.0 as usize].images = images;
            }
            let running = matches!(
                status.state,
                BatchState::Validating | BatchState::InProgress
            );
            if self.time_up(now, batch, running) {
                self.schedule_drive(now);
                return;
            }
            let b = &mut self.batches[batch.0 as usize];
            let next = now + b.poll_interval;
            b.next_poll = next;
            self.timer(next, Timer::Poll(batch));
            self.schedule_drive(now);
            return;
        }
        // The batch has ended: its tokens leave the queue now.
        self.release_queue(batch);
        let b = &mut self.batches[batch.0 as usize];
        match status.state {
            BatchState::Failed { code } => {
                b.phase = BatchPhase::Done;
                let images = std::mem::take(&mut b.images);
                if code == "token_limit_exceeded" {
                    // Upstream's queue is fuller than ours says: other clients share it. Take
                    // all of it that is not ours as theirs, for now.
                    let theirs = self.queue.limit().saturating_sub(self.queue.enqueued());
                    let planned = self.batches[batch.0 as usize].created_at;
                    self.foreign
                        .learn(now, planned, theirs, self.batch_turnaround);
                    for img in images {
                        self.hold_for_queue(now, img);
                    }
                } else {
                    for img in images {
                        self.batch_attempt_failed(now, img, &code);
                    }
                }
            }
            state => {
                if state == BatchState::Completed {
                    let took = now - b.created_at;
                    self.batch_turnaround = (self.batch_turnaround * 3 + took) / 4;
                }
                b.output_file_id = status.output_file_id;
                b.error_file_id = status.error_file_id;
                b.terminal_state = Some(state);
                b.phase = BatchPhase::Downloading;
                let images = std::mem::take(&mut b.images);
                for &img in &images {
                    if self.stage(img).is_some_and(|s| s.is_pending_upstream()) {
                        self.set_stage(img, Stage::Completing);
                    }
                }
                self.batches[batch.0 as usize].images = images;
                self.request_download(batch);
            }
        }
        self.schedule_drive(now);
    }

    /// Answers an [`Action::DownloadResults`] with the lines of the output and error files.
    /// Lines map to images by `custom_id`; an image of the batch with no line (an expired or
    /// cancelled batch's unfinished work) is re-submitted.
    pub fn handle_batch_results(
        &mut self,
        now: Time,
        batch: BatchRef,
        result: Result<Vec<LineResult>, UpstreamError>,
    ) {
        let Some(b) = self.batches.get_mut(batch.0 as usize) else {
            return;
        };
        if b.phase != BatchPhase::Downloading || !b.download_pending {
            return;
        }
        b.download_pending = false;
        let lines = match result {
            Ok(lines) => lines,
            Err(e) => {
                b.download_attempts += 1;
                let attempt = b.download_attempts;
                self.events.push_back(Event::DownloadFailed {
                    batch,
                    attempt,
                    error: e.message.clone(),
                });
                if attempt >= self.cfg.policy.download_max_attempts {
                    b.phase = BatchPhase::Done;
                    let images = std::mem::take(&mut b.images);
                    for img in images {
                        if self.stage(img) == Some(Stage::Completing) {
                            self.finish(
                                now,
                                img,
                                Err(FailReason::DownloadFailed {
                                    error: e.message.clone(),
                                }),
                            );
                        }
                    }
                } else {
                    let delay = self.backoff.delay(attempt - 1, &mut self.rng);
                    self.timer(now + delay, Timer::Download(batch));
                }
                self.schedule_drive(now);
                return;
            }
        };
        b.phase = BatchPhase::Done;
        let images = std::mem::take(&mut b.images);
        for line in lines {
            let Ok(img) = line.custom_id.parse::<ImageId>() else {
                continue;
            };
            // Only lines for images this batch holds, and only once each: a duplicate or
            // foreign line can't tag an image twice.
            let ours = self
                .rec(img)
                .is_some_and(|r| r.batch == Some(batch) && r.stage == Stage::Completing);
            if !ours {
                continue;
            }
            match line.outcome {
                Ok(usage) => self.finish(now, img, Ok((Channel::Batch, usage))),
                Err(code) => self.batch_attempt_failed(now, img, &code),
            }
        }
        let b = &self.batches[batch.0 as usize];
        let (state, overdue) = (b.terminal_state.clone(), b.cancel_sent.is_some());
        for img in images {
            if self.stage(img) == Some(Stage::Completing) {
                let code = match state {
                    Some(BatchState::Expired) => "batch_expired",
                    // Core cancelled it for running past `batch_overdue_ms`: say so.
                    Some(BatchState::Cancelled) if overdue => "batch_overdue",
                    Some(BatchState::Cancelled) => "batch_cancelled",
                    _ => "missing_from_results",
                };
                self.batch_attempt_failed(now, img, code);
            }
        }
        self.schedule_drive(now);
    }

    /// Runs everything due at `now`: chunk releases, retries, polls, pacing wake-ups.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(&Reverse((at, _, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::ChunkRelease(upload) => self.release_chunk(now, upload),
                Timer::Retry(image) => {
                    if self.stage(image) == Some(Stage::Queued) {
                        self.enqueue_realtime(image, Lane::Retry);
                    }
                }
                Timer::Poll(batch) => {
                    let b = &mut self.batches[batch.0 as usize];
                    if b.phase == BatchPhase::Running && b.next_poll == at {
                        // One poll per scheduled instant: two answers in the same instant (a
                        // duplicated delivery) arm two timers for the same `next_poll`, and
                        // without this both would poll, doubling the polling from then on.
                        b.next_poll = Time::MAX;
                        if let Some(id) = b.batch_id.clone() {
                            self.actions.push_back(Action::PollBatch {
                                batch,
                                batch_id: id,
                            });
                        }
                    }
                }
                Timer::Download(batch) => {
                    if self.batches[batch.0 as usize].phase == BatchPhase::Downloading {
                        self.request_download(batch);
                    }
                }
                Timer::BatchHold => {
                    if self.batch_hold_until == Some(at) {
                        self.batch_hold_until = None;
                    }
                    self.batch_dirty = true;
                }
            }
        }
        while let Some(&Reverse(at)) = self.wakes.peek() {
            if at > now {
                break;
            }
            self.wakes.pop();
            if self.pacing_wake == Some(at) {
                self.pacing_wake = None;
            }
        }
        self.schedule_drive(now);
    }

    // ---- outputs --------------------------------------------------------------------------

    //
    // Decisions are made when the driver asks, not in every `handle_*`: uploads that arrive in
    // the same instant are all queued before the first request goes out, so fair sharing sees
    // every one of them (quinn-proto does its work in `poll_transmit` for the same reason).

    /// The next action for the driver, in the order core decided them.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.flush();
        self.actions.pop_front()
    }

    /// The next event: tags, failures, completions, progress.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.flush();
        self.events.pop_front()
    }

    /// When core next needs [`Engine::handle_timeout`], if ever.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        self.flush();
        let timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        match (timer, self.wakes.peek()) {
            (Some(t), Some(&Reverse(w))) => Some(t.min(w)),
            (t, None) => t,
            (None, Some(&Reverse(w))) => Some(w),
        }
    }

    fn schedule_drive(&mut self, now: Time) {
        self.drive_at = Some(self.drive_at.map_or(now, |t| t.max(now)));
    }

    // Every `poll_*` calls this, several times per event, and usually finds nothing to do: the
    // check stays inline in the caller and the decision work stays out of line.
    #[inline]
    fn flush(&mut self) {
        if let Some(now) = self.drive_at.take() {
            self.drive(now);
        }
    }

    // ---- routing --------------------------------------------------------------------------

    fn route_upload(&mut self, now: Time, id: UploadId, deadline: Duration) {
        let n = self.uploads[id.0 as usize].images.len() as u32;
        let p = &self.cfg.policy;
        match p.routing {
            Routing::Threshold => {
                if n <= p.realtime_max_images {
                    self.route_range(id, 0..n, Route::Realtime);
                } else if n <= p.realtime_chunked_max {
                    let u = &mut self.uploads[id.0 as usize];
                    u.chunk_next = 0;
                    u.chunk_end = n;
                    self.release_chunk(now, id);
                } else {
                    self.route_range(id, 0..n, Route::Batch);
                }
            }
            Routing::Adaptive => {
                let (realtime, _batch) = self.adaptive_split(now, id, deadline);
                let head = realtime.min(self.cfg.policy.realtime_head_images);
                for index in 0..head {
                    self.enqueue_realtime(ImageId { upload: id, index }, Lane::Head);
                }
                self.route_range(id, head..realtime, Route::Realtime);
                self.route_range(id, realtime..n, Route::Batch);
            }
        }
    }

    /// How many of the upload's images (a prefix) go realtime; the rest go to the Batch API.
    ///
    /// Every upload gets a realtime head for a fast first tag unless the account is so
    /// saturated that even the head, behind the heads already queued, would miss the deadline.
    /// Past the head, realtime takes what it can finish by the deadline under the account's
    /// remaining rate, given the work already queued; with `prefer = latency`, everything stays
    /// realtime when realtime would finish before a batch would come back anyway.
    fn adaptive_split(&self, now: Time, id: UploadId, deadline: Duration) -> (u32, u32) {
        let u = &self.uploads[id.0 as usize];
        let n = u.images.len() as u32;
        let per_image = u
            .images
            .iter()
            .map(|i| i.charge_tokens)
            .max()
            .unwrap_or(1)
            .max(1);
        // Saturating sums here and below: a charge may be as large as `image_charge_tokens`
        // allows (up to u64::MAX); such an upload must be routed, not overflow.
        let own_tokens: u64 = u
            .images
            .iter()
            .fold(0u64, |sum, i| sum.saturating_add(i.charge_tokens));
        // Under fair sharing this upload's images interleave with every active workspace's, so
        // what runs ahead of it is at most one share per active workspace, not the whole backlog.
        let active = self.ring.len() as u64;
        let ahead_tokens = if self.cfg.policy.fair_share {
            self.backlog_tokens.min(own_tokens.saturating_mul(active))
        } else {
            self.backlog_tokens
        };
        let ahead_requests = if self.cfg.policy.fair_share {
            self.backlog_requests
                .min(u64::from(n).saturating_mul(active))
        } else {
            self.backlog_requests
        };
        let head = n.min(self.cfg.policy.realtime_head_images);
        let wait = |tokens: u64, requests: u64| -> Duration {
            self.drain_time(
                now,
                tokens.saturating_add(ahead_tokens),
                requests.saturating_add(ahead_requests),
            ) + self.realtime_latency()
        };
        // Heads are served before every workspace's other work, in upload order, so only the
        // heads already queued run ahead of this one, not the backlog of everyone's tails.
        let head_wait = self.drain_time(
            now,
            u64::from(head)
                .saturating_mul(per_image)
                .saturating_add(u64::try_from(self.heads_tokens).unwrap_or(u64::MAX)),
            u64::from(head).saturating_add(self.heads.len() as u64),
        ) + self.realtime_latency();
        if head > 0 && head_wait > deadline {
            return (0, n);
        }
        let all_wait = wait(own_tokens, u64::from(n));
        if all_wait <= deadline {
            if self.cfg.policy.prefer == Preference::Cost && self.batch_turnaround <= deadline {
                return (head, n - head);
            }
            return (n, 0);
        }
        if self.cfg.policy.prefer == Preference::Latency && all_wait <= self.batch_turnaround {
            return (n, 0);
        }
        // Realtime takes what fits by the deadline; at least the head.
        let budget = deadline.saturating_sub(self.realtime_latency());
        let mut fit = head;
        let (mut lo, mut hi) = (head, n);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            if self.drain_time(
                now,
                u64::from(mid)
                    .saturating_mul(per_image)
                    .saturating_add(ahead_tokens),
                u64::from(mid).saturating_add(ahead_requests),
            ) <= budget
            {
                fit = mid;
                lo = mid + 1;
            } else if mid == 0 {
                break;
            } else {
                hi = mid - 1;
            }
        }
        (fit, n - fit)
    }

    /// Time for the account's paced limits to let `tokens` and `requests` through: the
    /// per-minute buckets as if full (a minute's burst passes at once, then they refill at
    /// their rate), and the daily one as it stands at `now`, since a day's requests, once
    /// spent, come back only over the day.
    fn drain_time(&self, now: Time, tokens: u64, requests: u64) -> Duration {
        let after = |bucket: &Bucket, amount: u64, at_once: u64| -> Duration {
            // Every bucket refills `limit` per `window`.
            let beyond = amount.saturating_sub(at_once);
            let nanos =
                u128::from(beyond) * bucket.window().as_nanos() / u128::from(bucket.limit().max(1));
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        };
        let per = |bucket: &Bucket, amount: u64| after(bucket, amount, bucket.capacity());
        let daily = self
            .account
            .rpd()
            .map_or(Duration::ZERO, |b| after(b, requests, b.remaining(now)));
        per(self.account.tokens(), tokens)
            .max(per(self.account.requests(), requests))
            .max(daily)
    }

    fn route_range(&mut self, id: UploadId, range: std::ops::Range<u32>, route: Route) {
        for index in range {
            let image = ImageId { upload: id, index };
            match route {
                Route::Realtime => self.enqueue_realtime(image, Lane::Rest),
                Route::Batch => self.push_batch(image),
            }
        }
    }

    fn release_chunk(&mut self, now: Time, id: UploadId) {
        let p = &self.cfg.policy;
        let (size, interval) = (p.chunk_size, Duration::from_millis(p.chunk_interval_ms));
        let u = &mut self.uploads[id.0 as usize];
        let from = u.chunk_next;
        let to = (from + size).min(u.chunk_end);
        u.chunk_next = to;
        let more = to < u.chunk_end;
        self.route_range(id, from..to, Route::Realtime);
        if more {
            self.timer(now + interval, Timer::ChunkRelease(id));
        }
    }

    // ---- queues ---------------------------------------------------------------------------

    fn enqueue_realtime(&mut self, image: ImageId, lane: Lane) {
        let (ws, charge) = {
            let u = &self.uploads[image.upload.0 as usize];
            let rec = &u.images[image.index as usize];
            (u.workspace, rec.charge_tokens)
        };
        if let Some(rec) = self.rec_mut(image) {
            rec.route = Route::Realtime;
        }
        let turn = u64::from(self.cfg.policy.fair_share_quantum_images);
        self.quantum = self.quantum.max(charge.saturating_mul(turn));
        // Saturating, and so is the way out (`leave_backlog`): charges can be huge (see
        // `handle_upload`), and this total is only an estimate for routing.
        self.backlog_tokens = self.backlog_tokens.saturating_add(charge);
        self.backlog_requests += 1;
        if lane == Lane::Head {
            self.heads.push_back(image);
            self.heads_tokens += u128::from(charge);
            return;
        }
        let key = match self.cfg.policy.realtime_order {
            RealtimeOrder::Arrival => None,
            RealtimeOrder::SmallestUpload => Some(self.uploads[image.upload.0 as usize].order_key),
        };
        let w = &mut self.workspaces[ws];
        w.realtime.push(image, lane, key);
        if !w.in_ring {
            w.in_ring = true;
            w.deficit = 0;
            self.ring.push_back(ws);
        }
    }

    /// A queued realtime image was sent or left the realtime queue.
    fn leave_backlog(&mut self, tokens: u64) {
        self.backlog_tokens = self.backlog_tokens.saturating_sub(tokens);
        self.backlog_requests -= 1;
    }

    fn push_batch(&mut self, image: ImageId) {
        let ws = self.uploads[image.upload.0 as usize].workspace;
        let mut item = SplitItem {
            line_bytes: 0,
            tokens: 0,
        };
        if let Some(rec) = self.rec_mut(image) {
            rec.route = Route::Batch;
            let rec = *rec;
            item = SplitItem {
                line_bytes: self.line_bytes(image, &rec),
                tokens: rec.queue_tokens,
            };
        }
        self.batch_min_tokens = self.batch_min_tokens.min(item.tokens);
        self.batch_never_fit += usize::from(self.cfg.split_caps().never_fits(&item));
        let w = &mut self.workspaces[ws];
        if w.batch.is_empty() {
            self.batch_waiting.push_back(ws);
        }
        w.batch.push_back((image, item));
        self.batch_dirty = true;
    }

    fn requeue_for_batch(&mut self, image: ImageId) {
        self.set_stage(image, Stage::Queued);
        self.push_batch(image);
    }

    // ---- the dispatch loop ----------------------------------------------------------------

    /// Hands out everything the limits allow now and arms the timers for the rest.
    ///
    /// Nearly every `handle_*` asks for a drive, and while the account paces, about half of
    /// them (each realtime answer) find nothing to do: the realtime queues wait for the pacing
    /// wake-up, and no batch plan is due. Those are told apart here, inline, before the call
    /// into the decision code; each of the three steps checks the same again.
    #[inline]
    fn drive(&mut self, now: Time) {
        let realtime_waits = self.pacing_wake.is_some_and(|t| t > now);
        let no_plan = !self.batch_dirty || self.batch_waiting.is_empty();
        if realtime_waits && no_plan && self.dirty_uploads.is_empty() {
            return;
        }
        self.drive_now(now);
    }

    #[inline(never)]
    fn drive_now(&mut self, now: Time) {
        self.dispatch_realtime(now);
        self.dispatch_batches(now);
        self.flush_progress(now);
    }

    /// Takes the front of `heads`, whose charge is `tokens`.
    fn pop_head(&mut self, tokens: u64) {
        self.heads.pop_front();
        self.heads_tokens -= u128::from(tokens);
    }

    fn dispatch_realtime(&mut self, now: Time) {
        if self.pacing_wake.is_some_and(|t| t > now) {
            return;
        }
        self.pacing_wake = None;
        let fair = self.cfg.policy.fair_share;
        let mut earliest_blocked: Option<Time> = None;
        // Upload heads first, in upload order, ahead of every workspace's other work: each
        // upload's user sees a first tag as soon as the account allows.
        while let Some(&image) = self.heads.front() {
            let ws = self.uploads[image.upload.0 as usize].workspace;
            let tokens =
                self.uploads[image.upload.0 as usize].images[image.index as usize].charge_tokens;
            let charge = Charge {
                requests: 1,
                tokens,
            };
            if self.workspaces[ws].blocked_until > now {
                // Its workspace is out of quota: the head waits at the front of its own queue.
                self.pop_head(tokens);
                self.park_in_workspace(ws, image);
                continue;
            }
            match self.admit(now, ws, charge) {
                Ok(()) => {
                    self.pop_head(tokens);
                    self.leave_backlog(tokens);
                    self.send_realtime(now, image, ws, charge);
                }
                Err(Denied::NotUntil {
                    earliest, scope: 0, ..
                }) if self.workspaces[ws].limits.is_some() => {
                    self.workspaces[ws].blocked_until = earliest;
                    earliest_blocked =
                        Some(earliest_blocked.map_or(earliest, |e: Time| e.min(earliest)));
                    self.pop_head(tokens);
                    self.park_in_workspace(ws, image);
                }
                Err(Denied::NotUntil { earliest, .. }) => {
                    self.arm_pacing(earliest);
                    return;
                }
                Err(Denied::Never {
                    requested,
                    capacity,
                    dimension,
                    ..
                }) => {
                    self.pop_head(tokens);
                    self.leave_backlog(tokens);
                    self.never_fits(now, image, requested, capacity, dimension);
                }
            }
        }
        // Each pass over the ring either sends, or parks a workspace, or stops; a workspace is
        // visited at most twice per pass without progress, which bounds the loop.
        let mut idle_visits = 0usize;
        while let Some(&ws) = self.ring.front() {
            if idle_visits > self.ring.len() {
                break;
            }
            let w = &mut self.workspaces[ws];
            if w.blocked_until > now {
                earliest_blocked = Some(
                    earliest_blocked.map_or(w.blocked_until, |e: Time| e.min(w.blocked_until)),
                );
                self.ring.rotate_left(1);
                self.front_credited = false;
                idle_visits += 1;
                continue;
            }
            // DRR credits a workspace once per turn at the front, not once per wake-up: a turn
            // cut short by the account's pacing resumes with what is left of its credit.
            if fair && !self.front_credited {
                w.deficit = w.deficit.saturating_add(self.quantum);
                self.front_credited = true;
            }
            let mut sent_any = false;
            let mut stop_all = false;
            loop {
                let w = &mut self.workspaces[ws];
                let Some(image) = w.realtime.front() else {
                    break;
                };
                let rec = self.uploads[image.upload.0 as usize].images[image.index as usize];
                if fair && rec.charge_tokens > w.deficit {
                    break;
                }
                let charge = Charge {
                    requests: 1,
                    tokens: rec.charge_tokens,
                };
                {
                    let has_limits = w.limits.is_some();
                    match self.admit(now, ws, charge) {
                        Ok(()) => {}
                        Err(Denied::NotUntil {
                            earliest, scope, ..
                        }) => {
                            if scope == 0 && has_limits {
                                // Only this workspace is out of quota: park it, serve the others.
                                self.workspaces[ws].blocked_until = earliest;
                                earliest_blocked = Some(
                                    earliest_blocked.map_or(earliest, |e: Time| e.min(earliest)),
                                );
                            } else {
                                self.arm_pacing(earliest);
                                stop_all = true;
                            }
                            break;
                        }
                        Err(Denied::Never {
                            requested,
                            capacity,
                            dimension,
                            ..
                        }) => {
                            self.workspaces[ws].realtime.pop_front();
                            self.leave_backlog(rec.charge_tokens);
                            self.never_fits(now, image, requested, capacity, dimension);
                            continue;
                        }
                    }
                }
                let w = &mut self.workspaces[ws];
                w.realtime.pop_front();
                if fair {
                    w.deficit -= rec.charge_tokens;
                }
                self.leave_backlog(rec.charge_tokens);
                self.send_realtime(now, image, ws, charge);
                sent_any = true;
            }
            if stop_all {
                return;
            }
            self.front_credited = false;
            let w = &mut self.workspaces[ws];
            if w.realtime.is_empty() {
                w.in_ring = false;
                w.deficit = 0;
                self.ring.pop_front();
                idle_visits = 0;
            } else if w.blocked_until > now {
                self.ring.rotate_left(1);
                idle_visits += 1;
            } else {
                // Deficit spent (fair share): next workspace.
                self.ring.rotate_left(1);
                idle_visits = if sent_any { 0 } else { idle_visits + 1 };
            }
        }
        if let Some(t) = earliest_blocked {
            // Workspace quotas park only their own workspace: a plain wake-up, not a pacing hold
            // that would stop other workspaces' new work.
            if self.workspace_wake.is_none_or(|w| w <= now || t < w) {
                self.workspace_wake = Some(t);
                self.wakes.push(Reverse(t));
            }
        }
    }

    /// Checks and takes `charge` from the workspace's limits (scope 0) and the account's
    /// (scope 1), all or nothing; always admits when the policy doesn't pace.
    fn admit(&mut self, now: Time, ws: usize, charge: Charge) -> Result<(), Denied> {
        if !self.cfg.policy.client_pacing {
            return Ok(());
        }
        match self.workspaces[ws].limits.as_mut() {
            Some(wl) => limit::check_all(&mut [wl, &mut self.account], now, charge),
            None => self.account.check(now, charge).map_err(|d| d.with_scope(1)),
        }
    }

    /// A request larger than a bucket's capacity: to the batch queue, or failed.
    fn never_fits(
        &mut self,
        now: Time,
        image: ImageId,
        requested: u64,
        capacity: u64,
        dimension: limit::Dimension,
    ) {
        if self.cfg.policy.on_retries_exhausted == Exhausted::Batch {
            self.push_batch(image);
        } else {
            let what = format!("{requested} {dimension:?} per minute asked, {capacity} allowed");
            self.finish(now, image, Err(FailReason::TooLarge { what }));
        }
    }

    /// Puts a held-back head at the front of its workspace's own queue.
    fn park_in_workspace(&mut self, ws: usize, image: ImageId) {
        let w = &mut self.workspaces[ws];
        w.realtime.push(image, Lane::Head, None);
        if !w.in_ring {
            w.in_ring = true;
            w.deficit = 0;
            self.ring.push_back(ws);
        }
    }

    fn send_realtime(&mut self, now: Time, image: ImageId, ws: usize, charge: Charge) {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.in_flight.insert(
            request,
            InFlight {
                image,
                charge,
                sent_at: now,
            },
        );
        let spec = {
            let rec = self.rec_mut(image).expect("queued images exist");
            rec.request = Some(request);
            rec.spec
        };
        self.set_stage(image, Stage::Preparing);
        self.stats.realtime_sent += 1;
        let workspace = self.workspaces[ws].id;
        let max_tokens = self.cfg.request.max_tokens;
        // `extend` with `once_with` makes room first and builds the action in its slot; a
        // `push_back` builds it on the stack before its capacity check, then copies it, and
        // the copy's 16-byte loads stall on the narrower stores just made.
        self.actions
            .extend(std::iter::once_with(|| Action::SendRealtime {
                request,
                image,
                workspace,
                spec,
                charge,
                max_tokens,
            }));
    }

    fn arm_pacing(&mut self, at: Time) {
        if self.pacing_wake.is_none_or(|t| at < t) {
            self.pacing_wake = Some(at);
            self.wakes.push(Reverse(at));
        }
    }

    fn dispatch_batches(&mut self, now: Time) {
        if !self.batch_dirty
            || self.batch_waiting.is_empty()
            || self.batch_hold_until.is_some_and(|t| t > now)
            || self.submit_backoff_until > now
        {
            return;
        }
        self.batch_dirty = false;
        self.batch_hold_until = None;
        let mut next_try: Option<Time> = None;
        let rounds = self.batch_waiting.len();
        // Without per-hour budgets, every workspace the queue's room holds back retries at the
        // same time, so the workspaces left can be skipped together (below).
        let p = &self.cfg.policy;
        let no_budgets = p.workspace_batches_per_hour.is_none_or(|n| n == 0)
            && p.workspace_images_per_hour.is_none_or(|n| n == 0);
        let mut kept = 0usize;
        for visited in 0..rounds {
            let queue_free = self
                .queue
                .free()
                .saturating_sub(self.foreign.tokens_at(now));
            // Too little room for any waiting image, none that a plan would fail: planning each
            // workspace left would hold all its images and requeue it behind the others. Do
            // just that, at once. With thousands of single-image uploads waiting behind a full
            // queue, planning them one by one on every event made the run quadratic.
            let left = rounds - visited;
            if no_budgets
                && queue_free < self.batch_min_tokens
                && self.batch_never_fit == 0
                && self.batch_waiting.len() == left + kept
            {
                // Debug builds (every test) check the claim: each skipped workspace's plan would
                // have held its front image, the only one it would have taken.
                #[cfg(debug_assertions)]
                for &ws in self.batch_waiting.iter().take(left) {
                    let (_, front) = self.workspaces[ws].batch.front().expect("waiting");
                    assert!(front.tokens > queue_free, "a skipped workspace had room");
                    assert!(!self.cfg.split_caps().never_fits(front));
                }
                let at = self.batch_retry_at(now);
                next_try = Some(next_try.map_or(at, |t| t.min(at)));
                self.batch_waiting.rotate_left(left);
                break;
            }
            let Some(ws) = self.batch_waiting.pop_front() else {
                break;
            };
            let mut caps = self.cfg.split_caps();
            caps.queue_tokens_free = queue_free;
            let w = &self.workspaces[ws];
            if let Some(b) = &w.batches_per_hour {
                caps.batches_allowed = u32::try_from(b.remaining(now)).unwrap_or(u32::MAX);
            }
            if let Some(b) = &w.images_per_hour {
                caps.images_allowed = b.remaining(now);
            }
            // Plan only the prefix that could fit now: the queue's free tokens, the per-hour
            // budgets and the batch count bound what can start, so a long backlog behind a full
            // queue costs nothing per plan. One item past the budget is included, so the
            // splitter still tells an item that never fits from one that only waits.
            let most_images = caps
                .images_allowed
                .min(u64::from(caps.batches_allowed).saturating_mul(u64::from(caps.max_requests)));
            let mut take = 0usize;
            let mut tokens_sum = 0u64;
            for &(_, SplitItem { tokens, .. }) in &w.batch {
                if take as u64 >= most_images || tokens_sum > caps.queue_tokens_free {
                    break;
                }
                tokens_sum = tokens_sum.saturating_add(tokens);
                take += 1;
            }
            let take = take.max(1).min(w.batch.len());
            let PlanScratch {
                mut waiting,
                mut items,
                mut plan,
            } = std::mem::take(&mut self.plan_scratch);
            for (img, item) in self.workspaces[ws].batch.drain(..take) {
                waiting.push(img);
                items.push(item);
            }
            split::split_into(&items, &caps, &mut plan);
            self.batch_never_fit -= plan.oversize.len();
            for idx in &plan.oversize {
                let img = waiting[*idx];
                let what = format!(
                    "batch line of {} bytes and {} tokens",
                    items[*idx].line_bytes, items[*idx].tokens
                );
                self.finish(now, img, Err(FailReason::TooLarge { what }));
            }
            for batch in &plan.batches {
                let images: Vec<ImageId> = batch.iter().map(|&i| waiting[i]).collect();
                let tokens: u64 = batch.iter().map(|&i| items[i].tokens).sum();
                let bytes: u64 = batch.iter().map(|&i| items[i].line_bytes).sum();
                self.start_batch(now, ws, images, tokens, bytes);
            }
            let retry_at = self.batch_retry_at(now);
            let w = &mut self.workspaces[ws];
            for &i in plan.held.iter().rev() {
                w.batch.push_front((waiting[i], items[i]));
            }
            waiting.clear();
            items.clear();
            self.plan_scratch = PlanScratch {
                waiting,
                items,
                plan,
            };
            if !w.batch.is_empty() {
                // Retry when a spent per-hour budget refills, else in a minute (as another
                // client's share of the queue fades); room one of our batches frees is taken at
                // once (`release_queue`). A budget with room left is not what held the work (the
                // queue's room was): waking at its "refill" (now) would retry every
                // millisecond.
                let mut at = retry_at;
                for budget in [&w.batches_per_hour, &w.images_per_hour]
                    .into_iter()
                    .flatten()
                {
                    if budget.remaining(now) == 0 {
                        if let Some(t) = budget.time_until(now, 1) {
                            at = at.min(now + t.max(Duration::from_millis(1)));
                        }
                    }
                }
                next_try = Some(next_try.map_or(at, |t: Time| t.min(at)));
                self.batch_waiting.push_back(ws);
                kept += 1;
            }
        }
        if let Some(at) = next_try {
            if self.batch_hold_until.is_none_or(|t| at < t) {
                self.batch_hold_until = Some(at);
                self.timer(at, Timer::BatchHold);
            }
        }
    }

    /// When a workspace held back by the queue's room plans again, unless a per-hour budget
    /// refills sooner: in a minute (as another client's share of the queue fades), or when the
    /// learned foreign share lapses and the whole queue is probed.
    fn batch_retry_at(&self, now: Time) -> Time {
        let at = now + Duration::from_secs(60);
        if self.foreign.until > now {
            at.min(self.foreign.until)
        } else {
            at
        }
    }

    fn line_bytes(&self, image: ImageId, rec: &ImageRec) -> u64 {
        // The custom_id is `u{upload}-i{index}`: two decimal numbers and three fixed bytes.
        let digits = |v: u32| u64::from(v.checked_ilog10().unwrap_or(0) + 1);
        self.line_base_bytes
            + 3
            + digits(image.upload.0)
            + digits(image.index)
            + u64::from(rec.url_len)
    }

    fn start_batch(&mut self, now: Time, ws: usize, images: Vec<ImageId>, tokens: u64, bytes: u64) {
        let batch = BatchRef(self.batches.len() as u32);
        let reserved = self.queue.try_enqueue(tokens);
        debug_assert!(
            reserved,
            "the splitter keeps batches within the queue's free tokens"
        );
        let w = &mut self.workspaces[ws];
        if let Some(b) = w.batches_per_hour.as_mut() {
            b.force_take(now, 1);
        }
        if let Some(b) = w.images_per_hour.as_mut() {
            b.force_take(now, images.len() as u64);
        }
        for &img in &images {
            if let Some(rec) = self.rec_mut(img) {
                rec.batch = Some(batch);
            }
            self.set_stage(img, Stage::Preparing);
        }
        self.actions.push_back(Action::UploadBatchFile {
            batch,
            images: images.clone(),
            bytes,
            tokens,
        });
        self.batches.push(BatchRec {
            images,
            tokens,
            phase: BatchPhase::Uploading,
            batch_id: None,
            created_at: now,
            next_poll: Time::MAX,
            poll_interval: Duration::from_millis(self.cfg.policy.poll_interval_ms),
            output_file_id: None,
            error_file_id: None,
            download_attempts: 0,
            download_pending: false,
            queue_released: !reserved,
            terminal_state: None,
            cancel_sent: None,
            cancel_again_at: Time::ZERO,
            reported: Stage::Preparing,
        });
    }

    /// The file upload or the batch creation failed: nothing upstream holds these images, so
    /// they go back to `Queued` (the pending mark is never set) and are retried or failed.
    fn batch_submit_failed(&mut self, now: Time, batch: BatchRef, error: &str) {
        self.release_queue(batch);
        let b = &mut self.batches[batch.0 as usize];
        b.phase = BatchPhase::Done;
        let images = std::mem::take(&mut b.images);
        for img in images {
            self.batch_attempt_failed(now, img, error);
        }
        // Back off before the next attempt at building a batch.
        let delay = self.backoff.delay(0, &mut self.rng);
        let at = now + delay;
        if at > self.submit_backoff_until {
            self.submit_backoff_until = at;
            self.timer(at, Timer::BatchHold);
        }
    }

    fn release_queue(&mut self, batch: BatchRef) {
        let b = &mut self.batches[batch.0 as usize];
        if !b.queue_released {
            b.queue_released = true;
            self.queue.release(b.tokens);
            self.batch_dirty = true;
            // The room is ours to take again at once: what another client holds is counted
            // in `foreign`, so this room is not theirs.
            self.batch_hold_until = None;
        }
    }

    fn request_download(&mut self, batch: BatchRef) {
        let b = &mut self.batches[batch.0 as usize];
        b.download_pending = true;
        self.actions.push_back(Action::DownloadResults {
            batch,
            batch_id: b.batch_id.clone().unwrap_or_else(|| Arc::from("")),
            output_file_id: b.output_file_id.clone(),
            error_file_id: b.error_file_id.clone(),
        });
    }

    /// Acts on running `batch` if the policy's time for it is up, and says whether that ended
    /// it. Past `poll_give_up_ms` its images fail (the seed's bug, made visible), unless it
    /// has been cancelled as overdue already. Past `batch_overdue_ms` upstream is asked to
    /// cancel it and polling goes on: once it ends, its partial results are downloaded (and
    /// billed) as any cancelled batch's, its tokens leave the queue, and the images without a
    /// result go round again. Only a batch that has not ended [`CANCEL_GRACE`] after the
    /// cancel is let go of without its results. While upstream still reports it `running`
    /// (not cancelling), the cancel is sent again every [`CANCEL_RETRY`]: a lost cancel
    /// request must not cost the batch's results.
    fn time_up(&mut self, now: Time, batch: BatchRef, running: bool) -> bool {
        let policy = &self.cfg.policy;
        let b = &self.batches[batch.0 as usize];
        let age = now - b.created_at;
        let past = |limit: Option<u64>| limit.filter(|&ms| age >= Duration::from_millis(ms));
        // Once a cancel is out, the batch's end (and its partial results) is waited for, up
        // to the grace, whatever the give-up says.
        let give_up = past(policy.poll_give_up_ms).filter(|_| b.cancel_sent.is_none());
        if let Some(after_ms) = give_up {
            for img in self.let_go(batch) {
                if self.stage(img).is_some_and(|s| !s.is_terminal()) {
                    self.finish(now, img, Err(FailReason::PollingAbandoned { after_ms }));
                }
            }
            return true;
        }
        if past(policy.batch_overdue_ms).is_none() {
            return false;
        }
        match b.cancel_sent {
            None => {
                self.stats.batches_overdue += 1;
                self.batches[batch.0 as usize].cancel_sent = Some(now);
                self.send_cancel(now, batch);
                false
            }
            Some(sent) if now - sent >= CANCEL_GRACE => {
                for img in self.let_go(batch) {
                    self.batch_attempt_failed(now, img, "batch_overdue");
                }
                true
            }
            Some(_) => {
                if running && now >= b.cancel_again_at {
                    self.send_cancel(now, batch);
                }
                false
            }
        }
    }

    /// Asks upstream to cancel `batch`, and not again before [`CANCEL_RETRY`] has passed.
    fn send_cancel(&mut self, now: Time, batch: BatchRef) {
        let b = &mut self.batches[batch.0 as usize];
        b.cancel_again_at = now + CANCEL_RETRY;
        if let Some(batch_id) = b.batch_id.clone() {
            self.actions
                .push_back(Action::CancelBatch { batch, batch_id });
        }
    }

    /// Stops tracking running `batch`: frees its share of the enqueued-token queue and hands
    /// back its images.
    fn let_go(&mut self, batch: BatchRef) -> Vec<ImageId> {
        self.release_queue(batch);
        let b = &mut self.batches[batch.0 as usize];
        b.phase = BatchPhase::Done;
        std::mem::take(&mut b.images)
    }

    // ---- retries --------------------------------------------------------------------------

    /// A queued realtime image that may not try realtime again: to the batch queue, or failed.
    fn retries_exhausted(&mut self, now: Time, image: ImageId, last: &str) {
        match self.cfg.policy.on_retries_exhausted {
            Exhausted::Batch => {
                self.stats.fallbacks_to_batch += 1;
                self.push_batch(image);
            }
            Exhausted::Fail => {
                let last = last.to_owned();
                self.finish(now, image, Err(FailReason::RetriesExhausted { last }));
            }
        }
    }

    fn retry_realtime(&mut self, now: Time, image: ImageId, last: &str, wait: Option<Duration>) {
        let Some(rec) = self.rec_mut(image) else {
            return;
        };
        rec.attempts = rec.attempts.saturating_add(1);
        let attempts = rec.attempts;
        self.set_stage(image, Stage::Queued);
        if attempts_exhausted(attempts, self.cfg.policy.retry_max_attempts) {
            self.retries_exhausted(now, image, last);
            return;
        }
        self.stats.retries += 1;
        let delay =
            wait.unwrap_or_else(|| self.backoff.delay(u32::from(attempts) - 1, &mut self.rng));
        self.timer(now + delay, Timer::Retry(image));
    }

    fn batch_attempt_failed(&mut self, now: Time, image: ImageId, code: &str) {
        let Some(rec) = self.rec_mut(image) else {
            return;
        };
        if rec.stage.is_terminal() {
            return;
        }
        rec.batch_attempts = rec.batch_attempts.saturating_add(1);
        rec.batch = None;
        if attempts_exhausted(rec.batch_attempts, self.cfg.policy.batch_max_attempts) {
            self.finish(
                now,
                image,
                Err(FailReason::BatchAttemptsExhausted {
                    last: code.to_owned(),
                }),
            );
        } else {
            self.stats.retries += 1;
            if self.reroute_realtime(now, image) {
                self.set_stage(image, Stage::Queued);
                self.enqueue_realtime(image, Lane::Rest);
            } else {
                self.requeue_for_batch(image);
            }
        }
    }

    /// Whether an image whose batch attempt failed (an expired or cancelled batch's unfinished
    /// work, a failed line) goes round through realtime instead of another batch: under the
    /// adaptive router preferring latency, when realtime would tag it, behind everything
    /// already queued, before another batch would come back. The rule the router applies to
    /// a new upload past its head; without it, work that already waited a day for a batch
    /// that expired waited for another batch.
    fn reroute_realtime(&self, now: Time, image: ImageId) -> bool {
        let p = &self.cfg.policy;
        if p.routing != Routing::Adaptive || p.prefer != Preference::Latency {
            return false;
        }
        let charge =
            self.uploads[image.upload.0 as usize].images[image.index as usize].charge_tokens;
        let wait = self.drain_time(
            now,
            self.backlog_tokens.saturating_add(charge),
            self.backlog_requests.saturating_add(1),
        ) + self.realtime_latency();
        wait <= self.batch_turnaround
    }

    fn hold_for_queue(&mut self, now: Time, image: ImageId) {
        let Some(rec) = self.rec_mut(image) else {
            return;
        };
        rec.holds = rec.holds.saturating_add(1);
        rec.batch = None;
        if rec.holds > MAX_QUEUE_HOLDS {
            self.finish(now, image, Err(FailReason::QueueFull));
        } else {
            self.requeue_for_batch(image);
        }
    }

    fn observe(&mut self, now: Time, observed: &Observed) {
        if self.cfg.policy.client_pacing {
            // A retry delay is never waited out past the cap, whichever answer carried it: a
            // 200 with a retry-after of years would otherwise freeze realtime for years.
            let cap = Duration::from_millis(self.cfg.policy.retry_after_max_ms);
            let observed = Observed {
                retry_after: observed.retry_after.map(|a| a.min(cap)),
                ..*observed
            };
            self.account.observe(now, &observed);
        }
    }

    // ---- bookkeeping ----------------------------------------------------------------------

    fn workspace(&mut self, id: WorkspaceId) -> usize {
        if let Some(&i) = self.workspace_index.get(&id) {
            return i;
        }
        let p = &self.cfg.policy;
        let nz = |v: Option<u64>| v.and_then(NonZeroU64::new);
        let limits = match (nz(p.workspace_rpm), nz(p.workspace_tpm)) {
            (None, None) => None,
            (rpm, tpm) => Some(RateLimits::new(
                rpm.unwrap_or(NonZeroU64::MAX),
                tpm.unwrap_or(NonZeroU64::MAX),
            )),
        };
        let hour = Duration::from_secs(3600);
        let i = self.workspaces.len();
        self.workspaces.push(WorkspaceState {
            id,
            limits,
            realtime: Lanes::default(),
            batch: VecDeque::new(),
            deficit: 0,
            in_ring: false,
            blocked_until: Time::ZERO,
            batches_per_hour: nz(p.workspace_batches_per_hour).map(|n| Bucket::new(n, hour)),
            images_per_hour: nz(p.workspace_images_per_hour).map(|n| Bucket::new(n, hour)),
        });
        self.workspace_index.insert(id, i);
        i
    }

    /// The moving average of realtime latency the router adds to its wait estimates.
    fn realtime_latency(&self) -> Duration {
        Duration::from_nanos(self.realtime_latency_ns)
    }

    fn rec(&self, image: ImageId) -> Option<&ImageRec> {
        self.uploads
            .get(image.upload.0 as usize)?
            .images
            .get(image.index as usize)
    }

    fn rec_mut(&mut self, image: ImageId) -> Option<&mut ImageRec> {
        self.uploads
            .get_mut(image.upload.0 as usize)?
            .images
            .get_mut(image.index as usize)
    }

    fn set_stage(&mut self, image: ImageId, stage: Stage) {
        let u = &mut self.uploads[image.upload.0 as usize];
        let rec = &mut u.images[image.index as usize];
        if rec.stage == stage {
            return;
        }
        debug_assert!(
            !rec.stage.is_terminal(),
            "{image} left terminal stage {:?}",
            rec.stage
        );
        u.by_stage[rec.stage as usize] -= 1;
        u.by_stage[stage as usize] += 1;
        rec.stage = stage;
        self.mark_dirty(image.upload);
    }

    /// Moves an image to its terminal stage, exactly once, and emits its event.
    fn finish(&mut self, now: Time, image: ImageId, outcome: Result<(Channel, Usage), FailReason>) {
        if self.rec(image).is_none_or(|r| r.stage.is_terminal()) {
            return;
        }
        // Built in its slot (see `send_realtime`), not on the stack and copied.
        match outcome {
            Ok((channel, usage)) => {
                self.set_stage(image, Stage::Completed);
                self.events
                    .extend(std::iter::once_with(|| Event::ImageTagged {
                        image,
                        at: now,
                        channel,
                        usage,
                    }));
            }
            Err(reason) => {
                self.set_stage(image, Stage::Failed);
                self.events.push_back(Event::ImageFailed {
                    image,
                    at: now,
                    reason,
                });
            }
        }
        let u = &mut self.uploads[image.upload.0 as usize];
        let terminal = u.by_stage[Stage::Completed as usize] + u.by_stage[Stage::Failed as usize];
        if !u.done && terminal as usize == u.images.len() {
            u.done = true;
            self.events.push_back(Event::UploadComplete {
                upload: image.upload,
                at: now,
            });
        }
    }

    fn mark_dirty(&mut self, upload: UploadId) {
        if !self.emit_progress {
            return;
        }
        let u = &mut self.uploads[upload.0 as usize];
        if !u.progress_dirty {
            u.progress_dirty = true;
            self.dirty_uploads.push(upload);
        }
    }

    fn flush_progress(&mut self, now: Time) {
        let dirty = std::mem::take(&mut self.dirty_uploads);
        for upload in dirty {
            self.uploads[upload.0 as usize].progress_dirty = false;
            if let Some(p) = self.progress(now, upload) {
                self.events.push_back(Event::Progress(p));
            }
        }
    }

    fn timer(&mut self, at: Time, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, timer)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Smallest upload first, kept as runs, gives the images in the order a queue of
        /// single images sorted by (upload size, upload, index) would, however pushes of runs,
        /// lone images (retries turned back, reroutes) and pops interleave.
        #[test]
        fn runs_pop_in_size_upload_index_order(
            ops in proptest::collection::vec((0u32..6, 1u32..5, 0u8..3), 1..200)
        ) {
            // Upload u has 1 + (u * 7) % 5 images' worth of size, so sizes tie across uploads.
            let size = |u: u32| u64::from(1 + (u * 7) % 5);
            let mut next = [0u32; 6];
            let mut lanes = Lanes::default();
            let mut reference = std::collections::BTreeSet::new();
            let mut popped = Vec::new();
            for (u, n, op) in ops {
                match op {
                    0 => {
                        let want = reference.pop_first().map(|(_, u, i)| ImageId {
                            upload: UploadId(u),
                            index: i,
                        });
                        prop_assert_eq!(lanes.front(), want);
                        prop_assert_eq!(lanes.pop_front(), want);
                        popped.extend(want);
                    }
                    1 => {
                        for _ in 0..n {
                            let image = ImageId { upload: UploadId(u), index: next[u as usize] };
                            next[u as usize] += 1;
                            lanes.push(image, Lane::Rest, Some(size(u)));
                            reference.insert((size(u), u, image.index));
                        }
                    }
                    _ => {
                        // An image sent before comes back to the queue alone, behind later ones.
                        if let Some(image) = popped.pop() {
                            let u = image.upload.0;
                            lanes.push(image, Lane::Rest, Some(size(u)));
                            reference.insert((size(u), u, image.index));
                        }
                    }
                }
                prop_assert_eq!(lanes.is_empty(), reference.is_empty());
            }
            while let Some((_, u, i)) = reference.pop_first() {
                prop_assert_eq!(lanes.pop_front(), Some(ImageId { upload: UploadId(u), index: i }));
            }
            prop_assert!(lanes.is_empty());
        }
    }
}
