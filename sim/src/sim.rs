//! The discrete-event loop: users arrive, core decides, the OpenAI model answers, in virtual time.
//!
//! One queue (`queue::EventQueue`) holds every upstream answer in flight, keyed by (time,
//! insertion sequence), so ties resolve in the order they were scheduled and a run is
//! deterministic.
//! Arrivals come from a sorted list and core's own timer from [`Engine::poll_timeout`]; the loop
//! jumps to the earliest of the three. Nothing here reads a clock or iterates a hash map into
//! the output.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use mock_openai::batch::{BatchLine, BatchStatus as ApiStatus, LineOutcome};
use mock_openai::chat::FinishReason;
use mock_openai::chat::{ChatOutcome, ChatRequest};
use mock_openai::latency;
use mock_openai::tags::{self, Tags};
use mock_openai::{OrgId, Upstream};
use tagstorm_core::cost::Channel;
use tagstorm_core::limit::{Charge, Observed, RateLimits};
use tagstorm_core::tokens::{ImageSpec, Model, Usage};
use tagstorm_core::{
    Action, BatchRef, BatchState, BatchStatus, Config, Engine, Event, ImageId, ImageInput,
    LineResult, Policy, RealtimeOutcome, RequestId, RequestShape, Time, Upload, UpstreamError,
    WorkspaceId,
};

use crate::queue::{Entry, EventQueue};
use crate::results::{
    AccountSummary, ImageCounts, Latencies, Results, SCHEMA, SimInfo, Summary, Tokens,
    UploadCounts, UpstreamCounts, Verification, new_histogram, round,
};
use crate::scenario::{Scenario, millis, secs};
use crate::workload::{self, Arrival, derive_seed, streams};

/// The start of the ids the simulator gives uploaded batch files, `file-sim{n}`: `n` is the
/// file's place in [`Sim`]'s list.
const FILE_ID_PREFIX: &str = "file-sim";

/// Most events one run may process, whatever the scenario: the loop's hard bound.
pub const MAX_EVENTS: u64 = 2_000_000_000;

/// A run that could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// Core or the model refused the configuration.
    #[error("{0}")]
    Setup(String),
}

/// A run's results and its latency histograms (for the `.hgrm` files).
#[derive(Debug)]
pub struct RunOutput {
    /// The results object.
    pub results: Results,
    /// Upload start → image tagged, ms.
    pub image_tagged: Histogram<u64>,
    /// Upload start → first tag, ms.
    pub upload_first_tag: Histogram<u64>,
    /// Upload start → every image terminal, ms.
    pub upload_complete: Histogram<u64>,
}

/// A progress report, for a caller that shows one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Virtual time, ms.
    pub now_ms: u64,
    /// Images terminal so far.
    pub terminal: u64,
    /// Images in the workload.
    pub total: u64,
    /// Events processed.
    pub events: u64,
}

/// Runs `scenario` under `policy` (already resolved with the scenario's overrides).
pub fn run(scenario: &Scenario, policy: &Policy) -> Result<RunOutput, SimError> {
    run_with_progress(scenario, policy, &mut |_| {})
}

/// [`run`], calling `progress` every 2^16 events.
pub fn run_with_progress(
    scenario: &Scenario,
    policy: &Policy,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunOutput, SimError> {
    let mut prepared = prepare(scenario, policy)?;
    prepared.0.run(progress);
    Ok(prepared.finish())
}

/// A run set up (workload drawn, core and the model built) whose events have not yet run:
/// [`run`] in three steps, so `bench` can time the event loop apart from the setup before it
/// and the results after it, as the peers it is compared with time only their loops.
pub struct Prepared<'a>(Sim<'a>);

/// Sets up a run of `scenario` under `policy`; [`Prepared::run_events`] and
/// [`Prepared::finish`] then give exactly what [`run`] gives.
pub fn prepare<'a>(scenario: &'a Scenario, policy: &Policy) -> Result<Prepared<'a>, SimError> {
    let arrivals = workload::generate(&scenario.spec);
    Ok(Prepared(Sim::new(scenario, policy, arrivals)?))
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("scenario", &self.0.scenario.spec.name)
            .field("policy", &self.0.policy_name)
            .field("events", &self.0.events)
            .finish_non_exhaustive()
    }
}

impl Prepared<'_> {
    /// Runs every event, to the end of the work or a bound.
    pub fn run_events(&mut self) {
        self.0.run(&mut |_| {});
    }

    /// The results: percentiles, the physical bound, cost.
    pub fn finish(self) -> RunOutput {
        self.0.finish()
    }
}

/// What the simulator knows of one image.
#[derive(Clone, Copy, Debug, Default)]
struct ImageRec {
    /// Its tags ([`Tags::of`] its URL), worked out once, when a request or batch line for it
    /// first goes out, and handed to the model with it.
    expected: Option<Tags>,
    /// The tags an answer delivered for it, if any; the tag check compares the two when core
    /// reports the image tagged.
    delivered: Option<Tags>,
    /// 0 = not terminal, 1 = tagged, 2 = failed.
    state: u8,
}

/// `repr(u64)` puts the tag in a word of its own, so every field sits at a multiple of 8 and a
/// move out of the slab copies in chunks that start on those multiples; the default layout put
/// a two-byte tag first, and the 8-byte reads after a move straddled two 16-byte stores.
#[derive(Debug)]
#[repr(u64)]
enum Ev {
    Realtime {
        request: RequestId,
        image: ImageId,
        outcome: RealtimeOutcome,
        /// The answer's tags; `None` for no answer, or one cut short (no valid tags).
        content: Option<Tags>,
    },
    FileUploaded {
        batch: BatchRef,
        result: Result<String, UpstreamError>,
    },
    BatchCreated {
        batch: BatchRef,
        result: Result<String, UpstreamError>,
    },
    Status {
        batch: BatchRef,
        result: Result<BatchStatus, UpstreamError>,
    },
    Results {
        batch: BatchRef,
        result: Result<Vec<LineResult>, UpstreamError>,
        contents: Vec<(ImageId, Tags)>,
    },
}

