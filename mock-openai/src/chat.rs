//! Realtime chat completions: admission against the organization's RPM/TPM/RPD buckets,
//! scripted and random faults, latency, usage and the tags content.
//!
//! Accounting choices (facts §3): a request is charged `max(max_tokens, estimated input)`
//! tokens and one request when admitted; a 500, 503 or timeout has been admitted and keeps its
//! charge ("failed requests count"); a 429 consumes nothing, so a client retrying at the
//! announced time is admitted.

use std::time::Duration;

use tagstorm_core::Time;
use tagstorm_core::limit::{Charge, Denied, Dimension, RateLimits};
use tagstorm_core::tokens::{
    ImageSpec, Model, Usage, image_tokens, rate_limit_charge, text_tokens,
};

use crate::error::{ApiError, LimitDimension};
use crate::fault::{FaultKind, random_fault, scripted};
use crate::headers::RateLimitHeaders;
use crate::latency::ms_to_duration;
use crate::org::OrgId;
use crate::tags::Tags;
use crate::upstream::Upstream;

/// One realtime request, borrowed from the caller (the simulator builds millions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatRequest<'a> {
    /// The requested model.
    pub model: Model,
    /// `max_tokens`, in tokens; 0 when the request sets none.
    pub max_tokens: u32,
    /// Characters of text in the messages.
    pub text_chars: u64,
    /// The images in the messages.
    pub images: &'a [ImageSpec],
    /// The URL the tags are derived from; may be empty when `tags` is given.
    pub image_url: &'a str,
    /// [`Tags::of`] `image_url`, when the caller has them already: the simulator works them out
    /// once per image, from a hash of the URL it extends from the upload's prefix, and checks
    /// the answer against them. `None`, and the model derives them from the URL. With tags
    /// given the model never reads the URL, so a caller may leave it empty (the simulator does
    /// in release builds); debug builds check given tags against a non-empty URL.
    pub tags: Option<Tags>,
}

impl ChatRequest<'_> {
    /// The tags the model sees in this request's image.
    pub fn tags(&self) -> Tags {
        match self.tags {
            Some(t) => {
                debug_assert!(
                    self.image_url.is_empty() || t == Tags::of(self.image_url),
                    "the given tags are not those of {}",
                    self.image_url
                );
                t
            }
            None => Tags::of(self.image_url),
        }
    }
}

/// Why generation stopped (facts §1 `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The whole answer was produced.
    Stop,
    /// `max_tokens` cut it short.
    Length,
}

impl FinishReason {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A successful call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatOk {
    /// Time from request to response.
    pub latency: Duration,
    /// Billing usage: input = text + image billing tokens, output ≤ `max_tokens`.
    pub usage: Usage,
    /// The image's tags; [`ChatOk::content`] renders the assistant message from them.
    pub tags: Tags,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The `x-ratelimit-*` values after this request.
    pub headers: RateLimitHeaders,
}

impl ChatOk {
    /// The assistant message: `{"tags":[…]}`, cut to `max_tokens` × 4 bytes when
    /// `finish_reason` is `length`.
    pub fn content(&self) -> String {
        content(self.tags, self.usage, self.finish_reason)
    }
}

/// The assistant message for `tags`: whole, or cut to 4 bytes a token when generation stopped
/// at `max_tokens`.
pub fn content(tags: Tags, usage: Usage, finish: FinishReason) -> String {
    match finish {
        FinishReason::Stop => tags.json_truncated(usize::MAX),
        FinishReason::Length => tags.json_truncated(
            usize::try_from(usage.output_tokens.saturating_mul(4)).unwrap_or(usize::MAX),
        ),
    }
}

/// A 429 from a per-minute or per-day limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    /// Which limit denied.
    pub dimension: LimitDimension,
    /// That limit, in requests or tokens.
    pub limit: u64,
    /// Units of it in use at `now`.
    pub used: u64,
    /// Units the request asked for.
    pub requested: u64,
    /// When the same request would be admitted (the "Please try again in" value).
    pub retry_after: Duration,
    /// The `x-ratelimit-*` values at `now`.
    pub headers: RateLimitHeaders,
    /// Whether a scripted fault forced it (the buckets had room).
    pub scripted: bool,
}

