//! OpenAI error bodies as values: the `{"error":{message,type,param,code}}` envelope and a
//! builder for every case the model produces, with the wording of facts §2.

use std::time::Duration;

use serde::Serialize;
use tagstorm_core::tokens::Model;

use crate::headers::format_duration_ceil;

/// The rate-limit guide every 429 message points at (facts §2).
const RATE_LIMITS_URL: &str = "https://platform.openai.com/account/rate-limits";

/// One OpenAI error: an HTTP status and the body's four fields (facts §2, `ErrorResponse`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// HTTP status code.
    #[serde(skip)]
    pub status: u16,
    /// Human-readable message.
    pub message: String,
    /// The body's `type` field (`tokens`, `requests`, `invalid_request_error`, `server_error`…).
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter, if any.
    pub param: Option<String>,
    /// A machine-readable code, if any.
    pub code: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ApiError,
}

/// Which limit a rate-limited request hit, as named in the 429 message and `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitDimension {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Requests per day.
    RequestsPerDay,
}

impl LimitDimension {
    /// The phrase in the message: `requests per min (RPM)`.
    fn phrase(self) -> &'static str {
        match self {
            LimitDimension::Requests => "requests per min (RPM)",
            LimitDimension::Tokens => "tokens per min (TPM)",
            LimitDimension::RequestsPerDay => "requests per day (RPD)",
        }
    }

    /// The body's `type` (facts §2: `tokens` for TPM, `requests` for RPM; RPD is a request
    /// limit too).
    pub fn error_type(self) -> &'static str {
        match self {
            LimitDimension::Tokens => "tokens",
            LimitDimension::Requests | LimitDimension::RequestsPerDay => "requests",
        }
    }
}

impl ApiError {
    fn new(
        status: u16,
        message: String,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            message,
            kind: kind.to_owned(),
            param: param.map(str::to_owned),
            code: code.map(str::to_owned),
        }
    }

    /// The JSON body: `{"error":{"message":…,"type":…,"param":…,"code":…}}`.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and options into a String cannot fail.
        serde_json::to_string(&Envelope { error: self }).unwrap_or_default()
    }

    /// 429: a per-minute or per-day limit is exhausted (facts §2, TPM/RPM/RPD rows).
    pub fn rate_limited(
        model: Model,
        org: &str,
        dimension: LimitDimension,
        limit: u64,
        used: u64,
        requested: u64,
        retry_after: Duration,
    ) -> Self {
        let message = format!(
            "Rate limit reached for {model} in organization {org} on {}: Limit {limit}, Used {used}, Requested {requested}. Please try again in {}. Visit {RATE_LIMITS_URL} to learn more.",
            dimension.phrase(),
            format_duration_ceil(retry_after),
        );
        Self::new(
            429,
            message,
            dimension.error_type(),
            None,
            Some("rate_limit_exceeded"),
        )
    }

    /// 429: one request needs more tokens than the TPM limit holds (facts §2).
    pub fn request_too_large(model: Model, org: &str, limit: u64, requested: u64) -> Self {
        let message = format!(
            "Request too large for {model} in organization {org} on tokens per min (TPM): Limit {limit}, Requested {requested}. The input or output tokens must be reduced in order to run successfully. Visit {RATE_LIMITS_URL} to learn more."
        );
        Self::new(429, message, "tokens", None, Some("rate_limit_exceeded"))
    }

    /// 429: quota exhausted (facts §2, newer wording).
    pub fn insufficient_quota() -> Self {
        Self::new(
            429,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.".to_owned(),
            "insufficient_quota",
            None,
            Some("insufficient_quota"),
        )
    }

    /// 401: unknown API key; `masked_key` is shown as given (facts §2).
    pub fn invalid_api_key(masked_key: &str) -> Self {
        Self::new(
            401,
            format!(
                "Incorrect API key provided: {masked_key}. You can find your API key at https://platform.openai.com/account/api-keys."
            ),
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )
    }

    /// 404: unknown model (facts §2).
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        )
    }

    /// 400: a required parameter is missing (facts §2).
    pub fn missing_parameter(param: &str) -> Self {
        Self::new(
            400,
            format!("Missing required parameter: '{param}'."),
            "invalid_request_error",
            Some(param),
            Some("missing_required_parameter"),
        )
    }

    /// 400: a parameter has an unsupported value. The wording is **\[inferred\]**: facts §2
    /// gives no verbatim body for this case.
    pub fn invalid_value(param: &str, detail: &str) -> Self {
        Self::new(
            400,
            format!("Invalid value for '{param}': {detail}"),
            "invalid_request_error",
            Some(param),
            Some("invalid_value"),
        )
    }

    /// 400: a non-`.jsonl` upload with `purpose=batch` (facts §4).
    pub fn invalid_batch_file_format() -> Self {
        Self::new(
            400,
            "Invalid file format for Batch API. Must be .jsonl".to_owned(),
            "invalid_request_error",
            None,
            None,
        )
    }

    /// 404: no such object. The wording is **\[inferred\]** (facts list no body for unknown
    /// file or batch ids); `kind` is `File` or `Batch`.
    pub fn no_such_object(kind: &str, id: &str) -> Self {
        Self::new(
            404,
            format!("No such {kind} object: {id}"),
            "invalid_request_error",
            Some("id"),
            None,
        )
    }

    /// 409: a batch cannot be cancelled from its current status. Status and wording are
    /// **\[inferred\]** (facts §5: allowed cancel source states are unconfirmed); 409 is
    /// retried by the SDK, which is harmless because the state will not change back.
    pub fn cannot_cancel(status: &str) -> Self {
        Self::new(
            409,
            format!("Cannot cancel a batch with status '{status}'."),
            "invalid_request_error",
            None,
            None,
        )
    }

    /// 500: server error (facts §2, the short wording).
    pub fn server_error() -> Self {
        Self::new(
            500,
            "The server had an error while processing your request. Sorry about that!".to_owned(),
            "server_error",
            None,
            None,
        )
    }

    /// 503: model overloaded (facts §2); `request_id` fills the "(Please include …)" part.
    pub fn overloaded(request_id: &str) -> Self {
        Self::new(
            503,
            format!(
                "That model is currently overloaded with other requests. You can retry your request, or contact us through our help center at help.openai.com if the error persists. (Please include the request ID {request_id} in your message.)"
            ),
            "server_error",
            None,
            None,
        )
    }
}

