//! The mock's own endpoints: `GET`/`POST /_mock/config` (read or live-update the `[upstream]`
//! section and the transport faults), `GET /_mock/stats` (JSON counters) and `GET /metrics`
//! (the same counters in Prometheus text format). Also the lock-free request counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::batch::BatchStatus;
use crate::config::{ConfigError, UpstreamConfig};
use crate::error::ApiError;
use crate::server::config::TransportConfig;
use crate::server::http::{Reply, invalid_json, read_body, unrecognized_argument};
use crate::server::{Delivery, State};

/// The endpoints counted in the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/files`.
    FilesCreate,
    /// `GET /v1/files`.
    FilesList,
    /// `GET /v1/files/{id}`.
    FilesRetrieve,
    /// `DELETE /v1/files/{id}`.
    FilesDelete,
    /// `GET /v1/files/{id}/content`.
    FilesContent,
    /// `POST /v1/batches`.
    BatchesCreate,
    /// `GET /v1/batches/{id}`.
    BatchesRetrieve,
    /// `POST /v1/batches/{id}/cancel`.
    BatchesCancel,
    /// `GET /v1/batches`.
    BatchesList,
    /// `GET /v1/models[/{id}]`.
    Models,
    /// `/_mock/config`.
    MockConfig,
    /// `/_mock/stats`.
    MockStats,
    /// `/metrics`.
    Metrics,
    /// Anything else: a 404, a request too malformed to route, which hyper answered 400, 414
    /// or 431 itself, or a request head that did not arrive in time.
    Unknown,
}

const ENDPOINTS: [Endpoint; 15] = [
    Endpoint::ChatCompletions,
    Endpoint::FilesCreate,
    Endpoint::FilesList,
    Endpoint::FilesRetrieve,
    Endpoint::FilesDelete,
    Endpoint::FilesContent,
    Endpoint::BatchesCreate,
    Endpoint::BatchesRetrieve,
    Endpoint::BatchesCancel,
    Endpoint::BatchesList,
    Endpoint::Models,
    Endpoint::MockConfig,
    Endpoint::MockStats,
    Endpoint::Metrics,
    Endpoint::Unknown,
];

impl Endpoint {
    /// The label in stats and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::FilesCreate => "files_create",
            Endpoint::FilesList => "files_list",
            Endpoint::FilesRetrieve => "files_retrieve",
            Endpoint::FilesDelete => "files_delete",
            Endpoint::FilesContent => "files_content",
            Endpoint::BatchesCreate => "batches_create",
            Endpoint::BatchesRetrieve => "batches_retrieve",
            Endpoint::BatchesCancel => "batches_cancel",
            Endpoint::BatchesList => "batches_list",
            Endpoint::Models => "models",
            Endpoint::MockConfig => "mock_config",
            Endpoint::MockStats => "mock_stats",
            Endpoint::Metrics => "metrics",
            Endpoint::Unknown => "unknown",
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response with this status.
    Status(u16),
    /// Held, then closed without a response.
    Timeout,
    /// The connection was reset.
    Reset,
    /// The client went away before its answer was ready (it closed the connection during the
    /// modelled latency, or while sending its body); the model may have counted the request.
    Abandoned,
    /// The client began a request but did not finish its head within the header read timeout,
    /// or within [`SHUTDOWN_HEAD_GRACE`](super::http::SHUTDOWN_HEAD_GRACE) once shutdown had
    /// begun; the connection was closed without an answer. Always [`Endpoint::Unknown`]: there
    /// was no complete request line to route.
    HeaderTimeout,
}

const STATUSES: [&str; 17] = [
    "200",
    "400",
    "401",
    "404",
    "405",
    "408",
    "409",
    "413",
    "429",
    "500",
    "503",
    "timeout",
    "reset",
    "other",
    "2xx",
    "abandoned",
    "header_timeout",
];

fn slot(o: Outcome) -> usize {
    match o {
        Outcome::Status(200) => 0,
        Outcome::Status(400) => 1,
        Outcome::Status(401) => 2,
        Outcome::Status(404) => 3,
        Outcome::Status(405) => 4,
        Outcome::Status(408) => 5,
        Outcome::Status(409) => 6,
        Outcome::Status(413) => 7,
        Outcome::Status(429) => 8,
        Outcome::Status(500) => 9,
        Outcome::Status(503) => 10,
        Outcome::Timeout => 11,
        Outcome::Reset => 12,
        Outcome::Abandoned => 15,
        Outcome::HeaderTimeout => 16,
        Outcome::Status(s) if (200..300).contains(&s) => 14,
        Outcome::Status(_) => 13,
    }
}

const DIMENSIONS: [&str; 4] = [
    "requests",
    "tokens",
    "requests_per_day",
    "request_too_large",
];

