//! Batch input files: parse and validate JSONL into structured requests (with the line
//! numbers of validation errors), and render output/error files and chat-completion bodies.
//!
//! Facts §5: input line `{"custom_id","method":"POST","url","body"}`; output line
//! `{"id":"batch_req_…","custom_id","response":{"status_code","request_id","body"},"error":null}`;
//! expired/cancelled lines `{"id","custom_id","response":null,"error":{"code","message"}}`.
//! File-level content errors (a line that is not JSON, lacks `custom_id`, `method`, `url`,
//! `body`, a known `model` or `messages`, names another url or model, or repeats a
//! `custom_id`) are validation failures of the created batch, not 400s. A line that passes
//! those but whose body the realtime endpoint would refuse (an unknown key, a wrong type or
//! range, `stream: true`, …) runs and fails alone: its 400 goes to the error file as
//! `{"response":{"status_code":400,"request_id","body":{"error":{…}}},"error":null}` and it
//! counts as failed, unbilled (facts §5).

use std::collections::HashSet;

use compact_str::CompactString;
use serde::Serialize;
use serde_json::{Value, json};
use tagstorm_core::tokens::{Detail, ImageSpec, Model, Usage};

use crate::error::{ApiError, json_type};

/// Width and height, in pixels, assumed for an image whose URL carries no `w`/`h` (or
/// `width`/`height`) query parameters: the 1024×1024 example of facts §6.
pub const DEFAULT_IMAGE_PX: (u32, u32) = (1024, 1024);

/// Most validation errors reported for one file (the rest are dropped).
pub const MAX_REPORTED_ERRORS: usize = 10;

/// Longest output a request may ask for, in tokens (gpt-4o-mini's 16,384, facts §7).
pub const MAX_OUTPUT_TOKENS: u32 = 16_384;

/// One validation error of a batch input file (`errors.data[]` of the batch object).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BatchError {
    /// Machine-readable code (`invalid_json_line`, `duplicate_custom_id`, …).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The offending parameter, if any.
    pub param: Option<String>,
    /// The 1-based line number, if the error belongs to one line.
    pub line: Option<u64>,
}

impl BatchError {
    fn new(code: &str, message: impl Into<String>, param: Option<&str>, line: Option<u64>) -> Self {
        BatchError {
            code: code.to_owned(),
            message: message.into(),
            param: param.map(str::to_owned),
            line,
        }
    }
}

/// One request of a batch input file, as the model needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The caller's id for the request.
    pub custom_id: CompactString,
    /// The body's model.
    pub model: Model,
    /// `max_tokens` (or `max_completion_tokens`); 0 when absent.
    pub max_tokens: u32,
    /// Characters of text content in the messages.
    pub text_chars: u64,
    /// Every image in the messages.
    pub images: Vec<ImageSpec>,
    /// The first image's URL (the one tags are derived from); empty if none.
    pub image_url: String,
    /// The 400 the realtime endpoint answers for this body, if the body is invalid in a way
    /// that is the line's own failure (facts §5: the line runs, fails with this error in the
    /// error file, and the batch goes on), not the batch's.
    pub rejected: Option<Box<ApiError>>,
}

/// The caps validation enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Most requests per file (facts §5: 50,000).
    pub max_requests: u32,
    /// Largest file, in bytes (facts §4: 200,000,000).
    pub max_bytes: u64,
}

/// The image a content part describes: sizes from the URL's `w`/`h` or `width`/`height`
/// query parameters, else [`DEFAULT_IMAGE_PX`].
pub fn image_spec_from_url(url: &str, detail: Detail) -> ImageSpec {
    let (mut w, mut h) = DEFAULT_IMAGE_PX;
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some((k, v)) = pair.split_once('=') {
                match (k, v.parse::<u32>()) {
                    ("w" | "width", Ok(v)) => w = v,
                    ("h" | "height", Ok(v)) => h = v,
                    _ => {}
                }
            }
        }
    }
    ImageSpec {
        width_px: w,
        height_px: h,
        detail,
    }
}