/// A 400 `invalid_request_error` with the given message and param.
pub fn bad_request(
    message: impl Into<String>,
    param: Option<&str>,
    code: Option<&str>,
) -> ApiError {
    ApiError {
        status: 400,
        message: message.into(),
        kind: "invalid_request_error".into(),
        param: param.map(str::to_owned),
        code: code.map(str::to_owned),
    }
}

/// The 400 for a body that is not JSON (OpenAI's wording, **`[obs]`** in common client logs).
pub fn invalid_json() -> ApiError {
    bad_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
        None,
        None,
    )
}

/// The JSON type name used in "Invalid type" messages.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        serde_json::Value::Number(_) => "a decimal",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// 400: `Invalid type for 'param': expected X, but got Y instead.` (facts §1 wording).
pub fn invalid_type(param: &str, expected: &str, got: &serde_json::Value) -> ApiError {
    bad_request(
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            json_type(got)
        ),
        Some(param),
        Some("invalid_type"),
    )
}

/// 400: an unknown top-level body key (OpenAI's wording).
pub fn unrecognized_argument(key: &str) -> ApiError {
    bad_request(
        format!("Unrecognized request argument supplied: {key}"),
        None,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(err: ApiError, status: u16, expect: &str) {
        assert_eq!(err.status, status);
        assert_eq!(err.to_json(), expect);
    }

    #[test]
    fn bodies() {
        check(
            ApiError::rate_limited(
                Model::Gpt4o,
                "org-X",
                LimitDimension::Tokens,
                30000,
                29937,
                385,
                Duration::from_millis(644),
            ),
            429,
            r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-X on tokens per min (TPM): Limit 30000, Used 29937, Requested 385. Please try again in 644ms. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        check(
            ApiError::rate_limited(
                Model::Gpt4oMini,
                "org-X",
                LimitDimension::Requests,
                3,
                3,
                1,
                Duration::from_secs(20),
            ),
            429,
            r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-X on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        check(
            ApiError::rate_limited(
                Model::Gpt4oMini,
                "org-X",
                LimitDimension::RequestsPerDay,
                1000,
                1000,
                1,
                Duration::from_millis(86_400),
            ),
            429,
            r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-X on requests per day (RPD): Limit 1000, Used 1000, Requested 1. Please try again in 1m26.4s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        check(
            ApiError::request_too_large(Model::Gpt4o, "org-X", 30000, 61337),
            429,
            r#"{"error":{"message":"Request too large for gpt-4o in organization org-X on tokens per min (TPM): Limit 30000, Requested 61337. The input or output tokens must be reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        check(
            ApiError::invalid_api_key("DEADBEEF"),
            401,
            r#"{"error":{"message":"Incorrect API key provided: DEADBEEF. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        check(
            ApiError::model_not_found("does-not-exist"),
            404,
            r#"{"error":{"message":"The model `does-not-exist` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
        );
        check(
            ApiError::missing_parameter("input_file_id"),
            400,
            r#"{"error":{"message":"Missing required parameter: 'input_file_id'.","type":"invalid_request_error","param":"input_file_id","code":"missing_required_parameter"}}"#,
        );
        check(
            ApiError::invalid_batch_file_format(),
            400,
            r#"{"error":{"message":"Invalid file format for Batch API. Must be .jsonl","type":"invalid_request_error","param":null,"code":null}}"#,
        );
        check(
            ApiError::server_error(),
            500,
            r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
        );
        // Facts §2, "Overloaded" row: type server_error, param and code null.
        check(
            ApiError::overloaded("req_1"),
            503,
            r#"{"error":{"message":"That model is currently overloaded with other requests. You can retry your request, or contact us through our help center at help.openai.com if the error persists. (Please include the request ID req_1 in your message.)","type":"server_error","param":null,"code":null}}"#,
        );
        // Facts §2, "Quota" row, newer message.
        check(
            ApiError::insufficient_quota(),
            429,
            r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
    }
}
