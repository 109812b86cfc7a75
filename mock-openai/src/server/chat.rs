//! `POST /v1/chat/completions`: validates the body the way OpenAI does (400/404 bodies that
//! name the parameter), asks the model, and answers per its [`ChatOutcome`] — 200 with
//! `x-ratelimit-*` after the modelled latency (slept outside the lock), 429 with the exact body
//! and `retry-after`, 500/503 after their delay, a timeout hold, or a transport fault.

use std::time::Duration;

use bytes::Bytes;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::chat::{ChatOutcome, ChatRequest};
use crate::error::{ApiError, LimitDimension};
use crate::headers::{RateLimitHeaders, format_duration};
use crate::jsonl::{self, ChatBody, MAX_OUTPUT_TOKENS};
use crate::latency::ms_to_duration;
use crate::server::config::TransportFault;
use crate::server::http::{
    Reply, bad_request, invalid_json, invalid_type, read_body, unrecognized_argument,
};
use crate::server::{Delivery, OrgEntry, State};

/// Top-level request keys OpenAI accepts (facts §1, `CreateChatCompletionRequest` and the
/// shared model-response properties); anything else is a 400 "Unrecognized request argument".
const KNOWN_KEYS: &[&str] = &[
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "messages",
    "metadata",
    "modalities",
    "model",
    "moderation",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
    "prompt_cache_retention",
];

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

fn missing(param: &str) -> ApiError {
    ApiError::missing_parameter(param)
}

fn check_part(part: &Value, at: &str) -> Result<(), ApiError> {
    let Some(obj) = part.as_object() else {
        return Err(invalid_type(at, "an object", part));
    };
    let kind = match obj.get("type") {
        None => return Err(missing(&format!("{at}.type"))),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(invalid_type(&format!("{at}.type"), "a string", other)),
    };
    match kind {
        "text" => match obj.get("text") {
            None => Err(missing(&format!("{at}.text"))),
            Some(Value::String(_)) => Ok(()),
            Some(other) => Err(invalid_type(&format!("{at}.text"), "a string", other)),
        },
        "image_url" => {
            let p = format!("{at}.image_url");
            let image = match obj.get("image_url") {
                None => return Err(missing(&p)),
                Some(Value::Object(o)) => o,
                Some(other) => return Err(invalid_type(&p, "an object", other)),
            };
            match image.get("url") {
                None => return Err(missing(&format!("{p}.url"))),
                Some(Value::String(s)) if s.is_empty() => {
                    return Err(ApiError::invalid_value(
                        &format!("{p}.url"),
                        "Expected a valid URL, but got an empty string instead.",
                    ));
                }
                Some(Value::String(_)) => {}
                Some(other) => return Err(invalid_type(&format!("{p}.url"), "a string", other)),
            }
            match image.get("detail") {
                None | Some(Value::Null) => Ok(()),
                Some(Value::String(d)) if ["auto", "low", "high"].contains(&d.as_str()) => Ok(()),
                Some(Value::String(d)) => Err(ApiError::invalid_value(
                    &format!("{p}.detail"),
                    &format!("'{d}'. Supported values are: 'auto', 'low', and 'high'."),
                )),
                Some(other) => Err(invalid_type(&format!("{p}.detail"), "a string", other)),
            }
        }
        "input_audio" | "file" | "refusal" => Ok(()),
        other => Err(ApiError::invalid_value(
            &format!("{at}.type"),
            &format!(
                "'{other}'. Supported values are: 'text', 'image_url', 'input_audio', 'refusal', and 'file'."
            ),
        )),
    }
}

fn check_message(m: &Value, i: usize) -> Result<(), ApiError> {
    let at = format!("messages[{i}]");
    let Some(obj) = m.as_object() else {
        return Err(invalid_type(&at, "an object", m));
    };
    let role = match obj.get("role") {
        None => return Err(missing(&format!("{at}.role"))),
        Some(Value::String(r)) => r.as_str(),
        Some(other) => return Err(invalid_type(&format!("{at}.role"), "a string", other)),
    };
    if !ROLES.contains(&role) {
        return Err(ApiError::invalid_value(
            &format!("{at}.role"),
            &format!(
                "'{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
            ),
        ));
    }
    match obj.get("content") {
        None if role == "assistant" => Ok(()),
        None => Err(missing(&format!("{at}.content"))),
        Some(Value::Null) if role == "assistant" => Ok(()),
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                check_part(part, &format!("{at}.content[{j}]"))?;
            }
            Ok(())
        }
        Some(other) => Err(invalid_type(
            &format!("{at}.content"),
            "one of a string or array of objects",
            other,
        )),
    }
}

fn check_max_tokens(body: &serde_json::Map<String, Value>, key: &str) -> Result<(), ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => {
            let v = n.as_i64().unwrap_or(i64::MAX);
            if v < 1 {
                Err(ApiError::invalid_value(
                    key,
                    &format!(
                        "integer below minimum value. Expected a value >= 1, but got {v} instead."
                    ),
                ))
            } else if v > i64::from(MAX_OUTPUT_TOKENS) {
                Err(bad_request(
                    format!(
                        "{key} is too large: {v}. This model supports at most {MAX_OUTPUT_TOKENS} completion tokens, whereas you provided {v}."
                    ),
                    Some(key),
                    Some("invalid_value"),
                ))
            } else {
                Ok(())
            }
        }
        Some(other) => Err(invalid_type(key, "an integer", other)),
    }
}