/// What a realtime call does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatOutcome {
    /// 200 after `latency`.
    Ok(ChatOk),
    /// 429, immediately.
    RateLimited(RateLimited),
    /// 429 "Request too large": the charge exceeds the TPM capacity, so no wait helps.
    RequestTooLarge {
        /// The TPM limit.
        limit: u64,
        /// The request's charge, in tokens.
        requested: u64,
    },
    /// 500 or 503 after `after`.
    ServerError {
        /// 500 or 503.
        status: u16,
        /// Time until the error arrives.
        after: Duration,
    },
    /// No answer; the client gives up after `after`.
    Timeout {
        /// `timeout_after_ms`.
        after: Duration,
    },
    /// Refused before admission (unknown organization: 401).
    Rejected(ApiError),
}

impl ChatOutcome {
    /// The HTTP status, or `None` for a timeout.
    pub fn status(&self) -> Option<u16> {
        match self {
            ChatOutcome::Ok(_) => Some(200),
            ChatOutcome::RateLimited(_) | ChatOutcome::RequestTooLarge { .. } => Some(429),
            ChatOutcome::ServerError { status, .. } => Some(*status),
            ChatOutcome::Timeout { .. } => None,
            ChatOutcome::Rejected(e) => Some(e.status),
        }
    }

    /// The error body to send, for every outcome but `Ok` and `Timeout`. `org` is the
    /// organization's name and `request_id` the response's `x-request-id`.
    pub fn api_error(&self, model: Model, org: &str, request_id: &str) -> Option<ApiError> {
        match self {
            ChatOutcome::Ok(_) | ChatOutcome::Timeout { .. } => None,
            ChatOutcome::RateLimited(r) => Some(ApiError::rate_limited(
                model,
                org,
                r.dimension,
                r.limit,
                r.used,
                r.requested,
                r.retry_after,
            )),
            ChatOutcome::RequestTooLarge { limit, requested } => {
                Some(ApiError::request_too_large(model, org, *limit, *requested))
            }
            ChatOutcome::ServerError { status: 503, .. } => Some(ApiError::overloaded(request_id)),
            ChatOutcome::ServerError { .. } => Some(ApiError::server_error()),
            ChatOutcome::Rejected(e) => Some(e.clone()),
        }
    }
}

fn headers(rate: &RateLimits, now: Time, resets: bool) -> RateLimitHeaders {
    let r = rate.requests();
    let t = rate.tokens();
    RateLimitHeaders {
        limit_requests: r.limit(),
        limit_tokens: t.limit(),
        remaining_requests: r.remaining(now),
        remaining_tokens: t.remaining(now),
        reset_requests: if resets {
            r.time_until_full(now)
        } else {
            Duration::ZERO
        },
        reset_tokens: if resets {
            t.time_until_full(now)
        } else {
            Duration::ZERO
        },
    }
}

impl Upstream {
    /// Tokens one image is charged against TPM and the batch queue: `image_charge_tokens` if
    /// configured, else its billing tokens.
    pub fn image_charge(&self, model: Model, image: &ImageSpec) -> u64 {
        self.config
            .image_charge_tokens
            .unwrap_or_else(|| image_tokens(model, image))
    }

    /// The estimated input tokens of a request (text estimate + image charges).
    pub fn input_estimate(&self, model: Model, text_chars: u64, images: &[ImageSpec]) -> u64 {
        let text = text_tokens(usize::try_from(text_chars).unwrap_or(usize::MAX));
        images.iter().fold(text, |acc, img| {
            acc.saturating_add(self.image_charge(model, img))
        })
    }

    /// What a request is charged against the limits (SPEC §5).
    pub fn charge(&self, req: &ChatRequest<'_>) -> Charge {
        let estimate = self.input_estimate(req.model, req.text_chars, req.images);
        Charge {
            requests: 1,
            tokens: rate_limit_charge(estimate, u64::from(req.max_tokens)),
        }
    }

    /// The billing usage of a successful answer carrying `tags` (the image's, [`Tags::of`] its
    /// URL), and whether `max_tokens` cut it short ([`content`] renders the message).
    ///
    /// Inline: out of line, the call spilled its seven arguments and set up the registers of
    /// the high-detail tile arithmetic before looking at the image (117 instructions a call,
    /// for every realtime answer and batch line); inlined into the simulator's loop, the usual
    /// low-detail image skips that.
    #[inline]
    pub fn answer(
        &self,
        model: Model,
        max_tokens: u32,
        text_chars: u64,
        images: &[ImageSpec],
        tags: Tags,
    ) -> (Usage, FinishReason) {
        let text = text_tokens(usize::try_from(text_chars).unwrap_or(usize::MAX));
        let input = images.iter().fold(text, |acc, img| {
            acc.saturating_add(image_tokens(model, img))
        });
        let natural = self
            .config
            .output_tokens
            .map_or_else(|| text_tokens(tags.json_len()), u64::from);
        let (output, finish) = if max_tokens > 0 && natural > u64::from(max_tokens) {
            (u64::from(max_tokens), FinishReason::Length)
        } else {
            (natural, FinishReason::Stop)
        };
        (
            Usage {
                input_tokens: input,
                output_tokens: output,
            },
            finish,
        )
    }

