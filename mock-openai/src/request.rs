//! Chat-completions request bodies checked the way OpenAI checks them: unknown keys, the
//! shape of every message and content part, `max_tokens` and the optional parameters, each
//! failure the 400 (or 404 `model_not_found`) that names its parameter. The realtime endpoint
//! answers with it; a batch line whose body fails it runs as a failed request carrying the
//! same error.

use serde_json::Value;

use crate::error::{
    ApiError, bad_request, invalid_json, invalid_type, json_type, unrecognized_argument,
};
use crate::jsonl::{ChatBody, MAX_OUTPUT_TOKENS, read_chat_body};

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

pub(crate) const ROLES: [&str; 6] = [
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
                        "{key} is too large: {n}. This model supports at most {MAX_OUTPUT_TOKENS} completion tokens, whereas you provided {n}."
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

/// An optional number within `min..=max`: anything but a number (or `null`) is an
/// `invalid_type`, a number outside the range an `invalid_value`.
fn check_number(
    body: &serde_json::Map<String, Value>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<(), ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if v < min {
                Err(ApiError::invalid_value(
                    key,
                    &format!(
                        "number below minimum value. Expected a value >= {min}, but got {n} instead."
                    ),
                ))
            } else if v > max || v.is_nan() {
                Err(ApiError::invalid_value(
                    key,
                    &format!(
                        "number above maximum value. Expected a value <= {max}, but got {n} instead."
                    ),
                ))
            } else {
                Ok(())
            }
        }
        Some(other) => Err(invalid_type(key, "a number", other)),
    }
}

/// An optional integer within `min..=max` (either bound optional).
fn check_integer(
    body: &serde_json::Map<String, Value>,
    key: &str,
    min: Option<i64>,
    max: Option<i64>,
) -> Result<Option<i64>, ApiError> {
    let n = match body.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n,
        Some(other) => return Err(invalid_type(key, "an integer", other)),
    };
    // A `u64` above `i64::MAX` is above every bound here.
    let v = n.as_i64().unwrap_or(i64::MAX);
    if let Some(min) = min.filter(|&m| v < m) {
        return Err(ApiError::invalid_value(
            key,
            &format!(
                "integer below minimum value. Expected a value >= {min}, but got {n} instead."
            ),
        ));
    }
    if let Some(max) = max.filter(|&m| v > m) {
        return Err(ApiError::invalid_value(
            key,
            &format!(
                "integer above maximum value. Expected a value <= {max}, but got {n} instead."
            ),
        ));
    }
    Ok(Some(v))
}

/// An optional value of one JSON type (`null` allowed).
fn check_kind(
    body: &serde_json::Map<String, Value>,
    key: &str,
    expected: &str,
    fits: fn(&Value) -> bool,
) -> Result<(), ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if fits(v) => Ok(()),
        Some(other) => Err(invalid_type(key, expected, other)),
    }
}

/// The optional parameters the mock reads nothing from but OpenAI checks (ranges per the
/// `CreateChatCompletionRequest` schema): a wrong type or range is the same 400 it would be
/// upstream. `n` above 1 asks for several choices, which the mock does not produce, so it is
/// refused like `stream`.
fn check_optional(body: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    if let Some(n) = check_integer(body, "n", Some(1), Some(128))? {
        if n > 1 {
            return Err(ApiError::invalid_value(
                "n",
                "this mock serves one choice per request; set n to 1.",
            ));
        }
    }
    check_number(body, "temperature", 0.0, 2.0)?;
    check_number(body, "top_p", 0.0, 1.0)?;
    check_number(body, "frequency_penalty", -2.0, 2.0)?;
    check_number(body, "presence_penalty", -2.0, 2.0)?;
    check_integer(body, "seed", None, None)?;
    check_integer(body, "top_logprobs", Some(0), Some(20))?;
    for key in ["logprobs", "store", "parallel_tool_calls"] {
        check_kind(body, key, "a boolean", Value::is_boolean)?;
    }
    for key in ["user", "safety_identifier", "prompt_cache_key"] {
        check_kind(body, key, "a string", Value::is_string)?;
    }
    check_kind(body, "metadata", "an object", Value::is_object)
}

/// Every check OpenAI makes of a chat-completions body, in its order, short of the model
/// being one it serves: `Err` is the first failure, the same 400 the realtime endpoint
/// answers. A batch line whose body fails here still runs, as a failed request with this
/// error in the batch's error file ([`crate::jsonl::parse_batch_input`]).
pub fn check_body(value: &Value) -> Result<(), ApiError> {
    let Some(obj) = value.as_object() else {
        return Err(bad_request(
            format!(
                "Invalid type for the request body: expected an object, but got {} instead.",
                json_type(value)
            ),
            None,
            Some("invalid_type"),
        ));
    };
    if let Some(k) = obj.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(unrecognized_argument(k));
    }
    match obj.get("model") {
        None => return Err(missing("model")),
        Some(Value::String(_)) => {}
        Some(other) => return Err(invalid_type("model", "a string", other)),
    }
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
    check_optional(obj)?;
    match obj.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(Value::Bool(true)) => Err(ApiError::invalid_value(
            "stream",
            "this mock serves only non-streaming responses; set stream to false.",
        )),
        Some(other) => Err(invalid_type("stream", "a boolean", other)),
    }
}

/// The full validator: builds a `Value` and walks it ([`check_body`]), so every error names
/// its parameter the way OpenAI does; a model it does not serve is the 404
/// `model_not_found`. The server's fast path (`server::chat::fast`) handles the common shape
/// without it.
pub fn parse_request_checked(bytes: &[u8]) -> Result<ChatBody, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| invalid_json())?;
    check_body(&value)?;
    read_chat_body(&value).map_err(|e| {
        if e.code == "model_not_found" {
            let model = value.get("model").and_then(Value::as_str).unwrap_or("");
            ApiError::model_not_found(model)
        } else {
            bad_request(e.message, Some(e.param), Some(e.code))
        }
    })
}