/// Parses and validates a chat-completions request body. Every failure is an OpenAI error
/// (400 naming the parameter; 404 `model_not_found`); never panics, whatever the bytes.
pub fn parse_request(bytes: &[u8]) -> Result<ChatBody, ApiError> {
    match fast::parse(bytes) {
        Some(body) => Ok(body),
        None => parse_request_checked(bytes),
    }
}

/// The full validator: builds a `Value` and walks it, so every error names its parameter the
/// way OpenAI does. [`fast::parse`] handles the common shape without it.
pub fn parse_request_checked(bytes: &[u8]) -> Result<ChatBody, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| invalid_json())?;
    let Some(obj) = value.as_object() else {
        return Err(bad_request(
            format!(
                "Invalid type for the request body: expected an object, but got {} instead.",
                crate::server::http::json_type(&value)
            ),
            None,
            Some("invalid_type"),
        ));
    };
    if let Some(k) = obj.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(unrecognized_argument(k));
    }
    let model = match obj.get("model") {
        None => return Err(missing("model")),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(invalid_type("model", "a string", other)),
    };
    let messages = match obj.get("messages") {
        None => return Err(missing("messages")),
        Some(Value::Array(m)) => m,
        Some(other) => return Err(invalid_type("messages", "an array", other)),
    };
    if messages.is_empty() {
        return Err(bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        check_message(m, i)?;
    }
    check_max_tokens(obj, "max_tokens")?;
    check_max_tokens(obj, "max_completion_tokens")?;
    match obj.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(ApiError::invalid_value(
                "stream",
                "this mock serves only non-streaming responses; set stream to false.",
            ));
        }
        Some(other) => return Err(invalid_type("stream", "a boolean", other)),
    }
    jsonl::read_chat_body(&value).map_err(|(param, message)| {
        if param == "model" && message.contains("does not exist") {
            ApiError::model_not_found(model)
        } else {
            bad_request(message, Some(&param), None)
        }
    })
}

/// The common request shape, deserialized straight from the body with borrowed strings and no
/// `Value` (which costs a map allocation per object). It accepts a strict subset of what
/// [`parse_request_checked`] accepts and yields the same [`ChatBody`]; anything else (an escaped
/// string, an optional key, a null, an invalid value) returns `None`, and the full validator
/// answers, with OpenAI's exact error if there is one. A property test holds the two together.
pub mod fast {
    use serde::{Deserialize, Deserializer};
    use tagstorm_core::tokens::{Detail, Model};

    use super::ROLES;
    use crate::jsonl::{ChatBody, MAX_OUTPUT_TOKENS, image_spec_from_url};

    /// `Some(v)` for a present key, so a `null` (`Some(None)`) differs from an absent key (`None`).
    fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        T::deserialize(d).map(Some)
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request<'a> {
        #[serde(borrow)]
        model: &'a str,
        #[serde(borrow)]
        messages: Vec<Message<'a>>,
        #[serde(default, deserialize_with = "present")]
        max_tokens: Option<Option<u64>>,
        #[serde(default, deserialize_with = "present")]
        max_completion_tokens: Option<Option<u64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Message<'a> {
        #[serde(borrow)]
        role: &'a str,
        #[serde(borrow)]
        content: Content<'a>,
    }

    /// A string or an array of parts. Deserialized by hand: `#[serde(untagged)]` buffers the
    /// value and tries each variant in turn, building an error for the one that misses, which
    /// cost more than the rest of the body's parse.
    enum Content<'a> {
        Text(&'a str),
        Parts(Vec<Part<'a>>),
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
                type Value = Content<'a>;

                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a string without escapes or an array of content parts")
                }

                fn visit_borrowed_str<E: serde::de::Error>(
                    self,
                    s: &'de str,
                ) -> Result<Self::Value, E> {
                    Ok(Content::Text(s))
                }

                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Self::Value, A::Error> {
                    let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                    while let Some(p) = seq.next_element()? {
                        parts.push(p);
                    }
                    Ok(Content::Parts(parts))
                }
            }
            d.deserialize_any(V(std::marker::PhantomData))
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Part<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(default, borrow)]
        text: Option<&'a str>,
        #[serde(default, borrow)]
        image_url: Option<Image<'a>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Image<'a> {
        url: &'a str,
        #[serde(default)]
        detail: Option<&'a str>,
    }

    /// The body, if it has the common shape and is valid; `None` sends it to the full validator.
    pub fn parse(bytes: &[u8]) -> Option<ChatBody> {
        let req: Request<'_> = serde_json::from_slice(bytes).ok()?;
        let model = Model::from_name(req.model)?;
        if req.messages.is_empty() {
            return None;
        }
        let max_tokens = match (req.max_tokens, req.max_completion_tokens) {
            (None, None) => 0,
            (Some(Some(v)), None) | (None, Some(Some(v))) => v,
            _ => return None,
        };
        if max_tokens > u64::from(MAX_OUTPUT_TOKENS)
            || (max_tokens == 0
                && (req.max_tokens.is_some() || req.max_completion_tokens.is_some()))
        {
            return None;
        }
        let mut text_chars = 0u64;
        let mut images = Vec::new();
        let mut image_url = String::new();
        for m in &req.messages {
            if !ROLES.contains(&m.role) {
                return None;
            }
            match &m.content {
                Content::Text(t) => {
                    text_chars = text_chars.saturating_add(t.chars().count() as u64)
                }
                Content::Parts(parts) => {
                    for part in parts {
                        match (part.kind, part.text, &part.image_url) {
                            ("text", Some(t), None) => {
                                text_chars = text_chars.saturating_add(t.chars().count() as u64);
                            }
                            ("image_url", None, Some(img)) if !img.url.is_empty() => {
                                let detail = match img.detail {
                                    None | Some("auto") => Detail::Auto,
                                    Some("low") => Detail::Low,
                                    Some("high") => Detail::High,
                                    Some(_) => return None,
                                };
                                images.push(image_spec_from_url(img.url, detail));
                                if image_url.is_empty() {
                                    image_url = img.url.to_owned();
                                }
                            }
                            _ => return None,
                        }
                    }
                }
            }
        }
        Some(ChatBody {
            model,
            max_tokens: u32::try_from(max_tokens).ok()?,
            text_chars,
            images,
            image_url,
        })
    }
}