/// The parts of a chat-completions body the model needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatBody {
    /// The body's model.
    pub model: Model,
    /// `max_tokens` (or `max_completion_tokens`), capped at [`MAX_OUTPUT_TOKENS`]; 0 when absent.
    pub max_tokens: u32,
    /// Characters of text content in the messages.
    pub text_chars: u64,
    /// Every image in the messages.
    pub images: Vec<ImageSpec>,
    /// The first image's URL; empty if none.
    pub image_url: String,
}

/// Why [`read_chat_body`] could not read a body: the parameter, an error code, the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyError {
    /// `model` or `messages`.
    pub param: &'static str,
    /// `missing_required_parameter`, `invalid_type`, `empty_array` or `model_not_found`.
    pub code: &'static str,
    /// OpenAI's wording.
    pub message: String,
}

/// Reads a chat-completions body (realtime or a batch line); an error when it lacks what the
/// model needs: a known `model` and a non-empty `messages` array. An absent parameter, one of
/// the wrong type, an empty `messages` and an unknown model each have their own code and
/// message (the 404 `model_not_found` text for the last). It checks nothing else: the full
/// validator, [`crate::request::check_body`], does.
pub fn read_chat_body(body: &Value) -> Result<ChatBody, BodyError> {
    let wrong_type = |param: &'static str, expected: &str, got: &Value| BodyError {
        param,
        code: "invalid_type",
        message: format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            crate::error::json_type(got)
        ),
    };
    let missing = |param: &'static str| BodyError {
        param,
        code: "missing_required_parameter",
        message: format!("Missing required parameter: '{param}'."),
    };
    let model_name = match body.get("model") {
        None | Some(Value::Null) => return Err(missing("model")),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(wrong_type("model", "a string", other)),
    };
    let model = Model::from_name(model_name).ok_or_else(|| BodyError {
        param: "model",
        code: "model_not_found",
        message: format!(
            "The model `{model_name}` does not exist or you do not have access to it."
        ),
    })?;
    // A `null` is an absent key: `max_tokens: null` beside `max_completion_tokens: N` is N.
    let max_tokens = body
        .get("max_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .map_or(0, |v| {
            u32::try_from(v).unwrap_or(u32::MAX).min(MAX_OUTPUT_TOKENS)
        });
    let messages = match body.get("messages") {
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(BodyError {
                param: "messages",
                code: "empty_array",
                message: "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.".to_owned(),
            });
        }
        Some(Value::Array(m)) => m,
        Some(other) => return Err(wrong_type("messages", "an array", other)),
    };
    let mut text_chars = 0u64;
    let mut images = Vec::new();
    let mut first_url = String::new();
    for message in messages {
        match message.get("content") {
            Some(Value::String(s)) => {
                text_chars = text_chars.saturating_add(s.chars().count() as u64)
            }
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            let n = part
                                .get("text")
                                .and_then(Value::as_str)
                                .map_or(0, |s| s.chars().count());
                            text_chars = text_chars.saturating_add(n as u64);
                        }
                        Some("image_url") => {
                            // Not an object: no image here; [`crate::request::check_body`]
                            // refuses the body (before this on the realtime path; on a batch
                            // line, as that line's own 400).
                            let Some(image) = part.get("image_url").and_then(Value::as_object)
                            else {
                                continue;
                            };
                            let url = image.get("url").and_then(Value::as_str).unwrap_or("");
                            let detail = match image.get("detail").and_then(Value::as_str) {
                                Some("low") => Detail::Low,
                                Some("high") => Detail::High,
                                _ => Detail::Auto,
                            };
                            images.push(image_spec_from_url(url, detail));
                            if first_url.is_empty() {
                                first_url = url.to_owned();
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ChatBody {
        model,
        max_tokens,
        text_chars,
        images,
        image_url: first_url,
    })
}

/// Parses and validates a batch input file against `endpoint`. Either every request, or
/// the validation errors (at most [`MAX_REPORTED_ERRORS`]) that make the batch `failed`.
/// Blank lines are skipped; line numbers are 1-based physical lines. Never panics.
pub fn parse_batch_input(
    bytes: &[u8],
    endpoint: &str,
    limits: InputLimits,
) -> Result<Vec<ParsedRequest>, Vec<BatchError>> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(vec![BatchError::new(
            "file_too_large",
            format!(
                "The input file is {} bytes; the limit is {} bytes.",
                bytes.len(),
                limits.max_bytes
            ),
            None,
            None,
        )]);
    }
    let mut errors: Vec<BatchError> = Vec::new();
    let mut requests: Vec<ParsedRequest> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut first_model: Option<Model> = None;
    let mut count: u64 = 0;
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if errors.len() >= MAX_REPORTED_ERRORS {
            break;
        }
        let line_no = i as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        count += 1;
        if count > u64::from(limits.max_requests) {
            continue;
        }
        let mut fail = |code: &str, message: String, param: Option<&str>| {
            errors.push(BatchError::new(code, message, param, Some(line_no)));
        };
        let value: Value = match serde_json::from_slice(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                fail(
                    "invalid_json_line",
                    "This line is not parseable as valid JSON.".to_owned(),
                    None,
                );
                continue;
            }
        };
        // `custom_id`, `method` and `url`: absent is missing, present but not a string is a
        // wrong type, each named on its line.
        let mut text = |key: &str| match value.get(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            None | Some(Value::Null) => {
                fail(
                    "missing_required_parameter",
                    format!("Missing required parameter: '{key}'."),
                    Some(key),
                );
                None
            }
            Some(other) => {
                fail(
                    "invalid_type",
                    format!(
                        "Invalid type for '{key}': expected a string, but got {} instead.",
                        json_type(other)
                    ),
                    Some(key),
                );
                None
            }
        };
        let Some(custom_id) = text("custom_id") else {
            continue;
        };
        let Some(method) = text("method") else {
            continue;
        };
        let Some(url) = text("url") else {
            continue;
        };
        if method != "POST" {
            fail(
                "invalid_value",
                "Invalid value for 'method': only POST is supported.".to_owned(),
                Some("method"),
            );
            continue;
        }
        if url != endpoint {
            fail(
                "url_mismatch",
                format!(
                    "The URL provided for this request ('{url}') does not match the batch endpoint ('{endpoint}')."
                ),
                Some("url"),
            );
            continue;
        }
        let Some(body) = value.get("body").filter(|b| b.is_object()) else {
            fail(
                "missing_required_parameter",
                "Missing required parameter: 'body'.".to_owned(),
                Some("body"),
            );
            continue;
        };
        let ChatBody {
            model,
            max_tokens,
            text_chars,
            images,
            image_url,
        } = match read_chat_body(body) {
            Ok(parts) => parts,
            Err(e) => {
                fail(e.code, e.message, Some(&format!("body.{}", e.param)));
                continue;
            }
        };
        match first_model {
            None => first_model = Some(model),
            Some(first) if first != model => {
                fail(
                    "model_mismatch",
                    format!(
                        "The model for this request ('{model}') differs from the batch's model ('{first}'). A batch may use only one model."
                    ),
                    Some("body.model"),
                );
                continue;
            }
            Some(_) => {}
        }
        if !seen.insert(custom_id.to_owned()) {
            fail(
                "duplicate_custom_id",
                format!(
                    "The custom_id '{custom_id}' is a duplicate of an earlier request; custom_id must be unique within a batch."
                ),
                Some("custom_id"),
            );
            continue;
        }
        // The line passes the batch's validation; a body the realtime endpoint would refuse
        // fails on its own, with that endpoint's error.
        let rejected = crate::request::check_body(body).err().map(Box::new);
        requests.push(ParsedRequest {
            custom_id: CompactString::from(custom_id),
            model,
            max_tokens,
            text_chars,
            images,
            image_url,
            rejected,
        });
    }
    if count > u64::from(limits.max_requests) {
        errors.push(BatchError::new(
            "too_many_tasks",
            format!(
                "The batch has {count} requests; the limit is {} requests per batch.",
                limits.max_requests
            ),
            None,
            None,
        ));
    }
    if count == 0 && errors.is_empty() {
        errors.push(BatchError::new(
            "empty_file",
            "The input file has no requests.",
            None,
            None,
        ));
    }
    if errors.is_empty() {
        Ok(requests)
    } else {
        Err(errors)
    }
}

