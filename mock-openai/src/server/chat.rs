//! `POST /v1/chat/completions`: validates the body the way OpenAI does (400/404 bodies that
//! name the parameter: a fast scanner for the common shape, else [`crate::request`]'s full
//! validator), asks the model, and answers per its [`ChatOutcome`] — 200 with
//! `x-ratelimit-*` after the modelled latency (slept outside the lock), 429 with the exact body
//! and `retry-after`, 500/503 after their delay, a timeout hold, or a transport fault.

use std::time::Duration;

use bytes::Bytes;
use hyper::Request;
use hyper::body::Incoming;
use tagstorm_core::tokens::{Model, Usage};
use tokio::sync::watch;

use crate::chat::{ChatOutcome, ChatRequest, FinishReason};
use crate::error::{ApiError, LimitDimension};
use crate::headers::RateLimitHeaders;
use crate::jsonl::{self, ChatBody};
use crate::latency::ms_to_duration;
pub use crate::request::parse_request_checked;
use crate::server::config::TransportFault;
use crate::server::http::{Reply, read_body};
use crate::server::{Delivery, OrgEntry, State};
use crate::tags::Tags;

/// Parses and validates a chat-completions request body. Every failure is an OpenAI error
/// (400 naming the parameter; 404 `model_not_found`); never panics, whatever the bytes.
pub fn parse_request(bytes: &[u8]) -> Result<ChatBody, ApiError> {
    match fast::parse(bytes) {
        Some(body) => Ok(body),
        None => parse_request_checked(bytes),
    }
}

/// The common request shape, read straight from the body bytes by a small hand-written scanner:
/// no `Value`, no serde visitors, no copies but the first image's URL. It accepts a strict
/// subset of what [`parse_request_checked`] accepts and yields the same [`ChatBody`]; anything
/// else (an escaped string, a `null`, an optional or repeated key, a number that is not a plain
/// integer, an invalid value) returns `None`, and the full validator answers, with OpenAI's
/// exact error if there is one. Property tests hold the two together.
///
/// Why not serde: with `serde_json` and derived structs this parse cost about 7,600 instructions
/// for the benchmark body, and the scanner about 4,000 (callgrind, `benches/mock_callgrind.sh`;
/// BENCHMARKS.md), a tenth of the server's whole per-request cost.
pub mod fast {
    use smallvec::SmallVec;
    use tagstorm_core::tokens::{Detail, ImageSpec, Model};

    use crate::jsonl::{ChatBody, MAX_OUTPUT_TOKENS, image_spec_from_url};
    use crate::request::ROLES;