    /// Handles one realtime call at `now` for `org`. See the module docs for what is charged.
    pub fn chat(&mut self, now: Time, org: OrgId, req: &ChatRequest<'_>) -> ChatOutcome {
        let now = self.advance(now);
        let charge = self.charge(req);
        let resets = self.reset_headers;
        let Some(o) = self.orgs.get_mut(org.0 as usize) else {
            return ChatOutcome::Rejected(ApiError::invalid_api_key("sk-****"));
        };
        let n = o.requests_seen;
        o.requests_seen = n.saturating_add(1);
        let script = scripted(&self.config.faults, n);
        // Limits are per organization and model.
        let rate = &mut o.model_mut(req.model).rate;
        if script == Some(FaultKind::RateLimited) {
            let bucket = rate.requests();
            let interval =
                Duration::from_secs(60) / u32::try_from(bucket.limit()).unwrap_or(u32::MAX).max(1);
            return ChatOutcome::RateLimited(RateLimited {
                dimension: LimitDimension::Requests,
                limit: bucket.limit(),
                used: bucket.limit().saturating_sub(bucket.remaining(now)),
                requested: 1,
                retry_after: bucket.time_until(now, 1).unwrap_or(interval).max(interval),
                headers: headers(rate, now, resets),
                scripted: true,
            });
        }
        if let Err(denied) = rate.check(now, charge) {
            let dimension = match denied.dimension() {
                Dimension::Tokens => LimitDimension::Tokens,
                Dimension::RequestsPerDay => LimitDimension::RequestsPerDay,
                _ => LimitDimension::Requests,
            };
            let bucket = match dimension {
                LimitDimension::Tokens => rate.tokens(),
                LimitDimension::RequestsPerDay => rate.rpd().unwrap_or(rate.requests()),
                LimitDimension::Requests => rate.requests(),
            };
            let requested = if dimension == LimitDimension::Tokens {
                charge.tokens
            } else {
                charge.requests
            };
            return match denied {
                Denied::Never { .. } if dimension == LimitDimension::Tokens => {
                    ChatOutcome::RequestTooLarge {
                        limit: bucket.limit(),
                        requested,
                    }
                }
                _ => ChatOutcome::RateLimited(RateLimited {
                    dimension,
                    limit: bucket.limit(),
                    used: bucket.limit().saturating_sub(bucket.remaining(now)),
                    requested,
                    retry_after: denied.retry_after(now).unwrap_or(Duration::ZERO),
                    headers: headers(rate, now, resets),
                    scripted: false,
                }),
            };
        }
        let hdrs = headers(rate, now, resets);
        // Both draws happen for every admitted request, so a script or a zero rate does not
        // shift the random stream of later requests.
        let base = self.latency.sample(&mut self.rng_chat);
        let random = random_fault(&self.config, &mut self.rng_chat);
        let fault = match script {
            Some(FaultKind::Ok) => None,
            Some(f) => Some(f),
            None => random,
        };
        match fault {
            Some(FaultKind::ServerError) => ChatOutcome::ServerError {
                status: 500,
                after: base,
            },
            Some(FaultKind::Overloaded) => ChatOutcome::ServerError {
                status: 503,
                after: base,
            },
            Some(FaultKind::Timeout) => ChatOutcome::Timeout {
                after: Duration::from_millis(self.config.timeout_after_ms),
            },
            Some(FaultKind::Ok | FaultKind::RateLimited) | None => {
                let tags = req.tags();
                let (usage, finish_reason) =
                    self.answer(req.model, req.max_tokens, req.text_chars, req.images, tags);
                // With no time per output token (the default) the answer takes the sampled
                // latency as it is: the product would be zero, and converting it to a
                // `Duration` and adding that cost about 13 instructions a request (7.5 M on
                // the million-image day).
                let per_token = self.config.latency_ms_per_output_token;
                let latency = if per_token > 0.0 {
                    base + ms_to_duration(per_token * usage.output_tokens as f64)
                } else {
                    base
                };
                ChatOutcome::Ok(ChatOk {
                    latency,
                    usage,
                    tags,
                    finish_reason,
                    headers: hdrs,
                })
            }
        }
    }
}