/// Bits of [`Entry::seq_slot`] that hold the slot: at most 2^26 (67 M) answers in flight at
/// once, above what a scenario can have (an image has at most one request in flight, a batch a
/// few calls, and a scenario at most `MAX_IMAGES`, 20 M, images). The sequence gets the other
/// 38 bits (2.7 × 10^11), far above [`MAX_EVENTS`] plus any slab.
const SLOT_BITS: u32 = 26;

impl Entry {
    fn slot(self) -> usize {
        (self.seq_slot & ((1 << SLOT_BITS) - 1)) as usize
    }
}

#[derive(Debug)]
struct UploadRec {
    start: Time,
    /// FNV-1a of the upload's URL prefix (see [`url_hash`]).
    url_hash: u64,
    /// An image index divided by 10, and the FNV-1a of the URL up to that index's last digit
    /// (the prefix and the digits of `tens`, none when it is 0): images of an upload go out
    /// mostly in order, so ten in a row share it and each hashes only its last digit and
    /// `.jpg` (see [`UploadRec::image_url_hash`]).
    tens: u32,
    tens_hash: u64,
    base: usize,
    /// Its images.
    images: u32,
    first_tag: bool,
}

impl UploadRec {
    /// [`url_hash`] of image `index` of this upload, extended from the hash of the digits
    /// before the index's last one, which is worked out again only when `index / 10` changes.
    /// Always inlined, with the rare recomputation out of line: the image's tags are worked
    /// out inside the simulator's loop, and a larger body there changed how LTO compiled the
    /// whole loop (65 M instructions more on the million-image day).
    #[inline(always)]
    fn image_url_hash(&mut self, index: u32) -> u64 {
        let tens = index / 10;
        if self.tens != tens {
            self.set_tens(tens);
        }
        let last = b'0' + (index % 10) as u8;
        let h = tags::fnv1a64_extend(self.tens_hash, &[last]);
        tags::fnv1a64_extend(h, b".jpg")
    }

    /// Hashes the digits of `tens` after the prefix: once every ten images of an upload sent
    /// in order.
    #[cold]
    #[inline(never)]
    fn set_tens(&mut self, tens: u32) {
        self.tens = tens;
        self.tens_hash = if tens == 0 {
            self.url_hash
        } else {
            tags::fnv1a64_extend(self.url_hash, itoa::Buffer::new().format(tens).as_bytes())
        };
    }
}

struct Sim<'a> {
    scenario: &'a Scenario,
    policy_name: String,
    engine: Engine,
    up: Upstream,
    org: OrgId,
    model: Model,
    max_tokens: u32,
    text_chars: u64,
    spec: ImageSpec,
    url_bytes: u32,
    now: Time,
    end: Time,
    queue: EventQueue,
    seq: u64,
    /// Events in flight, by slot; freed slots are reused, so the slab is as large as the
    /// most events ever in flight at once.
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    /// Scratch buffer for image URLs.
    url: PrefixBuf,
    /// Scratch buffer for batch lines' `custom_id`s.
    custom_id: PrefixBuf,
    arrivals: Vec<Arrival>,
    next_arrival: usize,
    uploads: Vec<UploadRec>,
    /// Global index of the next upload's first image.
    next_base: usize,
    /// Per image, by global index: what the simulator knows of it, in one 15-byte record so
    /// each event touches one cache line per image.
    images: Vec<ImageRec>,
    /// Uploaded batch files by number: their lines, and the image of each line.
    files: Vec<Option<(Vec<BatchLine>, Vec<ImageId>)>>,
    /// Per core batch, once created upstream: the image of each line, in file order.
    batch_images: Vec<Option<Vec<ImageId>>>,
    /// Per core batch: whether its terminal status has been counted.
    batch_seen: Vec<bool>,
    counts: ImageCounts,
    upstream: UpstreamCounts,
    tokens: Tokens,
    verification: Verification,
    complete: u64,
    last_terminal: Time,
    events: u64,
    hit_bound: bool,
    /// Set when an answer found no slab slot (2^26 in flight): the run stops, as at a bound.
    slab_full: bool,
    h_tagged: Histogram<u64>,
    /// A run of equal `image_tagged` values not yet in `h_tagged`: the images of one batch
    /// from one upload are tagged at the same instant, and one `record_n` for the run costs
    /// what one `record` does (about 100 instructions each).
    tagged_run: (u64, u64),
    h_first: Histogram<u64>,
    h_complete: Histogram<u64>,
    file_upload: Duration,
    api_call: Duration,
    rate_limited_delay: Duration,
}

impl std::fmt::Debug for Sim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("now", &self.now).finish()
    }
}

/// The start of every image URL of `upload`: `https://img.tagstorm.test/u{upload}/i`.
fn push_url_prefix(out: &mut String, upload: u32) {
    out.push_str("https://img.tagstorm.test/u");
    out.push_str(itoa::Buffer::new().format(upload));
    out.push_str("/i");
}

/// The FNV-1a hash of [`push_url_prefix`]'s text for `upload`, hashed piece by piece instead
/// of spelled out in a string first.
fn url_prefix_hash(upload: u32) -> u64 {
    let h = tags::fnv1a64(b"https://img.tagstorm.test/u");
    let h = tags::fnv1a64_extend(h, itoa::Buffer::new().format(upload).as_bytes());
    tags::fnv1a64_extend(h, b"/i")
}