/// A `chat.completion` object (facts §1), serialized straight from borrowed fields in the
/// order OpenAI sends them; the server writes it to bytes without building a `Value`.
#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'static str,
    choices: [Choice<'a>; 1],
    usage: CompletionUsage,
    service_tier: &'static str,
    system_fingerprint: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Debug, Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
    annotations: [(); 0],
}

#[derive(Debug, Serialize)]
struct CompletionUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Debug, Serialize)]
struct PromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Debug, Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

impl<'a> ChatCompletion<'a> {
    /// The completion of one request.
    pub fn new(
        id: &'a str,
        created_unix_s: u64,
        model: Model,
        content: &'a str,
        finish_reason: &'a str,
        usage: Usage,
    ) -> ChatCompletion<'a> {
        ChatCompletion {
            id,
            object: "chat.completion",
            created: created_unix_s,
            model: model.as_str(),
            choices: [Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    refusal: None,
                    annotations: [],
                },
                logprobs: None,
                finish_reason,
            }],
            usage: CompletionUsage {
                prompt_tokens: usage.input_tokens,
                completion_tokens: usage.output_tokens,
                total_tokens: usage.total(),
                prompt_tokens_details: PromptDetails {
                    cached_tokens: 0,
                    audio_tokens: 0,
                },
                completion_tokens_details: CompletionDetails {
                    reasoning_tokens: 0,
                    audio_tokens: 0,
                    accepted_prediction_tokens: 0,
                    rejected_prediction_tokens: 0,
                },
            },
            service_tier: "default",
            system_fingerprint: None,
        }
    }

    /// The JSON bytes: the same bytes as serializing it with `serde_json` (a property test holds
    /// them together), written directly, since the server renders one per request and the
    /// generic serializer spends most of its time escaping the constant keys.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(self.capacity(self.choices[0].message.content.len()));
        self.write_parts(&mut out, |out| {
            write_json_str_body(out, self.choices[0].message.content);
        });
        out.into_bytes()
    }

    /// Appends the JSON of this completion to `out`, with the message content that `content`
    /// appends to the `String` it is given as plain text (escaped here, in place) instead of
    /// the content this completion was built with: the server writes an answer's tags straight
    /// into the response this way. The same bytes as [`ChatCompletion::to_bytes`] of the
    /// completion built with that content.
    pub fn write_with_content(&self, out: &mut String, content: impl FnOnce(&mut String)) {
        self.write_parts(out, |out| {
            let start = out.len();
            content(out);
            escape_in_place(out, start);
        });
    }

    /// Bytes [`ChatCompletion::to_bytes`] writes around a content of `content_len` bytes, with
    /// room for the numbers.
    pub fn capacity(&self, content_len: usize) -> usize {
        560 + self.id.len() + content_len + self.choices[0].finish_reason.len()
    }

    /// Writes every field in `serde_json`'s order and format; `content` writes the message
    /// content, escaped, between its quotes. The fields [`ChatCompletion::new`] always sets to
    /// the same value (`object`, `index`, `role`, `refusal`, the zero token details,
    /// `service_tier`, `system_fingerprint`) are written as constant text; the property test
    /// against `serde_json` would catch one that changes.
    fn write_parts(&self, out: &mut String, content: impl FnOnce(&mut String)) {
        let u = &self.usage;
        let choice = &self.choices[0];
        let mut n = itoa::Buffer::new();
        out.push_str("{\"id\":");
        write_json_str(out, self.id);
        out.push_str(",\"object\":\"chat.completion\",\"created\":");
        out.push_str(n.format(self.created));
        out.push_str(",\"model\":");
        write_json_str(out, self.model);
        out.push_str(
            ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"",
        );
        content(out);
        out.push_str(
            "\",\"refusal\":null,\"annotations\":[]},\"logprobs\":null,\"finish_reason\":",
        );
        write_json_str(out, choice.finish_reason);
        out.push_str("}],\"usage\":{\"prompt_tokens\":");
        out.push_str(n.format(u.prompt_tokens));
        out.push_str(",\"completion_tokens\":");
        out.push_str(n.format(u.completion_tokens));
        out.push_str(",\"total_tokens\":");
        out.push_str(n.format(u.total_tokens));
        out.push_str(concat!(
            ",\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0}",
            ",\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,",
            "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}",
            ",\"service_tier\":\"default\",\"system_fingerprint\":null}",
        ));
    }
}