/// Request counters: one atomic per (endpoint, status) and per 429 dimension, so counting costs
/// one relaxed increment and no lock.
#[derive(Debug)]
pub struct Stats {
    requests: [[AtomicU64; STATUSES.len()]; ENDPOINTS.len()],
    limited: [AtomicU64; DIMENSIONS.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            limited: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    /// Counts one request.
    pub fn record(&self, endpoint: Endpoint, outcome: Outcome) {
        let e = ENDPOINTS
            .iter()
            .position(|x| *x == endpoint)
            .unwrap_or(ENDPOINTS.len() - 1);
        self.requests[e][slot(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one 429 by dimension (0 requests, 1 tokens, 2 requests per day, 3 too large).
    pub fn rate_limited(&self, dimension: usize) {
        if let Some(c) = self.limited.get(dimension) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn nonzero(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (e, row) in self.requests.iter().enumerate() {
            for (s, c) in row.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    out.push((ENDPOINTS[e].as_str(), STATUSES[s], v));
                }
            }
        }
        out
    }
}

/// Batches by current status, over every organization.
fn batch_counts(state: &State) -> BTreeMap<&'static str, u64> {
    let now = state.clock.now();
    let counts = state.lock().upstream.batch_status_counts(now);
    BatchStatus::ALL
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str(), n))
        .collect()
}

/// `GET /_mock/stats`.
pub(crate) fn stats(state: &State) -> Reply {
    let mut requests: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut total = 0;
    for (e, s, v) in state.stats.nonzero() {
        requests.entry(e).or_default().insert(s, v);
        total += v;
    }
    let limited: BTreeMap<&str, u64> = DIMENSIONS
        .iter()
        .zip(&state.stats.limited)
        .map(|(d, c)| (*d, c.load(Ordering::Relaxed)))
        .collect();
    Reply::value(&json!({
        "requests_total": total,
        "requests": requests,
        "rate_limited": limited,
        "batches": batch_counts(state),
        "speedup": state.clock.speedup(),
        "uptime_s": state.clock.real_elapsed().as_secs_f64(),
        "model_time_s": state.clock.now().since_epoch().as_secs_f64(),
    }))
}

/// `GET /metrics`: Prometheus text exposition format 0.0.4.
pub(crate) fn metrics(state: &State) -> Reply {
    let mut out = String::new();
    out.push_str("# HELP mock_openai_requests_total Requests served, by endpoint and status (timeout and reset for injected transport faults, abandoned when the client left before its answer, header_timeout when a request head did not arrive in time, by the header read timeout or the shutdown grace).\n# TYPE mock_openai_requests_total counter\n");
    for (e, s, v) in state.stats.nonzero() {
        let _ = writeln!(
            out,
            "mock_openai_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {v}"
        );
    }
    out.push_str("# HELP mock_openai_rate_limited_total 429 responses, by the limit that denied.\n# TYPE mock_openai_rate_limited_total counter\n");
    for (d, c) in DIMENSIONS.iter().zip(&state.stats.limited) {
        let _ = writeln!(
            out,
            "mock_openai_rate_limited_total{{dimension=\"{d}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP mock_openai_batches Batches, by current status.\n# TYPE mock_openai_batches gauge\n");
    for (s, v) in batch_counts(state) {
        let _ = writeln!(out, "mock_openai_batches{{status=\"{s}\"}} {v}");
    }
    out.push_str("# HELP mock_openai_model_time_seconds Model time elapsed (real time × speedup).\n# TYPE mock_openai_model_time_seconds gauge\n");
    let _ = writeln!(
        out,
        "mock_openai_model_time_seconds {}",
        state.clock.now().since_epoch().as_secs_f64()
    );
    let mut reply = Reply::json(200, out);
    reply.set_content_type("text/plain; version=0.0.4; charset=utf-8");
    reply
}

fn config_error(e: ConfigError) -> ApiError {
    let (param, message) = match &e {
        ConfigError::Invalid { field, .. } => (Some(field.clone()), e.to_string()),
        ConfigError::Parse { section, .. } => (Some((*section).to_owned()), e.to_string()),
    };
    ApiError {
        status: 400,
        message,
        kind: "invalid_request_error".into(),
        param,
        code: Some("invalid_config".into()),
    }
}

/// The first `nan` or `inf` in a TOML body, as an error naming its dotted field (the same
/// path whichever spelling of the table the body used); `path` is the table's own.
fn non_finite(table: &toml::Table, path: &mut String) -> Option<ConfigError> {
    fn check(v: &toml::Value, path: &mut String) -> Option<ConfigError> {
        match v {
            toml::Value::Float(f) if !f.is_finite() => Some(ConfigError::Invalid {
                field: path.clone(),
                reason: format!("must be a finite number, got {f}"),
            }),
            toml::Value::Table(t) => non_finite(t, path),
            toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                let found = check(v, path);
                path.truncate(len);
                found
            }),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k);
        let found = check(v, path);
        path.truncate(len);
        found
    })
}