/// A string of an image, `{prefix of its upload}{index}{suffix}`, built in a reused buffer that
/// keeps the last upload's prefix, so consecutive images of one upload only rewrite the index.
/// Used for image URLs (`https://img.tagstorm.test/u{upload}/i{index}.jpg`) and for batch
/// lines' `custom_id`s (`u{upload}-i{index}`, as core's [`ImageId::custom_id`] writes them:
/// core's version assembles its bytes on the stack and checks them as UTF-8, about 90
/// instructions a line, where here every piece is a `str` already).
#[derive(Debug, Default)]
struct PrefixBuf {
    buf: String,
    /// The upload whose prefix `buf` starts with, and that prefix's length.
    prefix: Option<(u32, usize)>,
}

impl PrefixBuf {
    fn set(&mut self, image: ImageId, prefix: impl FnOnce(&mut String, u32), suffix: &str) -> &str {
        match self.prefix {
            Some((upload, len)) if upload == image.upload.0 => self.buf.truncate(len),
            _ => {
                self.buf.clear();
                prefix(&mut self.buf, image.upload.0);
                self.prefix = Some((image.upload.0, self.buf.len()));
            }
        }
        self.buf.push_str(itoa::Buffer::new().format(image.index));
        self.buf.push_str(suffix);
        &self.buf
    }

    /// The image's URL.
    fn url(&mut self, image: ImageId) -> &str {
        self.set(image, push_url_prefix, ".jpg")
    }

    /// The image's `custom_id`.
    fn custom_id(&mut self, image: ImageId) -> &str {
        let id = self.set(
            image,
            |buf, upload| {
                buf.push('u');
                buf.push_str(itoa::Buffer::new().format(upload));
                buf.push_str("-i");
            },
            "",
        );
        debug_assert_eq!(id, image.custom_id().as_str());
        id
    }
}