/// How `serde_json` escapes each byte inside a string: 0 for none, `u` for `\u00XX`, else the
/// character after the backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a JSON string, escaped exactly as `serde_json` escapes it: `"` and `\`,
/// the short escapes `\b \f \n \r \t`, and `\u00XX` (lower-case hex) for other control
/// characters; everything else, non-ASCII included, as is.
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    write_json_str_body(out, s);
    out.push('"');
}

/// [`write_json_str`] without the quotes.
fn write_json_str_body(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // Most bytes need no escape; they are copied in runs. Every byte that does is ASCII,
        // so `i` is a character boundary.
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.push_str(&s[start..i]);
        out.push('\\');
        out.push(char::from(escape));
        if escape == b'u' {
            out.push_str("00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Escapes `out[start..]` as the inside of a JSON string, in place (`start` is a character
/// boundary). Text up to 128 bytes, such as a tags answer, is escaped through a buffer on the
/// stack, byte by byte, and copied back once.
fn escape_in_place(out: &mut String, start: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let raw = &out.as_bytes()[start..];
    // An escape takes at most 6 bytes (`\u00XX`), so 128 bytes of text always fit.
    let mut escaped = [0u8; 6 * 128];
    if raw.len() > 128 {
        let raw = out.split_off(start);
        write_json_str_body(out, &raw);
        return;
    }
    let mut n = 0;
    for &b in raw {
        match ESCAPE[usize::from(b)] {
            0 => {
                escaped[n] = b;
                n += 1;
            }
            b'u' => {
                escaped[n..n + 6].copy_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
                n += 6;
            }
            short => {
                escaped[n] = b'\\';
                escaped[n + 1] = short;
                n += 2;
            }
        }
    }
    out.truncate(start);
    // The text's own bytes (from a `str`, cut at character boundaries: every escaped byte is
    // ASCII) and ASCII escapes: valid UTF-8, so the text is borrowed, never replaced.
    out.push_str(&String::from_utf8_lossy(&escaped[..n]));
}

/// A `chat.completion` object as a `Value` (for batch output lines, which embed it).
pub fn chat_completion_json(
    id: &str,
    created_unix_s: u64,
    model: Model,
    content: &str,
    finish_reason: &str,
    usage: Usage,
) -> Value {
    serde_json::to_value(ChatCompletion::new(
        id,
        created_unix_s,
        model,
        content,
        finish_reason,
        usage,
    ))
    .unwrap_or(Value::Null)
}

/// An output-file line for a successful request.
pub fn output_line(batch_req_id: &str, custom_id: &str, request_id: &str, body: Value) -> String {
    json!({
        "id": batch_req_id,
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": null,
    })
    .to_string()
}

/// An error-file line for a request that failed with an HTTP error (facts §5 [spec +
/// inferred]: `response.status_code` 4xx/5xx with `body.error`, `error: null`).
pub fn http_error_line(
    batch_req_id: &str,
    custom_id: &str,
    request_id: &str,
    status: u16,
    error: &ApiError,
) -> String {
    json!({
        "id": batch_req_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": {"error": error}},
        "error": null,
    })
    .to_string()
}

/// An error-file line for a request that never ran (`batch_expired`, `batch_cancelled`).
pub fn not_run_line(batch_req_id: &str, custom_id: &str, code: &str, message: &str) -> String {
    json!({
        "id": batch_req_id,
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: InputLimits = InputLimits {
        max_requests: 50_000,
        max_bytes: 200_000_000,
    };
    const EP: &str = "/v1/chat/completions";

    fn line(id: &str, model: &str, url: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"{model}","max_tokens":60,"messages":[{{"role":"user","content":[{{"type":"text","text":"Tag this image."}},{{"type":"image_url","image_url":{{"url":"https://img/{id}.jpg?w=512&h=256","detail":"high"}}}}]}}]}}}}"#
        )
    }

    /// Renders the outcome as `ok N` or `code@line` list.
    fn check(text: &str, max_requests: u32, expect: &str) {
        let got = match parse_batch_input(
            text.as_bytes(),
            EP,
            InputLimits {
                max_requests,
                ..LIMITS
            },
        ) {
            Ok(reqs) => format!("ok {}", reqs.len()),
            Err(errs) => errs
                .iter()
                .map(|e| {
                    format!(
                        "{}@{}",
                        e.code,
                        e.line.map_or("-".to_owned(), |l| l.to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
        };
        assert_eq!(got, expect, "{text}");
    }

    #[test]
    fn validation_table() {
        let a = line("a", "gpt-4o-mini", EP);
        let b = line("b", "gpt-4o-mini", EP);
        check(&format!("{a}\n{b}\n"), 10, "ok 2");
        check(&format!("{a}\r\n\n{b}"), 10, "ok 2");
        check(&format!("{a}\nnot json\n{b}"), 10, "invalid_json_line@2");
        check(&format!("{a}\n{a}"), 10, "duplicate_custom_id@2");
        check(
            &format!("{a}\n{}", line("b", "gpt-4o-mini", "/v1/embeddings")),
            10,
            "url_mismatch@2",
        );
        check(
            &format!("{a}\n{}", line("b", "gpt-4o", EP)),
            10,
            "model_mismatch@2",
        );
        check(&line("a", "gpt-9", EP), 10, "model_not_found@1");
        check("", 10, "empty_file@-");
        check("\n\n", 10, "empty_file@-");
        check(
            &format!("{a}\n{b}\n{}", line("c", "gpt-4o-mini", EP)),
            2,
            "too_many_tasks@-",
        );
        check("[1,2]", 10, "invalid_json_line@1");
        check(
            r#"{"custom_id":"x","method":"GET","url":"/v1/chat/completions","body":{}}"#,
            10,
            "invalid_value@1",
        );
    }

    /// A line whose body passes the batch's validation but not the full validator is kept,
    /// carrying the realtime 400; one that fails the batch's validation still fails it.
    #[test]
    fn invalid_bodies_are_the_lines_own_failures() {
        let a = line("a", "gpt-4o-mini", EP);
        let foo = line("b", "gpt-4o-mini", EP).replace(r#""max_tokens":60"#, r#""foo":1"#);
        let reqs = parse_batch_input(format!("{a}\n{foo}\n").as_bytes(), EP, LIMITS).unwrap();
        assert_eq!(reqs[0].rejected, None);
        let e = reqs[1].rejected.as_deref().unwrap();
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "Unrecognized request argument supplied: foo")
        );
        let no_model = foo.replace(r#""model":"gpt-4o-mini","#, "");
        check(
            &format!("{a}\n{no_model}"),
            10,
            "missing_required_parameter@2",
        );
        // Present but of the wrong type, or empty: said as such, not as missing.
        let model_int = a.replace(r#""model":"gpt-4o-mini""#, r#""model":5"#);
        check(&model_int, 10, "invalid_type@1");
        let messages_str = a.replace(r#""messages":["#, r#""messages":"x","unused":["#);
        check(&messages_str, 10, "invalid_type@1");
        let messages_empty = format!(
            r#"{{"custom_id":"e","method":"POST","url":"{EP}","body":{{"model":"gpt-4o-mini","messages":[]}}}}"#
        );
        check(&messages_empty, 10, "empty_array@1");
        check(&format!("{foo}\n{foo}"), 10, "duplicate_custom_id@2");
    }

    #[test]
    fn reads_images_and_text() {
        let reqs = parse_batch_input(line("a", "gpt-4o-mini", EP).as_bytes(), EP, LIMITS).unwrap();
        let r = &reqs[0];
        assert_eq!((r.max_tokens, r.text_chars), (60, 15));
        assert_eq!(
            r.images,
            vec![ImageSpec {
                width_px: 512,
                height_px: 256,
                detail: Detail::High
            }]
        );
        assert_eq!(r.image_url, "https://img/a.jpg?w=512&h=256");
        assert_eq!(
            image_spec_from_url("https://x/y.png", Detail::Low).width_px,
            1024
        );
    }

    #[test]
    fn too_large_file() {
        let errs = parse_batch_input(
            b"0123456789",
            EP,
            InputLimits {
                max_bytes: 5,
                ..LIMITS
            },
        )
        .unwrap_err();
        assert_eq!(errs[0].code, "file_too_large");
    }

    proptest! {
        /// The hand-written completion is byte for byte what `serde_json` writes for it.
        #[test]
        fn completion_bytes_match_serde(
            id in "\\PC{0,40}",
            content in prop_oneof![
                Just(r#"{"tags":["cat","sky","tree"]}"#.to_owned()),
                "[\\x00-\\x7f]{0,60}",
                "\\PC{0,60}",
            ],
            finish in prop_oneof![Just("stop"), Just("length"), Just("a\"\\\u{1}b")],
            created in any::<u64>(),
            input in any::<u64>(),
            output in any::<u64>(),
            mini in any::<bool>(),
        ) {
            let model = if mini { Model::Gpt4oMini } else { Model::Gpt4o };
            let usage = Usage { input_tokens: input / 2, output_tokens: output / 2 };
            let c = ChatCompletion::new(&id, created, model, &content, finish, usage);
            prop_assert_eq!(
                String::from_utf8(c.to_bytes()).unwrap(),
                serde_json::to_string(&c).unwrap()
            );
        }

        /// Writing the content as plain text into the buffer gives the same bytes as building
        /// the completion with that content (short content goes through the stack, long content
        /// through the heap).
        #[test]
        fn content_written_in_place_matches_to_bytes(
            prefix in "\\PC{0,8}",
            content in prop_oneof![
                Just(r#"{"tags":["cat","sky","tree"]}"#.to_owned()),
                "[\\x00-\\x7f]{0,300}",
                "\\PC{0,300}",
            ],
            finish in prop_oneof![Just("stop"), Just("length")],
            created in any::<u64>(),
            output in any::<u64>(),
        ) {
            let usage = Usage { input_tokens: 3, output_tokens: output / 2 };
            let whole = ChatCompletion::new("chatcmpl-x", created, Model::Gpt4oMini, &content, finish, usage);
            let empty = ChatCompletion::new("chatcmpl-x", created, Model::Gpt4oMini, "", finish, usage);
            let mut out = prefix.clone();
            empty.write_with_content(&mut out, |out| out.push_str(&content));
            prop_assert_eq!(out, prefix + &String::from_utf8(whole.to_bytes()).unwrap());
        }

        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_batch_input(&bytes, EP, LIMITS);
        }

        #[test]
        fn never_panics_on_jsonish(s in r#"(\{"custom_id":"[a-c]","method":"POST","url":"/v1/chat/completions","body":\{"model":"gpt-4o-mini","messages":\[[\{\}"a-z:,\[\]]{0,40}\]\}\}\n){0,5}"#) {
            let _ = parse_batch_input(s.as_bytes(), EP, LIMITS);
        }
    }
}