    /// A position in the body. Every method returns `None` on anything outside the subset.
    struct Scan<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Scan<'a> {
        /// The next byte after JSON whitespace, not consumed.
        fn peek(&mut self) -> Option<u8> {
            while let Some(&b) = self.bytes.get(self.at) {
                if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                    return Some(b);
                }
                self.at += 1;
            }
            None
        }

        /// Consumes `b` after whitespace.
        fn eat(&mut self, b: u8) -> Option<()> {
            (self.peek()? == b).then(|| self.at += 1)
        }

        /// A string without escapes, as bytes: only compared against ASCII constants, so bytes
        /// that are not UTF-8 can only fail the comparison.
        fn raw_str(&mut self) -> Option<&'a [u8]> {
            self.eat(b'"')?;
            let rest = self.bytes.get(self.at..)?;
            // JSON forbids raw control characters in strings; `\` starts an escape.
            let len = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            if rest[len] != b'"' {
                return None;
            }
            self.at += len + 1;
            Some(&rest[..len])
        }

        /// A string without escapes, as text.
        fn str(&mut self) -> Option<&'a str> {
            std::str::from_utf8(self.raw_str()?).ok()
        }

        /// A non-negative integer written plainly (no sign, fraction, exponent or leading
        /// zero), as `serde_json` reads it into a `u64`.
        fn integer(&mut self) -> Option<u64> {
            self.peek()?;
            let rest = self.bytes.get(self.at..)?;
            let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if len == 0 || (len > 1 && rest[0] == b'0') {
                return None;
            }
            let mut n = 0u64;
            for &d in &rest[..len] {
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            }
            self.at += len;
            // `60.0` or `6e1` is a number `serde_json` does not read as an integer.
            match self.peek()? {
                b',' | b'}' | b']' => Some(n),
                _ => None,
            }
        }

        /// An object: calls `field` with each key, positioned at its value. A key can only be
        /// recognised once per object; `field` refuses the repeat (`serde` does too).
        fn object(
            &mut self,
            mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
        ) -> Option<()> {
            self.eat(b'{')?;
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            loop {
                let key = self.raw_str()?;
                self.eat(b':')?;
                field(self, key)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        /// An array: calls `item` positioned at each element.
        fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
            self.eat(b'[')?;
            if self.peek()? == b']' {
                self.at += 1;
                return Some(());
            }
            loop {
                item(self)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b']' => {
                        self.at += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }
    }

    /// Sets `slot` once; a second value for the same key is refused.
    fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
        if slot.is_some() {
            return None;
        }
        *slot = Some(value?);
        Some(())
    }

    /// What the messages add up to.
    #[derive(Default)]
    struct Totals<'a> {
        text_chars: u64,
        images: Images,
        image_url: Option<&'a str>,
        messages: usize,
    }

    /// The images of a body: up to four in place (the common body has one), more on the heap.
    pub type Images = SmallVec<[ImageSpec; 4]>;

    /// A body read by [`parse_borrowed`]: the first image's URL borrowed from the body bytes and
    /// the images in place, so reading it allocates nothing for the common shape.
    #[derive(Clone, Debug)]
    pub struct Body<'a> {
        /// The body's model.
        pub model: Model,
        /// `max_tokens` (or `max_completion_tokens`); 0 when absent.
        pub max_tokens: u32,
        /// Characters of text content in the messages.
        pub text_chars: u64,
        /// Every image in the messages.
        pub images: Images,
        /// The first image's URL; empty if none.
        pub image_url: &'a str,
    }

    impl Body<'_> {
        /// The same body as an owned [`ChatBody`].
        pub fn to_owned(&self) -> ChatBody {
            ChatBody {
                model: self.model,
                max_tokens: self.max_tokens,
                text_chars: self.text_chars,
                images: self.images.as_slice().to_vec(),
                image_url: self.image_url.to_owned(),
            }
        }
    }

    fn count_text(totals: &mut Totals<'_>, text: &str) {
        totals.text_chars = totals
            .text_chars
            .saturating_add(text.chars().count() as u64);
    }

    /// `{"url": "…", "detail": "low"}`: a non-empty URL, and an optional detail that is one of
    /// `auto`, `low`, `high`.
    fn image<'a>(scan: &mut Scan<'a>, totals: &mut Totals<'a>) -> Option<()> {
        let mut url = None;
        let mut detail = None;
        scan.object(|scan, key| match key {
            b"url" => once(&mut url, scan.str().filter(|u| !u.is_empty())),
            b"detail" => once(
                &mut detail,
                match scan.raw_str()? {
                    b"auto" => Some(Detail::Auto),
                    b"low" => Some(Detail::Low),
                    b"high" => Some(Detail::High),
                    _ => None,
                },
            ),
            _ => None,
        })?;
        let url = url?;
        totals
            .images
            .push(image_spec_from_url(url, detail.unwrap_or(Detail::Auto)));
        totals.image_url.get_or_insert(url);
        Some(())
    }

    /// A content part: `{"type": "text", "text": "…"}` or `{"type": "image_url", "image_url":
    /// {…}}`, keys in any order.
    fn part<'a>(scan: &mut Scan<'a>, totals: &mut Totals<'a>) -> Option<()> {
        let mut kind = None;
        let mut text = None;
        let mut image_seen = None;
        scan.object(|scan, key| match key {
            b"type" => once(&mut kind, scan.raw_str()),
            b"text" => once(&mut text, scan.str()),
            b"image_url" => once(&mut image_seen, image(scan, totals)),
            _ => None,
        })?;
        match (kind?, text, image_seen) {
            (b"text", Some(t), None) => count_text(totals, t),
            (b"image_url", None, Some(())) => {}
            _ => return None,
        }
        Some(())
    }

    /// A message: `{"role": "user", "content": "…" or [parts]}`, keys in any order.
    fn message<'a>(scan: &mut Scan<'a>, totals: &mut Totals<'a>) -> Option<()> {
        let mut role = None;
        let mut content = None;
        scan.object(|scan, key| match key {
            b"role" => once(
                &mut role,
                scan.raw_str()
                    .filter(|r| ROLES.iter().any(|known| known.as_bytes() == *r)),
            ),
            b"content" => once(
                &mut content,
                match scan.peek()? {
                    b'"' => scan.str().map(|t| count_text(totals, t)),
                    b'[' => scan.array(|scan| part(scan, totals)),
                    _ => None,
                },
            ),
            _ => None,
        })?;
        role?;
        content?;
        totals.messages += 1;
        Some(())
    }

    /// The body, if it has the common shape and is valid; `None` sends it to the full validator.
    pub fn parse(bytes: &[u8]) -> Option<ChatBody> {
        parse_borrowed(bytes).map(|b| b.to_owned())
    }

    /// [`parse`] without copying: the body borrows from `bytes`.
    pub fn parse_borrowed(bytes: &[u8]) -> Option<Body<'_>> {
        let mut scan = Scan { bytes, at: 0 };
        let mut model = None;
        let mut messages = None;
        let mut max_tokens = None;
        let mut max_completion_tokens = None;
        let mut totals = Totals::default();
        scan.object(|scan, key| match key {
            b"model" => once(&mut model, scan.str().and_then(Model::from_name)),
            b"messages" => once(&mut messages, scan.array(|scan| message(scan, &mut totals))),
            b"max_tokens" => once(&mut max_tokens, scan.integer()),
            b"max_completion_tokens" => once(&mut max_completion_tokens, scan.integer()),
            _ => None,
        })?;
        // Nothing but whitespace may follow the body.
        if scan.peek().is_some() {
            return None;
        }
        messages?;
        if totals.messages == 0 {
            return None;
        }
        let max_tokens = match (max_tokens, max_completion_tokens) {
            (None, None) => 0,
            (Some(v), None) | (None, Some(v))
                if (1..=u64::from(MAX_OUTPUT_TOKENS)).contains(&v) =>
            {
                v
            }
            _ => return None,
        };
        Some(Body {
            model: model?,
            max_tokens: u32::try_from(max_tokens).ok()?,
            text_chars: totals.text_chars,
            images: totals.images,
            image_url: totals.image_url.unwrap_or(""),
        })
    }
}