const X_LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const X_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const X_REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const X_REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const X_RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const X_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

fn limit_headers(state: &State, h: RateLimitHeaders, reply: Reply) -> Reply {
    let real = RateLimitHeaders {
        reset_requests: state.clock.to_real(h.reset_requests),
        reset_tokens: state.clock.to_real(h.reset_tokens),
        ..h
    };
    // Counts go in as integers and names as constants: no string is built or re-validated
    // for them on this path, which runs once per request.
    reply
        .header_value(&X_LIMIT_REQUESTS, HeaderValue::from(real.limit_requests))
        .header_value(&X_LIMIT_TOKENS, HeaderValue::from(real.limit_tokens))
        .header_value(
            &X_REMAINING_REQUESTS,
            HeaderValue::from(real.remaining_requests),
        )
        .header_value(
            &X_REMAINING_TOKENS,
            HeaderValue::from(real.remaining_tokens),
        )
        .header_text(&X_RESET_REQUESTS, &format_duration(real.reset_requests))
        .header_text(&X_RESET_TOKENS, &format_duration(real.reset_tokens))
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
) -> Delivery {
    let bytes = match read_body(req, state.limits.chat).await {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let body = match parse_request(&bytes) {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let request = ChatRequest {
        model: body.model,
        max_tokens: body.max_tokens,
        text_chars: body.text_chars,
        images: &body.images,
        image_url: &body.image_url,
    };
    if !state.enforce_limits {
        let (usage, tags, finish) = state.lock().upstream.answer(
            body.model,
            body.max_tokens,
            body.text_chars,
            &body.images,
            &body.image_url,
        );
        let id = state.completion_id(rid);
        let content = crate::chat::content(tags, usage, finish);
        let json = jsonl::ChatCompletion::new(
            id.as_str(),
            state.clock.unix_now_s(),
            body.model,
            &content,
            finish.as_str(),
            usage,
        );
        return Reply::json(200, json.to_bytes()).into();
    }
    let now = state.clock.now();
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
            let id = state.completion_id(rid);
            let content = ok.content();
            let json = jsonl::ChatCompletion::new(
                id.as_str(),
                state.clock.unix_now_s(),
                body.model,
                &content,
                ok.finish_reason.as_str(),
                ok.usage,
            );
            let reply = limit_headers(state, ok.headers, Reply::json(200, json.to_bytes()));
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
                body.model,
                &org.name,
                r.dimension,
                r.limit,
                r.used,
                r.requested,
                retry,
            );
            let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
            let mut reply = limit_headers(state, r.headers, Reply::error(&err))
                .header("retry-after", secs.max(1).to_string());
            if state.retry_after_ms {
                let ms = retry.as_millis() + u128::from(retry.subsec_nanos() % 1_000_000 > 0);
                reply = reply.header("retry-after-ms", ms.max(1).to_string());
            }
            reply.into()
        }
        ChatOutcome::RequestTooLarge { .. } => {
            state.stats.rate_limited(3);
            error_of(&outcome, body.model, org, rid)
        }
        ChatOutcome::ServerError { after, .. } => {
            sleep(state.clock.to_real(after)).await;
            error_of(&outcome, body.model, org, rid)
        }
        ChatOutcome::Timeout { after } => Delivery::Hold(state.clock.to_real(after)),
        ChatOutcome::Rejected(e) => e.into(),
    }
}

fn error_of(
    outcome: &ChatOutcome,
    model: tagstorm_core::tokens::Model,
    org: &OrgEntry,
    rid: &str,
) -> Delivery {
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
