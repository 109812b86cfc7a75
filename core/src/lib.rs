//! Sans-IO decision logic for tagging images with the OpenAI API.
//!
//! `tagstorm-core` decides, for every uploaded image, whether it goes to the realtime Chat
//! Completions API or the Batch API, when each request may be sent under the account's and the
//! workspace's limits, how batches are split, what is retried, and where every image stands. It
//! never reads a clock, sleeps, or touches the network: time comes in as `now`, and what to do
//! comes out as values. The simulator, the gateway and the tests drive the same engine.
//!
//! The principal types:
//!
//! - [`Engine`]: the state machine. Inputs go in through `handle_*(now, …)`; [`Action`]s come out
//!   of [`Engine::poll_action`], [`Event`]s out of [`Engine::poll_event`], and the next wake-up
//!   out of [`Engine::poll_timeout`].
//! - [`Config`] and [`Policy`]: what the engine runs, with the presets `seed-current`,
//!   `seed-proposed` and `tagstorm`.
//! - [`limit::RateLimits`] and [`limit::Bucket`]: continuously refilling RPM/TPM buckets with
//!   all-or-nothing checks across scopes and rejections that say when to retry.
//! - [`split::split`]: batch splitting within every Batch API cap.
//!
//! # Example
//!
//! A driver with a fake upstream that answers every request 2 s later:
//!
//! ```
//! use std::time::Duration;
//! use tagstorm_core::{
//!     AccountLimits, Action, Config, Engine, Event, ImageInput, Policy, RealtimeOutcome, Time,
//!     Upload, WorkspaceId,
//!     tokens::{Detail, ImageSpec, Model, Usage},
//! };
//!
//! let account = AccountLimits::tier(Model::Gpt4oMini, 1).unwrap();
//! let mut engine = Engine::new(Config::new(Policy::tagstorm(), account)).unwrap();
//! let image = ImageInput {
//!     spec: ImageSpec { width_px: 1024, height_px: 768, detail: Detail::Low },
//!     url_len: 40,
//! };
//! let mut now = Time::ZERO;
//! engine
//!     .handle_upload(now, Upload { workspace: WorkspaceId(1), images: vec![image; 15], deadline: None })
//!     .unwrap();
//!
//! let mut in_flight = Vec::new(); // (answer at, request)
//! let mut tagged = 0;
//! while !engine.is_idle() {
//!     while let Some(action) = engine.poll_action() {
//!         if let Action::SendRealtime { request, .. } = action {
//!             in_flight.push((now + Duration::from_secs(2), request));
//!         }
//!     }
//!     while let Some(event) = engine.poll_event() {
//!         if let Event::ImageTagged { .. } = event {
//!             tagged += 1;
//!         }
//!     }
//!     // Jump to the next thing that happens: an answer or the engine's own timer.
//!     in_flight.sort();
//!     let next_answer = in_flight.first().map(|(t, _)| *t);
//!     let next = [next_answer, engine.poll_timeout()].into_iter().flatten().min();
//!     let Some(next) = next else { break };
//!     now = next;
//!     if next_answer == Some(now) {
//!         let (_, request) = in_flight.remove(0);
//!         let usage = Usage { input_tokens: 2_850, output_tokens: 40 };
//!         engine.handle_realtime_response(now, request, RealtimeOutcome::Ok { usage, observed: Default::default() });
//!     } else {
//!         engine.handle_timeout(now);
//!     }
//! }
//! while let Some(event) = engine.poll_event() {
//!     if let Event::ImageTagged { .. } = event {
//!         tagged += 1;
//!     }
//! }
//! assert_eq!(tagged, 15);
//! ```

pub mod account;
pub mod config;
pub mod cost;
pub mod engine;
pub mod ids;
pub mod limit;
pub mod retry;
pub mod split;
pub mod state;
pub mod time;
pub mod tokens;

pub use account::AccountLimits;
/// The string type of batch `custom_id`s ([`engine::LineResult`], [`ImageId::custom_id`]).
pub use compact_str::CompactString;
pub use config::{Config, Policy, PolicyError, RequestShape};
pub use engine::{
    Action, BatchState, BatchStatus, Engine, Event, ImageInput, LineResult, RealtimeOutcome, Stats,
    Upload, UploadError, UpstreamError,
};
pub use ids::{BatchRef, ImageId, RequestId, UploadId, WorkspaceId};
pub use state::{FailReason, Progress, Stage};
pub use time::Time;