/// What the six `x-ratelimit-*` headers of `h` say ([`Reply::with_limits`]): the counts, and
/// the resets converted to real time.
fn limits_of(state: &State, h: &RateLimitHeaders) -> ([u64; 4], [Duration; 2]) {
    (
        [
            h.limit_requests,
            h.limit_tokens,
            h.remaining_requests,
            h.remaining_tokens,
        ],
        [
            state.clock.to_real(h.reset_requests),
            state.clock.to_real(h.reset_tokens),
        ],
    )
}

/// Appends the assistant message of an answer to `out` as plain text: the tags' JSON, cut to
/// 4 bytes a token when generation stopped at `max_tokens` (what [`crate::chat::content`]
/// returns, without a `String` of its own).
fn write_content(out: &mut String, tags: Tags, usage: Usage, finish: FinishReason) {
    let start = out.len();
    tags.write_json(out);
    if finish == FinishReason::Length {
        let max = usize::try_from(usage.output_tokens.saturating_mul(4)).unwrap_or(usize::MAX);
        let end = start.saturating_add(max);
        // Tags JSON is ASCII, so every index is a character boundary.
        if end < out.len() && out.is_char_boundary(end) {
            out.truncate(end);
        }
    }
}

/// The `chat.completion` body answering request `rid` at Unix second `created`, with the
/// content written straight into the response buffer.
fn completion_body(
    state: &State,
    rid: &str,
    created: u64,
    model: Model,
    tags: Tags,
    usage: Usage,
    finish: FinishReason,
) -> Bytes {
    let id = state.completion_id(rid);
    let json = jsonl::ChatCompletion::new(id.as_str(), created, model, "", finish.as_str(), usage);
    let mut out = String::with_capacity(json.capacity(tags.json_len()));
    json.write_with_content(&mut out, |out| write_content(out, tags, usage, finish));
    Bytes::from(out)
}