/// The FNV-1a hash of image `index`'s URL, for an upload whose URL prefix hashes to
/// `prefix_hash`: only what follows the prefix is hashed. Realtime requests interleave uploads,
/// so the prefix hash is kept per upload rather than for the last one.
fn url_hash(prefix_hash: u64, index: u32) -> u64 {
    let h = tags::fnv1a64_extend(prefix_hash, itoa::Buffer::new().format(index).as_bytes());
    tags::fnv1a64_extend(h, b".jpg")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<'a> Sim<'a> {
    fn new(
        scenario: &'a Scenario,
        policy: &Policy,
        arrivals: Vec<Arrival>,
    ) -> Result<Sim<'a>, SimError> {
        let s = &scenario.spec;
        let setup = |e: &dyn std::fmt::Display| SimError::Setup(e.to_string());
        let limits = s.account.resolve().map_err(|e| setup(&e))?;
        let mut request = RequestShape {
            model: s.account.model,
            max_tokens: s.images.output_tokens,
            image_charge_tokens: s.upstream.image_charge_tokens,
            ..RequestShape::default()
        };
        if let Some(p) = &s.images.prompt {
            request.prompt = p.clone();
        }
        let text_chars = request.prompt.chars().count() as u64;
        let cfg = Config::new(policy.clone(), limits)
            .with_request(request)
            .with_seed(derive_seed(s.seed, streams::CORE));
        let mut engine = Engine::new(cfg).map_err(|e| setup(&e))?;
        engine.set_progress_events(false);
        let mut up = Upstream::new(s.upstream.clone(), derive_seed(s.seed, streams::MODEL))
            .map_err(|e| setup(&e))?;
        // Core reads the remaining-* values of an answer, never its reset durations.
        up.set_reset_headers(false);
        let org = up.add_org(&s.account).map_err(|e| setup(&e))?;
        if s.sim.foreign_batch_tokens > 0 {
            submit_foreign_batch(&mut up, org, s.sim.foreign_batch_tokens)
                .map_err(|e| setup(&e))?;
        }
        let total: u64 = arrivals.iter().map(|a| u64::from(a.images)).sum();
        let total_usize = usize::try_from(total).map_err(|e| setup(&e))?;
        Ok(Sim {
            scenario,
            policy_name: policy.name.clone(),
            engine,
            up,
            org,
            model: s.account.model,
            max_tokens: s.images.output_tokens,
            text_chars,
            spec: ImageSpec {
                width_px: s.images.width_px,
                height_px: s.images.height_px,
                detail: s.images.detail,
            },
            url_bytes: s.images.url_bytes,
            now: Time::ZERO,
            end: Time::ZERO + secs(s.sim.max_duration_s),
            queue: EventQueue::default(),
            seq: 0,
            slab: Vec::new(),
            free: Vec::new(),
            url: PrefixBuf::default(),
            custom_id: PrefixBuf::default(),
            uploads: Vec::with_capacity(arrivals.len()),
            next_base: 0,
            arrivals,
            next_arrival: 0,
            images: vec![ImageRec::default(); total_usize],
            files: Vec::new(),
            batch_images: Vec::new(),
            batch_seen: Vec::new(),
            counts: ImageCounts {
                total,
                ..ImageCounts::default()
            },
            upstream: UpstreamCounts::default(),
            tokens: Tokens::default(),
            verification: Verification::default(),
            complete: 0,
            last_terminal: Time::ZERO,
            events: 0,
            hit_bound: false,
            slab_full: false,
            h_tagged: new_histogram(),
            tagged_run: (0, 0),
            h_first: new_histogram(),
            h_complete: new_histogram(),
            file_upload: millis(s.sim.file_upload_ms),
            api_call: millis(s.sim.api_call_ms),
            rate_limited_delay: millis(s.sim.rate_limited_ms),
        })
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.push_with(at, move || ev);
    }

    /// [`Sim::push`] with the event built by `make` once its slot is known, so it is written
    /// straight into the slot instead of being built on the stack and copied in (a copy whose
    /// wide loads waited on the stores just made).
    #[inline]
    fn push_with(&mut self, at: Time, make: impl FnOnce() -> Ev) {
        let slot = match self.free.pop() {
            Some(i) => i as usize,
            None if self.slab.len() < 1 << SLOT_BITS => {
                self.slab.push(None);
                self.slab.len() - 1
            }
            None => {
                // More answers in flight than an entry can name: the run stops here, as at
                // `MAX_EVENTS`, with what is left reported pending.
                self.slab_full = true;
                return;
            }
        };
        // A free slot is always empty (`take` left it so), so this only ever inserts.
        self.slab[slot].get_or_insert_with(make);
        self.seq += 1;
        self.queue.push(Entry {
            at,
            seq_slot: self.seq << SLOT_BITS | slot as u64,
        });
    }

    fn global(&self, image: ImageId) -> Option<usize> {
        let u = self.uploads.get(image.upload.0 as usize)?;
        Some(u.base + image.index as usize)
    }

    fn run(&mut self, progress: &mut dyn FnMut(&Progress)) {
        loop {
            // Everything that happens in one instant reaches core before core is asked for
            // decisions, so ten uploads at t = 0 share the first burst fairly instead of the
            // first few taking it all.
            let now = self.now;
            let due_now = |t: Option<Time>| t.is_some_and(|t| t <= now);
            let busy_now = due_now(self.arrivals.get(self.next_arrival).map(|a| a.at))
                || due_now(self.queue.peek_at());
            let t_timer = if busy_now {
                None
            } else {
                self.pump();
                self.engine.poll_timeout()
            };
            let t_arrival = self.arrivals.get(self.next_arrival).map(|a| a.at);
            let t_queue = self.queue.peek_at();
            // The earliest of the three, written out: an iterator chain over the array here
            // cost about 1% of a run.
            let earliest = |a: Option<Time>, b: Option<Time>| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            };
            let Some(next) = earliest(earliest(t_arrival, t_queue), t_timer) else {
                return;
            };
            if next > self.end || self.events >= MAX_EVENTS || self.slab_full {
                self.hit_bound = true;
                return;
            }
            self.now = self.now.max(next);
            self.events += 1;
            if self.events & 0xffff == 0 {
                progress(&Progress {
                    now_ms: self.now.as_millis(),
                    terminal: self.counts.tagged + self.counts.failed,
                    total: self.counts.total,
                    events: self.events,
                });
            }
            if t_arrival == Some(next) {
                self.arrive();
            } else if t_queue == Some(next) {
                if let Some(e) = self.queue.pop() {
                    if let Some(ev) = self.slab.get_mut(e.slot()).and_then(Option::take) {
                        self.free.push(e.slot() as u32);
                        self.deliver(ev);
                    }
                }
            } else {
                self.engine.handle_timeout(self.now);
            }
        }
    }

    fn arrive(&mut self) {
        let a = self.arrivals[self.next_arrival];
        self.next_arrival += 1;
        let base = self.next_base;
        self.next_base += a.images as usize;
        let image = ImageInput {
            spec: self.spec,
            url_len: self.url_bytes,
        };
        let upload = Upload {
            workspace: WorkspaceId(a.workspace),
            images: vec![image; a.images as usize],
            deadline: a.deadline,
        };
        let url_hash = url_prefix_hash(u32::try_from(self.uploads.len()).unwrap_or(u32::MAX));
        self.uploads.push(UploadRec {
            start: self.now,
            url_hash,
            // Indexes 0-9 have no digits before their last one.
            tens: 0,
            tens_hash: url_hash,
            base,
            images: a.images,
            first_tag: false,
        });
        match self.engine.handle_upload(self.now, upload) {
            Ok(id) => debug_assert_eq!(id.0 as usize + 1, self.uploads.len()),
            Err(e) => {
                // Core records nothing for a refused upload and gives the next one this id, so
                // the record goes too; its images fail here, visibly.
                self.uploads.pop();
                let n = u64::from(a.images);
                self.counts.failed += n;
                *self
                    .counts
                    .failures
                    .entry(format!("upload_rejected: {e}"))
                    .or_default() += n;
                for rec in &mut self.images[base..base + a.images as usize] {
                    rec.state = 2;
                }
            }
        }
    }

    /// Hands every action core wants done to the model, and records every event.
    fn pump(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            self.act(action);
        }
        while let Some(event) = self.engine.poll_event() {
            self.record(event);
        }
    }

    fn act(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::SendRealtime {
                request,
                image,
                spec,
                max_tokens,
                ..
            } => {
                self.upstream.requests += 1;
                let tags = self.image_tags(image);
                // The model reads only the tags; the URL is spelled out in debug builds, where
                // the model checks the tags against it, and left empty in release builds, where
                // it would cost 3% of a run for nothing. Borrowed from its buffer in place:
                // taking the buffer out of `self` and putting it back, needless in release
                // builds, cost 19 M instructions on the million-image day (about 32 a
                // request, 14 of them the moves).
                let image_url = if cfg!(debug_assertions) {
                    self.url.url(image)
                } else {
                    ""
                };
                let req = ChatRequest {
                    model: self.model,
                    max_tokens,
                    text_chars: self.text_chars,
                    images: std::slice::from_ref(&spec),
                    image_url,
                    tags: Some(tags),
                };
                let (delay, outcome, content) = match self.up.chat(now, self.org, &req) {
                    ChatOutcome::Ok(ok) => (
                        ok.latency,
                        RealtimeOutcome::Ok {
                            usage: ok.usage,
                            observed: Observed {
                                remaining_requests: Some(ok.headers.remaining_requests),
                                remaining_tokens: Some(ok.headers.remaining_tokens),
                                retry_after: None,
                            },
                        },
                        // A cut-short answer carries no valid tags: it counts as a mismatch.
                        (ok.finish_reason == FinishReason::Stop).then_some(ok.tags),
                    ),
                    ChatOutcome::RateLimited(r) => {
                        self.upstream.rate_limited += 1;
                        (
                            self.rate_limited_delay,
                            RealtimeOutcome::RateLimited {
                                retry_after: Some(r.retry_after),
                                observed: Observed {
                                    remaining_requests: Some(r.headers.remaining_requests),
                                    remaining_tokens: Some(r.headers.remaining_tokens),
                                    retry_after: Some(r.retry_after),
                                },
                            },
                            None,
                        )
                    }
                    ChatOutcome::RequestTooLarge { limit, requested } => {
                        self.upstream.rate_limited += 1;
                        (
                            self.rate_limited_delay,
                            RealtimeOutcome::Rejected {
                                status: 429,
                                message: format!(
                                    "request too large: {requested} tokens, limit {limit} per minute"
                                ),
                            },
                            None,
                        )
                    }
                    ChatOutcome::ServerError { status, after } => {
                        self.upstream.server_errors += 1;
                        (after, RealtimeOutcome::ServerError { status }, None)
                    }
                    ChatOutcome::Timeout { after } => {
                        self.upstream.timeouts += 1;
                        (after, RealtimeOutcome::Timeout, None)
                    }
                    ChatOutcome::Rejected(e) => (
                        self.rate_limited_delay,
                        RealtimeOutcome::Rejected {
                            status: e.status,
                            message: e.message,
                        },
                        None,
                    ),
                };
                self.push_with(now + delay, move || Ev::Realtime {
                    request,
                    image,
                    outcome,
                    content,
                });
            }
            Action::UploadBatchFile {
                batch,
                images,
                bytes,
                ..
            } => {
                let result = if bytes > self.up.config().batch.max_file_bytes {
                    Err(UpstreamError {
                        status: Some(400),
                        message: format!(
                            "file of {bytes} bytes is larger than the {} allowed",
                            self.up.config().batch.max_file_bytes
                        ),
                    })
                } else {
                    let lines = images.iter().map(|&img| self.batch_line(img)).collect();
                    let mut id = String::with_capacity(FILE_ID_PREFIX.len() + 20);
                    id.push_str(FILE_ID_PREFIX);
                    id.push_str(itoa::Buffer::new().format(self.files.len()));
                    self.files.push(Some((lines, images)));
                    Ok(id)
                };
                self.push(now + self.file_upload, Ev::FileUploaded { batch, result });
            }
            Action::CreateBatch { batch, file_id } => {
                let lines = file_id
                    .strip_prefix(FILE_ID_PREFIX)
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| self.files.get_mut(n))
                    .and_then(Option::take);
                let result = match lines {
                    None => Err(UpstreamError {
                        status: Some(404),
                        message: format!("no such file: {file_id}"),
                    }),
                    Some((lines, images)) => match self.up.submit_batch_id(now, self.org, lines) {
                        Ok(id) => {
                            self.upstream.batches_created += 1;
                            let i = batch.0 as usize;
                            if self.batch_images.len() <= i {
                                self.batch_images.resize_with(i + 1, || None);
                            }
                            self.batch_images[i] = Some(images);
                            Ok(id)
                        }
                        Err(e) => Err(UpstreamError {
                            status: Some(e.status),
                            message: e.message,
                        }),
                    },
                };
                self.push(now + self.api_call, Ev::BatchCreated { batch, result });
            }
            Action::PollBatch { batch, batch_id } => {
                self.upstream.batch_polls += 1;
                let result = match self.up.poll_batch(now, self.org, &batch_id) {
                    Ok(b) => {
                        let state = match b.status {
                            ApiStatus::Validating => BatchState::Validating,
                            ApiStatus::InProgress => BatchState::InProgress,
                            ApiStatus::Finalizing => BatchState::Finalizing,
                            ApiStatus::Completed => BatchState::Completed,
                            ApiStatus::Failed => BatchState::Failed {
                                code: b.error_code.unwrap_or_else(|| "failed".to_owned()),
                            },
                            ApiStatus::Expired => BatchState::Expired,
                            ApiStatus::Cancelling => BatchState::Cancelling,
                            ApiStatus::Cancelled => BatchState::Cancelled,
                        };
                        self.count_batch_end(batch, &state);
                        Ok(BatchStatus {
                            state,
                            output_file_id: b.output_file_id,
                            error_file_id: b.error_file_id,
                        })
                    }
                    Err(e) => Err(UpstreamError {
                        status: Some(e.status),
                        message: e.message,
                    }),
                };
                self.push(now + self.api_call, Ev::Status { batch, result });
            }
            Action::CancelBatch { batch_id, .. } => {
                // Core needs no answer; a batch that has already ended refuses, which is fine.
                let _ = self.up.cancel_batch(now, self.org, &batch_id);
            }
            Action::DownloadResults {
                batch, batch_id, ..
            } => {
                let mut contents = Vec::new();
                let result = match self.up.batch_results(now, self.org, &batch_id) {
                    Some(r) => {
                        contents.reserve_exact(r.lines.len());
                        // The model answers every line, in file order, so line `i` belongs to
                        // the `i`-th image the simulator wrote into the file. Tags are credited
                        // by that position, not by parsing `custom_id`s with core's own parser,
                        // so the tag check also catches core mapping a line to the wrong image.
                        // Lines that don't line up with the file credit nothing, and the images
                        // core then reports tagged count as mismatches.
                        let images = self
                            .batch_images
                            .get_mut(batch.0 as usize)
                            .and_then(Option::take)
                            .filter(|images| images.len() == r.lines.len())
                            .unwrap_or_default();
                        Ok(r.lines
                            .into_iter()
                            .enumerate()
                            .map(|(i, l)| {
                                let outcome = match l.outcome {
                                    LineOutcome::Ok { usage, tags } => {
                                        if let Some(&img) = images.get(i) {
                                            contents.push((img, tags));
                                        }
                                        Ok(usage)
                                    }
                                    LineOutcome::Err { code, .. } => Err(code.to_owned()),
                                };
                                LineResult {
                                    custom_id: l.custom_id,
                                    outcome,
                                }
                            })
                            .collect())
                    }
                    None => Err(UpstreamError {
                        status: Some(404),
                        message: format!("no results for {batch_id}"),
                    }),
                };
                self.push(
                    now + self.api_call,
                    Ev::Results {
                        batch,
                        result,
                        contents,
                    },
                );
            }
        }
    }

    /// The tags of `image`'s URL: worked out the first time a request or batch line for it
    /// goes out, from its upload's URL prefix hash, and kept for the tag check and retries.
    #[inline(always)]
    fn image_tags(&mut self, image: ImageId) -> Tags {
        let g = self.global(image);
        if let Some(t) = g.and_then(|g| self.images.get(g)).and_then(|r| r.expected) {
            return t;
        }
        let u = &mut self.uploads[image.upload.0 as usize];
        let tags = Tags::of_url_hash(u.image_url_hash(image.index));
        if let Some(rec) = g.and_then(|g| self.images.get_mut(g)) {
            rec.expected = Some(tags);
        }
        tags
    }

    /// The batch line for `image`. Structured lines carry the tags the model answers with.
    fn batch_line(&mut self, image: ImageId) -> BatchLine {
        let spec = self.engine.image(image).map_or(self.spec, |i| i.spec);
        let tags = self.image_tags(image);
        let (usage, _) = self.up.answer(
            self.model,
            self.max_tokens,
            self.text_chars,
            std::slice::from_ref(&spec),
            tags,
        );
        let queue_tokens = self.engine.image_tokens(image).map_or(0, |t| t.0);
        BatchLine {
            custom_id: self.custom_id.custom_id(image).into(),
            tags,
            charge_tokens: queue_tokens,
            usage,
        }
    }

    fn count_batch_end(&mut self, batch: BatchRef, state: &BatchState) {
        let i = batch.0 as usize;
        if self.batch_seen.len() <= i {
            self.batch_seen.resize(i + 1, false);
        }
        let terminal = matches!(
            state,
            BatchState::Failed { .. }
                | BatchState::Completed
                | BatchState::Expired
                | BatchState::Cancelled
        );
        if !terminal || self.batch_seen[i] {
            return;
        }
        self.batch_seen[i] = true;
        match state {
            BatchState::Failed { code } => {
                self.upstream.batches_failed += 1;
                if code == "token_limit_exceeded" {
                    self.upstream.batches_token_limit += 1;
                }
            }
            BatchState::Expired => self.upstream.batches_expired += 1,
            _ => {}
        }
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Realtime {
                request,
                image,
                outcome,
                content,
            } => {
                if content.is_some() {
                    if let Some(g) = self.global(image) {
                        self.images[g].delivered = content;
                    }
                }
                self.engine.handle_realtime_response(now, request, outcome);
            }
            Ev::FileUploaded { batch, result } => {
                self.engine.handle_file_uploaded(now, batch, result);
            }
            Ev::BatchCreated { batch, result } => {
                self.engine.handle_batch_created(now, batch, result);
            }
            Ev::Status { batch, result } => self.engine.handle_batch_status(now, batch, result),
            Ev::Results {
                batch,
                result,
                contents,
            } => {
                for (img, tags) in contents {
                    if let Some(g) = self.global(img) {
                        if let Some(rec) = self.images.get_mut(g) {
                            rec.delivered = Some(tags);
                        }
                    }
                }
                self.engine.handle_batch_results(now, batch, result);
            }
        }
    }

    fn record(&mut self, event: Event) {
        match event {
            Event::ImageTagged {
                image,
                at,
                channel,
                usage,
            } => {
                // This variant owns nothing to free, but dropping an `Event` is an out-of-line
                // call to its drop glue (one per tagged image); forgetting it skips the call.
                std::mem::forget(event);
                let Some(g) = self.global(image).filter(|g| *g < self.images.len()) else {
                    return;
                };
                if self.images[g].state != 0 {
                    self.verification.duplicate_terminal += 1;
                    return;
                }
                self.images[g].state = 1;
                self.last_terminal = self.last_terminal.max(at);
                self.counts.tagged += 1;
                // Cost is linear in tokens, so it is worked out once per channel from the token
                // sums when the run ends, not summed image by image.
                match channel {
                    Channel::Realtime => {
                        self.counts.tagged_realtime += 1;
                        self.tokens.realtime_input += usage.input_tokens;
                        self.tokens.realtime_output += usage.output_tokens;
                    }
                    Channel::Batch => {
                        self.counts.tagged_batch += 1;
                        self.tokens.batch_input += usage.input_tokens;
                        self.tokens.batch_output += usage.output_tokens;
                    }
                }
                let u = &mut self.uploads[image.upload.0 as usize];
                let rec = self.images[g];
                if rec.delivered.is_none() || rec.delivered != rec.expected {
                    self.verification.tag_mismatches += 1;
                }
                let since = ms(at - u.start);
                if !u.first_tag {
                    u.first_tag = true;
                    let _ = self.h_first.record(since);
                }
                self.record_tagged(since);
            }
            Event::ImageFailed { image, at, reason } => {
                let Some(g) = self.global(image).filter(|g| *g < self.images.len()) else {
                    return;
                };
                if self.images[g].state != 0 {
                    self.verification.duplicate_terminal += 1;
                    return;
                }
                self.images[g].state = 2;
                self.last_terminal = self.last_terminal.max(at);
                self.counts.failed += 1;
                *self
                    .counts
                    .failures
                    .entry(reason.code().to_owned())
                    .or_default() += 1;
            }
            Event::UploadComplete { upload, at } => {
                // As for `ImageTagged`: nothing to free.
                std::mem::forget(event);
                if let Some(u) = self.uploads.get(upload.0 as usize) {
                    self.complete += 1;
                    let _ = self.h_complete.record(ms(at - u.start));
                }
            }
            Event::DownloadFailed { .. } | Event::Progress(_) => {}
        }
    }

    #[inline]
    fn record_tagged(&mut self, ms: u64) {
        let (value, count) = self.tagged_run;
        if count > 0 && value == ms {
            self.tagged_run.1 += 1;
            return;
        }
        self.flush_tagged();
        self.tagged_run = (ms, 1);
    }

    #[inline(never)]
    fn flush_tagged(&mut self) {
        let (value, count) = std::mem::take(&mut self.tagged_run);
        if count > 0 {
            // Auto-resize grows the histogram for any value, so recording cannot fail.
            let _ = self.h_tagged.record_n(value, count);
        }
    }

    /// The fastest answer the model can give any image of this run: the fastest base latency
    /// plus `latency_ms_per_output_token` times the fewest output tokens it answers any of them
    /// with. Output tokens follow each image's tags (capped at `max_tokens`) unless
    /// `upstream.output_tokens` fixes them, so the fewest is found over every image of every
    /// upload core accepted, each named and answered as [`Sim::act`] does; with no per-token
    /// latency, there is nothing to look up.
    fn fastest_request(&self) -> Duration {
        let cfg = self.up.config();
        let base = cfg.latency.min();
        if cfg.latency_ms_per_output_token <= 0.0 {
            return base;
        }
        let output_tokens = |tags| {
            let (usage, _) = self.up.answer(
                self.model,
                self.max_tokens,
                self.text_chars,
                std::slice::from_ref(&self.spec),
                tags,
            );
            usage.output_tokens
        };
        let fewest = self
            .uploads
            .iter()
            .flat_map(|u| (0..u.images).map(|i| Tags::of_url_hash(url_hash(u.url_hash, i))))
            .map(output_tokens)
            .min()
            .unwrap_or(0);
        // As the model adds it to each answer's latency.
        base + latency::ms_to_duration(cfg.latency_ms_per_output_token * fewest as f64)
    }

    fn finish(mut self) -> RunOutput {
        self.flush_tagged();
        let fastest_request = self.fastest_request();
        let s = &self.scenario.spec;
        let stats = self.engine.stats();
        let limits = s.account.resolve().ok();
        let first_arrival = self.arrivals.first().map_or(Time::ZERO, |a| a.at);
        let mut counts = self.counts;
        counts.pending = self.images.iter().filter(|r| r.state == 0).count() as u64;
        let pending = counts.pending;
        let end_of_work = if counts.pending > 0 {
            self.now.max(self.last_terminal)
        } else {
            self.last_terminal
        };
        let makespan_ms = ms(end_of_work - first_arrival);
        let bound = limits.as_ref().map(|l| {
            let mut rl = RateLimits::new(l.rpm, l.tpm);
            if let Some(rpd) = l.rpd {
                rl = rl.with_rpd(rpd);
            }
            let charge = self.up.charge(&ChatRequest {
                model: self.model,
                max_tokens: self.max_tokens,
                text_chars: self.text_chars,
                images: std::slice::from_ref(&self.spec),
                image_url: "",
                tags: None,
            });
            bound_time(&self.arrivals, charge, rl).map(|t| t + fastest_request)
        });
        let bound_ms = match bound {
            Some(Some(t)) => ms(t - first_arrival),
            _ => 0,
        };
        let bound_ratio = if bound_ms > 0 {
            round(makespan_ms as f64 / bound_ms as f64, 1e4)
        } else {
            0.0
        };
        let mut upstream = self.upstream;
        upstream.retries = stats.retries;
        upstream.fallbacks_to_batch = stats.fallbacks_to_batch;
        upstream.batches_overdue = stats.batches_overdue;
        let mut tokens = self.tokens;
        let cost = |channel, input_tokens, output_tokens| {
            s.prices.cost_usd(
                self.model,
                channel,
                Usage {
                    input_tokens,
                    output_tokens,
                },
            )
        };
        let cost_realtime = cost(
            Channel::Realtime,
            tokens.realtime_input,
            tokens.realtime_output,
        );
        let cost_batch = cost(Channel::Batch, tokens.batch_input, tokens.batch_output);
        tokens.billed_input = tokens.realtime_input + tokens.batch_input;
        tokens.billed_output = tokens.realtime_output + tokens.batch_output;
        let results = Results {
            schema: SCHEMA,
            scenario: s.name.clone(),
            policy: self.policy_name,
            seed: s.seed,
            sets: self.scenario.sets().iter().map(|a| a.raw.clone()).collect(),
            account: AccountSummary {
                model: s.account.model.as_str().to_owned(),
                tier: s.account.tier,
                rpm: limits.map_or(0, |l| l.rpm.get()),
                tpm: limits.map_or(0, |l| l.tpm.get()),
                rpd: limits.and_then(|l| l.rpd.map(|v| v.get())),
                batch_queue_tokens: limits.map_or(0, |l| l.batch_queue_tokens.get()),
            },
            images: counts,
            uploads: UploadCounts {
                total: self.arrivals.len() as u64,
                started: self.uploads.len() as u64,
                complete: self.complete,
            },
            latency_ms: Latencies {
                image_tagged: Summary::of(&self.h_tagged),
                upload_first_tag: Summary::of(&self.h_first),
                upload_complete: Summary::of(&self.h_complete),
            },
            upstream,
            tokens,
            cost_usd: round(cost_realtime + cost_batch, 1e6),
            cost_usd_realtime: round(cost_realtime, 1e6),
            cost_usd_batch: round(cost_batch, 1e6),
            makespan_ms,
            bound_ms,
            bound_ratio,
            verification: self.verification,
            sim: SimInfo {
                events: self.events,
                end_ms: self.now.as_millis(),
                max_duration_ms: ms(secs(s.sim.max_duration_s)),
                hit_max_duration: self.hit_bound && pending > 0,
            },
        };
        RunOutput {
            results,
            image_tagged: self.h_tagged,
            upload_first_tag: self.h_first,
            upload_complete: self.h_complete,
        }
    }
}

