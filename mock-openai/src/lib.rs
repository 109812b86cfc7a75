//! A behaviour model of the OpenAI API: rate limits, 429 bodies and headers, latency, faults,
//! Files and the Batch API lifecycle. Sans-IO — every call takes `now: Time`, nothing reads a
//! clock or touches the network — so the simulator drives it in virtual time and the HTTP
//! server ([`server`], hyper and tokio, the only module that does I/O) serves it on the real
//! OpenAI paths.
//!
//! Principal types:
//! - [`Upstream`]: the modelled service. [`Upstream::chat`] for realtime calls,
//!   [`Upstream::submit_batch`] / [`Upstream::batch_results`] for structured batches (the
//!   simulator's path), [`Upstream::upload_file`] / [`Upstream::create_batch`] /
//!   [`Upstream::file_content`] for the JSONL path, plus retrieve/list/cancel. Rate limits and
//!   the enqueued-token queue count per organization and model, as OpenAI's do.
//! - [`config::AccountConfig`] and [`config::UpstreamConfig`]: the `[account]` and
//!   `[upstream]` sections of a scenario file.
//! - [`chat::ChatOutcome`] and [`batch::Batch`]: what a call does, as values; error bodies
//!   come from [`error::ApiError`], headers from [`headers::RateLimitHeaders`] and
//!   [`headers::format_duration`].
//! - [`request::parse_request_checked`]: a chat-completions body checked as OpenAI checks
//!   it, each failure the error the realtime endpoint answers.
//! - [`tags::Tags::of`]: the tags of an image, a pure function of its URL.
//!
//! All randomness comes from the seed given to [`Upstream::new`]; the same seed and the same
//! sequence of calls give the same outputs.
//!
//! ```
//! use mock_openai::Upstream;
//! use mock_openai::chat::{ChatOutcome, ChatRequest};
//! use mock_openai::config::{AccountConfig, UpstreamConfig};
//! use tagstorm_core::Time;
//! use tagstorm_core::tokens::{Detail, ImageSpec, Model};
//!
//! let upstream = UpstreamConfig::from_toml("server_error_rate = 0.0").unwrap();
//! let mut api = Upstream::new(upstream, 42).unwrap();
//! let org = api.add_org(&AccountConfig::tier(Model::Gpt4oMini, 1)).unwrap();
//! let image = [ImageSpec { width_px: 1024, height_px: 768, detail: Detail::Low }];
//! let req = ChatRequest {
//!     model: Model::Gpt4oMini,
//!     max_tokens: 300,
//!     text_chars: 40,
//!     images: &image,
//!     image_url: "https://img.example/cat.jpg",
//!     tags: None,
//! };
//! match api.chat(Time::ZERO, org, &req) {
//!     ChatOutcome::Ok(ok) => {
//!         assert!(mock_openai::tags::content_matches(req.image_url, &ok.content()));
//!         assert_eq!(ok.headers.remaining_requests, 499);
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```

pub mod batch;
pub mod chat;
pub mod config;
pub mod error;
pub mod fault;
pub mod files;
pub mod headers;
pub mod ids;
pub mod jsonl;
pub mod latency;
pub mod org;
pub mod request;
pub mod server;
pub mod tags;
pub mod upstream;

pub use batch::{Batch, BatchLine, BatchResults, BatchStatus, LineOutcome, LineResult};
pub use chat::{ChatOutcome, ChatRequest};
pub use config::{AccountConfig, BatchConfig, ConfigError, UpstreamConfig};
pub use error::ApiError;
pub use org::OrgId;
pub use upstream::Upstream;