fn dimension_label(d: LimitDimension) -> usize {
    match d {
        LimitDimension::Requests => 0,
        LimitDimension::Tokens => 1,
        LimitDimension::RequestsPerDay => 2,
    }
}

/// Serves one chat completion.
pub(crate) async fn create(
    state: &State,
    org: &OrgEntry,
    req: Request<Incoming>,
    rid: &str,
    shutdown: &watch::Receiver<bool>,
) -> Delivery {
    let bytes = match read_body(req, state.limits.chat, shutdown).await {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    // The common shape borrows from the body bytes; anything else goes through the full
    // validator, which owns what it returns.
    let (fast_body, checked_body);
    let request = match fast::parse_borrowed(&bytes) {
        Some(b) => {
            fast_body = b;
            ChatRequest {
                model: fast_body.model,
                max_tokens: fast_body.max_tokens,
                text_chars: fast_body.text_chars,
                images: fast_body.images.as_slice(),
                image_url: fast_body.image_url,
                tags: None,
            }
        }
        None => match parse_request_checked(&bytes) {
            Ok(b) => {
                checked_body = b;
                ChatRequest {
                    model: checked_body.model,
                    max_tokens: checked_body.max_tokens,
                    text_chars: checked_body.text_chars,
                    images: &checked_body.images,
                    image_url: &checked_body.image_url,
                    tags: None,
                }
            }
            Err(e) => return e.into(),
        },
    };
    if !state.enforce_limits {
        // The tags hash the URL outside the model's lock.
        let tags = request.tags();
        let (usage, finish) = state.lock().upstream.answer(
            request.model,
            request.max_tokens,
            request.text_chars,
            request.images,
            tags,
        );
        let created = state.clock.unix_now_s();
        let json = completion_body(state, rid, created, request.model, tags, usage, finish);
        return Reply::json(200, json).into();
    }
    // One reading of the clock for the model's time and the completion's `created`.
    let real_now = state.clock.real_elapsed();
    let now = state.clock.model_at(real_now);
    let (outcome, transport, slow_ms) = {
        let mut b = state.lock();
        let outcome = b.upstream.chat(now, org.org, &request);
        let transport = if matches!(outcome, ChatOutcome::Ok(_)) {
            b.next_transport_fault()
        } else {
            TransportFault::Ok
        };
        (outcome, transport, b.transport.slow_body_ms)
    };
    match outcome {
        ChatOutcome::Ok(ok) => {
            let json = completion_body(
                state,
                rid,
                state.clock.unix_at_s(real_now),
                request.model,
                ok.tags,
                ok.usage,
                ok.finish_reason,
            );
            let (counts, resets) = limits_of(state, &ok.headers);
            let reply = Reply::with_limits(200, "application/json", json, counts, resets);
            sleep(state.clock.to_real(ok.latency)).await;
            match transport {
                TransportFault::Ok => reply.into(),
                TransportFault::Reset => Delivery::Reset,
                TransportFault::SlowBody => {
                    Delivery::Slow(reply, state.clock.to_real(ms_to_duration(slow_ms)))
                }
            }
        }
        ChatOutcome::RateLimited(r) => {
            let retry = state.clock.to_real(r.retry_after);
            state.stats.rate_limited(dimension_label(r.dimension));
            let err = ApiError::rate_limited(
                request.model,
                &org.name,
                r.dimension,
                r.limit,
                r.used,
                r.requested,
                retry,
            );
            let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
            let (counts, resets) = limits_of(state, &r.headers);
            let mut reply = Reply::error_with_limits(&err, counts, resets)
                .header("retry-after", secs.max(1).to_string());
            if state.retry_after_ms {
                let ms = retry.as_millis() + u128::from(retry.subsec_nanos() % 1_000_000 > 0);
                reply = reply.header("retry-after-ms", ms.max(1).to_string());
            }
            reply.into()
        }
        ChatOutcome::RequestTooLarge { .. } => {
            state.stats.rate_limited(3);
            error_of(&outcome, request.model, org, rid)
        }
        ChatOutcome::ServerError { after, .. } => {
            sleep(state.clock.to_real(after)).await;
            error_of(&outcome, request.model, org, rid)
        }
        ChatOutcome::Timeout { after } => Delivery::Hold(state.clock.to_real(after)),
        ChatOutcome::Rejected(e) => e.into(),
    }
}

fn error_of(outcome: &ChatOutcome, model: Model, org: &OrgEntry, rid: &str) -> Delivery {
    match outcome.api_error(model, &org.name, rid) {
        Some(e) => e.into(),
        None => Reply::json(500, Bytes::new()).into(),
    }
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{fast, parse_request_checked};

    /// Near-valid bodies: each field drawn from valid values and the usual mistakes.
    fn body() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            6 => Just(json!("Tag this image.")),
            1 => Just(json!("quote \" and \\ backslash")),
            1 => Just(json!("")),
            1 => Just(json!(5)),
        ];
        let detail = prop_oneof![
            3 => Just(None),
            3 => Just(Some(json!("low"))),
            1 => Just(Some(json!("high"))),
            1 => Just(Some(json!("auto"))),
            1 => Just(Some(json!("ultra"))),
            1 => Just(Some(Value::Null)),
        ];
        let url = prop_oneof![
            6 => Just(json!("https://img.example/a.jpg?w=640&h=480")),
            1 => Just(json!("")),
            1 => Just(json!("https://img.example/q\"uote.jpg")),
            1 => Just(json!({"url": "x"})),
        ];
        let image = (url, detail).prop_map(|(url, detail)| {
            let mut o = json!({"url": url});
            if let Some(d) = detail {
                o["detail"] = d;
            }
            json!({"type": "image_url", "image_url": o})
        });
        let part = prop_oneof![
            4 => text.clone().prop_map(|t| json!({"type": "text", "text": t})),
            4 => image,
            1 => Just(json!({"type": "input_audio"})),
            1 => Just(json!({"type": "text"})),
            1 => Just(json!("not an object")),
        ];
        let content = prop_oneof![
            2 => text.prop_map(|t| t),
            4 => prop::collection::vec(part, 0..4).prop_map(Value::Array),
            1 => Just(Value::Null),
        ];
        let role = prop_oneof![6 => Just("user"), 1 => Just("system"), 1 => Just("assistant"), 1 => Just("robot")];
        let message = (role, content).prop_map(|(r, c)| json!({"role": r, "content": c}));
        let tokens = prop_oneof![
            6 => Just(None),
            4 => Just(Some(json!(60))),
            1 => Just(Some(json!(0))),
            1 => Just(Some(json!(-1))),
            1 => Just(Some(json!(1.5))),
            1 => Just(Some(json!(100_000))),
            1 => Just(Some(Value::Null)),
        ];
        let model = prop_oneof![6 => Just(json!("gpt-4o-mini")), 2 => Just(json!("gpt-4o")), 1 => Just(json!("gpt-9")), 1 => Just(json!(1))];
        (
            model,
            prop::collection::vec(message, 0..3),
            tokens.clone(),
            tokens,
            prop_oneof![6 => Just(None), 1 => Just(Some(("temperature", json!(0.2)))), 1 => Just(Some(("stream", json!(false)))), 1 => Just(Some(("bogus", json!(1))))],
        )
            .prop_map(|(model, messages, mt, mct, extra)| {
                let mut b = json!({"model": model, "messages": messages});
                if let Some(v) = mt {
                    b["max_tokens"] = v;
                }
                if let Some(v) = mct {
                    b["max_completion_tokens"] = v;
                }
                if let Some((k, v)) = extra {
                    b[k] = v;
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, .. ProptestConfig::default() })]

        /// Whatever the fast path accepts, the full validator accepts with the same result.
        #[test]
        fn fast_path_agrees_with_the_full_validator(b in body()) {
            let bytes = serde_json::to_vec(&b).unwrap();
            if let Some(got) = fast::parse(&bytes) {
                prop_assert_eq!(Ok(got), parse_request_checked(&bytes).map_err(|e| e.message));
            }
        }
    }

    /// The content the server writes into the response is what the model's `content` returns.
    #[test]
    fn written_content_matches_the_models_content() {
        use crate::chat::FinishReason;
        use crate::tags::Tags;
        use tagstorm_core::tokens::Usage;
        for i in 0..200u64 {
            let tags = Tags::of(&format!("https://img.example/{i}.jpg"));
            for output_tokens in [0, 1, 2, 5, 9, 10, 30, u64::MAX / 2, u64::MAX] {
                let usage = Usage {
                    input_tokens: 100,
                    output_tokens,
                };
                for finish in [FinishReason::Stop, FinishReason::Length] {
                    let mut out = String::from("prefix");
                    super::write_content(&mut out, tags, usage, finish);
                    assert_eq!(out[6..], crate::chat::content(tags, usage, finish));
                }
            }
        }
    }

    /// Valid bodies of the common shape, in the generator's key order.
    fn valid_body() -> impl Strategy<Value = Value> {
        let detail = prop_oneof![
            Just(None),
            Just(Some("low")),
            Just(Some("high")),
            Just(Some("auto"))
        ];
        let image = ("[a-z0-9/.?=&]{1,30}", detail).prop_map(|(path, detail)| {
            let mut o = json!({"url": format!("https://img.example/{path}")});
            if let Some(d) = detail {
                o["detail"] = json!(d);
            }
            json!({"type": "image_url", "image_url": o})
        });
        let part = prop_oneof![
            "\\PC{0,12}".prop_map(|t| json!({"type": "text", "text": t})),
            image,
        ];
        let content = prop_oneof![
            "\\PC{0,12}".prop_map(Value::from),
            prop::collection::vec(part, 0..3).prop_map(Value::Array),
        ];
        let role = prop::sample::select(vec!["user", "system", "assistant", "developer"]);
        let message = (role, content).prop_map(|(r, c)| json!({"role": r, "content": c}));
        (
            prop::sample::select(vec!["gpt-4o-mini", "gpt-4o"]),
            prop::collection::vec(message, 1..3),
            prop::option::of((any::<bool>(), 1u32..20_000)),
        )
            .prop_map(|(model, messages, tokens)| {
                let mut b = json!({"model": model, "messages": messages});
                if let Some((completion, n)) = tokens {
                    let key = if completion {
                        "max_completion_tokens"
                    } else {
                        "max_tokens"
                    };
                    b[key] = json!(n);
                }
                b
            })
    }

    /// Bytes near valid bodies: a body from the generator, pretty-printed or not, with a few
    /// bytes deleted, replaced or inserted (JSON punctuation, digits, escapes, whitespace,
    /// control and non-UTF-8 bytes) and a piece repeated, which makes repeated keys.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            prop::sample::select(b"\"\\,:{}[]0123456789-+.eEnul \t\r\nx".to_vec()),
            Just(0u8),
            Just(0x1f),
            Just(0xc3),
            Just(0xa9),
            Just(0xff),
        ];
        let edit = (0usize..400, 0u8..4, byte);
        (
            prop_oneof![1 => body(), 3 => valid_body()],
            any::<bool>(),
            prop::collection::vec(edit, 0..3),
            prop::option::weighted(0.2, (0usize..400, 1usize..40, 0usize..400)),
        )
            .prop_map(|(b, pretty, edits, repeat)| {
                let mut bytes = if pretty {
                    serde_json::to_vec_pretty(&b).unwrap()
                } else {
                    serde_json::to_vec(&b).unwrap()
                };
                for (at, op, byte) in edits {
                    let at = at % (bytes.len() + 1);
                    match op {
                        0 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        1 if at < bytes.len() => bytes[at] = byte,
                        _ => bytes.insert(at, byte),
                    }
                }
                if let Some((from, len, to)) = repeat {
                    let from = from % (bytes.len() + 1);
                    let piece = bytes[from..(from + len).min(bytes.len())].to_vec();
                    let to = to % (bytes.len() + 1);
                    bytes.splice(to..to, piece);
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

        /// Near-valid bytes: whatever the fast path accepts, the full validator accepts with
        /// the same result.
        #[test]
        fn fast_path_agrees_on_mutated_bodies(bytes in mutated()) {
            if let Some(got) = fast::parse(&bytes) {
                prop_assert_eq!(Ok(got), parse_request_checked(&bytes).map_err(|e| e.message));
            }
        }

        #[test]
        fn fast_path_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = fast::parse(&bytes);
        }
    }

    /// The mutated bodies reach the fast path too, pretty-printed ones included.
    #[test]
    fn mutated_bodies_reach_the_fast_path() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut accepted, mut pretty) = (0, 0);
        for _ in 0..4096 {
            let b = mutated().new_tree(&mut runner).unwrap().current();
            if fast::parse(&b).is_some() {
                accepted += 1;
                pretty += usize::from(b.contains(&b'\n'));
            }
        }
        assert!(
            accepted > 300 && pretty > 100,
            "{accepted} of 4096 mutated bodies took the fast path, {pretty} of them pretty-printed"
        );
    }

    /// Keys in any order and whitespace anywhere JSON allows it take the fast path; a repeated
    /// key, a trailing byte, a float or a leading zero do not.
    #[test]
    fn fast_path_edges() {
        let accepted: [&[u8]; 3] = [
            br#" { "messages" : [ { "content" : [ { "image_url" : { "detail" : "high" , "url" : "https://i/x.jpg?w=64&h=64" } , "type" : "image_url" } ] , "role" : "user" } ] ,
               "max_completion_tokens" : 7 , "model" : "gpt-4o" } "#,
            r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"déjà"},{"role":"user","content":[]}]}"#.as_bytes(),
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":16384}"#,
        ];
        for b in accepted {
            let got = fast::parse(b).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(b)));
            assert_eq!(Ok(got), parse_request_checked(b).map_err(|e| e.message));
        }
        // More images than the fast path holds in place.
        let parts: Vec<Value> = (0..7)
            .map(|i| json!({"type": "image_url", "image_url": {"url": format!("https://i/{i}.jpg?w={}", 100 + i)}}))
            .collect();
        let b = serde_json::to_vec(
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": parts}]}),
        )
        .unwrap();
        let got = fast::parse(&b).expect("seven images");
        assert_eq!(got.images.len(), 7);
        assert_eq!(Ok(got), parse_request_checked(&b).map_err(|e| e.message));
        let declined: [&[u8]; 9] = [
            br#"{"model":"gpt-4o-mini","model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","role":"user","content":"x"}]}"#,
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}x"#,
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":6.0}"#,
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":060}"#,
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":16385}"#,
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\u0041"}]}"#,
            b"{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
            br#"{"model":"gpt-4o-mini","messages":[]}"#,
        ];
        for b in declined {
            assert_eq!(fast::parse(b), None, "{}", String::from_utf8_lossy(b));
        }
    }

    /// The property above is not vacuous: the generator reaches the fast path often.
    #[test]
    fn the_generator_reaches_the_fast_path() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let accepted = (0..2048)
            .filter(|_| {
                let b = body().new_tree(&mut runner).unwrap().current();
                fast::parse(&serde_json::to_vec(&b).unwrap()).is_some()
            })
            .count();
        assert!(
            accepted > 50,
            "only {accepted} of 2048 bodies took the fast path"
        );
    }

    #[test]
    fn fast_path_takes_the_common_shape() {
        let b = br#"{"model":"gpt-4o-mini","max_tokens":60,"messages":[{"role":"user","content":[{"type":"text","text":"Tag this image."},{"type":"image_url","image_url":{"url":"https://img.example/bench.jpg","detail":"low"}}]}]}"#;
        let got = fast::parse(b).expect("the common shape takes the fast path");
        assert_eq!(Ok(got), parse_request_checked(b).map_err(|e| e.message));
    }
}