/// Another client's batch holding `tokens` of the organization's queue from t = 0: lines of
/// about one low-detail image each, so its timeline is that of a real batch of that size.
fn submit_foreign_batch(up: &mut Upstream, org: OrgId, tokens: u64) -> Result<(), String> {
    const PER_LINE: u64 = 2_850;
    let n = tokens.div_ceil(PER_LINE).min(50_000);
    let lines = (0..n)
        .map(|i| BatchLine {
            custom_id: format!("foreign-{i}").into(),
            tags: Tags::of(&format!("https://img.tagstorm.test/foreign/{i}.jpg")),
            charge_tokens: tokens / n + u64::from(i < tokens % n),
            usage: tagstorm_core::tokens::Usage::default(),
        })
        .collect();
    // Unscripted: `[batch] batch_outcomes` is about the batches core makes.
    up.submit_unscripted_batch(Time::ZERO, org, lines)
        .map(|_| ())
        .map_err(|e| format!("sim.foreign_batch_tokens: {}", e.message))
}

/// The last admission time of every image of `arrivals` through an ideal pacer on full-then-
/// refilling RPM/TPM (and RPD) buckets, each image admitted as early as possible in arrival
/// order (optimal for one bucket pair, since every image costs the same). `None` if one image
/// can never be admitted, or there are no images.
pub fn bound_time(arrivals: &[Arrival], charge: Charge, mut limits: RateLimits) -> Option<Time> {
    let mut t = Time::ZERO;
    let mut last = None;
    for a in arrivals {
        t = t.max(a.at);
        if a.images > 0 {
            // Each image as early as the limits admit it, one after another.
            t = limits.pace(t, u64::from(a.images), charge)?;
            last = Some(t);
        }
    }
    last
}