/// Merges `patch` into `base` key by key; `deep` names keys whose objects merge one level down.
fn merge(base: &mut Map<String, Value>, patch: &Map<String, Value>, deep: &[&str]) {
    for (k, v) in patch {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(p)) if deep.contains(&k.as_str()) => {
                merge(b, p, &[]);
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Applies `patch` to `current`, naming the first key whose value does not fit.
fn patched<T: serde::Serialize + serde::de::DeserializeOwned>(
    current: &T,
    patch: &Value,
    section: &str,
    deep: &[&str],
) -> Result<T, ConfigError> {
    let invalid = |field: String, reason: String| ConfigError::Invalid { field, reason };
    let Value::Object(patch) = patch else {
        return Err(invalid(section.to_owned(), "must be an object".to_owned()));
    };
    let Ok(Value::Object(base)) = serde_json::to_value(current) else {
        return Err(invalid(
            section.to_owned(),
            "current value cannot be read".to_owned(),
        ));
    };
    let mut all = base.clone();
    merge(&mut all, patch, deep);
    match serde_json::from_value::<T>(Value::Object(all)) {
        Ok(v) => Ok(v),
        Err(e) => {
            // Find the key at fault by applying the patch's keys one at a time.
            for (k, v) in patch {
                let mut one = base.clone();
                let single: Map<String, Value> = [(k.clone(), v.clone())].into_iter().collect();
                merge(&mut one, &single, deep);
                if let Err(e1) = serde_json::from_value::<T>(Value::Object(one)) {
                    return Err(invalid(format!("{section}.{k}"), e1.to_string()));
                }
            }
            Err(invalid(section.to_owned(), e.to_string()))
        }
    }
}

/// `GET /_mock/config` shows the sections in force; `POST` merges a JSON (or TOML) body
/// `{"upstream": {...}, "transport": {...}}` into them (`transport` may also be spelled
/// `mock_server.transport`, as in the startup file). Top-level keys of each section replace
/// the current value, except `upstream.batch`, whose keys merge. Nothing changes unless the
/// whole result validates; a bad value is a 400 naming the field.
pub(crate) async fn config(
    state: &State,
    req: Request<Incoming>,
    shutdown: &watch::Receiver<bool>,
) -> Delivery {
    if req.method() == hyper::Method::POST {
        let bytes = match read_body(req, state.limits.json, shutdown).await {
            Ok(b) => b,
            Err(e) => return e.into(),
        };
        let patch: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => match std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
            {
                Some(t) => {
                    // JSON has no `nan` or `inf`: converted, they would be refused as `null`.
                    if let Some(e) = non_finite(&t, &mut String::new()) {
                        return config_error(e).into();
                    }
                    match serde_json::to_value(t) {
                        Ok(v) => v,
                        Err(_) => return invalid_json().into(),
                    }
                }
                None => return invalid_json().into(),
            },
        };
        let Value::Object(mut patch) = patch else {
            return config_error(ConfigError::Invalid {
                field: "body".into(),
                reason: "must be an object with `upstream` and/or `transport`".into(),
            })
            .into();
        };
        // The startup file's own spelling, `[mock_server.transport]`, is taken as `transport`,
        // so a section can be pasted from the file as it is.
        if let Some(ms) = patch.remove("mock_server") {
            let Value::Object(mut ms) = ms else {
                return config_error(ConfigError::Invalid {
                    field: "mock_server".into(),
                    reason: "must be an object with `transport`".into(),
                })
                .into();
            };
            if let Some(k) = ms.keys().find(|k| *k != "transport") {
                return unrecognized_argument(&format!("mock_server.{k}")).into();
            }
            if let Some(t) = ms.remove("transport") {
                if patch.contains_key("transport") {
                    return config_error(ConfigError::Invalid {
                        field: "mock_server.transport".into(),
                        reason: "given twice, as `transport` and as `mock_server.transport`".into(),
                    })
                    .into();
                }
                patch.insert("transport".to_owned(), t);
            }
        }
        if let Some(k) = patch.keys().find(|k| *k != "upstream" && *k != "transport") {
            return unrecognized_argument(k).into();
        }
        let mut b = state.lock();
        let upstream = match patch.get("upstream") {
            Some(p) => {
                match patched::<UpstreamConfig>(b.upstream.config(), p, "upstream", &["batch"])
                    .and_then(|c| c.validate().map(|()| c))
                {
                    Ok(c) => Some(c),
                    Err(e) => return config_error(e).into(),
                }
            }
            None => None,
        };
        let transport = match patch.get("transport") {
            Some(p) => {
                match patched::<TransportConfig>(&b.transport, p, "mock_server.transport", &[])
                    .and_then(|c| c.validate().map(|()| c))
                {
                    Ok(c) => Some(c),
                    Err(e) => return config_error(e).into(),
                }
            }
            None => None,
        };
        if let Some(c) = upstream {
            if let Err(e) = b.upstream.set_config(c) {
                return config_error(e).into();
            }
        }
        if let Some(t) = transport {
            // Like the upstream scripts, a new transport script counts from now.
            if t.after != b.transport.after || t.sequence != b.transport.sequence {
                b.reset_transport_script();
            }
            b.transport = t;
        }
        tracing::info!("configuration updated through /_mock/config");
    }
    let b = state.lock();
    Reply::value(&json!({"upstream": b.upstream.config(), "transport": b.transport})).into()
}