/// Failure counts in a stable order (for tests and reports).
pub fn failures_line(f: &BTreeMap<String, u64>) -> String {
    f.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagstorm_core::UploadId;

    /// Images whose ids reuse a buffer's prefix, cut it short, grow a digit, and change upload.
    const CASES: [(u32, u32); 7] = [
        (0, 0),
        (0, 9),
        (0, 10),
        (3, 7),
        (3, 123_456),
        (0, 1),
        (12, 0),
    ];

    fn image(upload: u32, index: u32) -> ImageId {
        ImageId {
            upload: UploadId(upload),
            index,
        }
    }

    #[test]
    fn url_buffer_and_expected_tags_agree_with_the_model() {
        let mut url = PrefixBuf::default();
        for (upload, index) in CASES {
            let image = image(upload, index);
            let expect = format!("https://img.tagstorm.test/u{upload}/i{index}.jpg");
            assert_eq!(url.url(image), expect);
            let mut prefix = String::new();
            push_url_prefix(&mut prefix, upload);
            let hash = tags::fnv1a64(prefix.as_bytes());
            assert_eq!(url_prefix_hash(upload), hash);
            assert_eq!(url_hash(hash, index), tags::fnv1a64(expect.as_bytes()));
            assert_eq!(Tags::of_url_hash(url_hash(hash, index)), Tags::of(&expect));
        }
    }

    #[test]
    fn custom_ids_are_cores() {
        let mut ids = PrefixBuf::default();
        for (upload, index) in CASES.into_iter().chain([(u32::MAX, u32::MAX)]) {
            let image = image(upload, index);
            assert_eq!(ids.custom_id(image), image.custom_id().as_str());
        }
    }

    #[test]
    fn an_uploads_cached_digits_hash_as_the_whole_url() {
        let prefix = url_prefix_hash(7);
        let mut u = UploadRec {
            start: Time::ZERO,
            url_hash: prefix,
            tens: 0,
            tens_hash: prefix,
            base: 0,
            images: 0,
            first_tag: false,
        };
        // In order, backwards, jumping across digit counts, and repeated.
        let order = (0..1_050).chain((0..1_050).rev()).chain([
            5,
            123_456,
            9,
            10,
            99,
            100,
            7,
            7,
            4_294_967_295,
            0,
            429_496_729,
        ]);
        for index in order {
            assert_eq!(u.image_url_hash(index), url_hash(prefix, index), "{index}");
        }
    }
}
