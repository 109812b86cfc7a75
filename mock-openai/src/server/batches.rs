//! The Batch API: `POST /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`,
//! `GET /v1/batches?after=&limit=`. Request problems are 4xx; problems in the input file make
//! the created batch go `failed` (facts §5). Timestamps are moved to real time.

use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::watch;

use crate::batch::{Batch, BatchList};
use crate::error::ApiError;
use crate::server::http::{
    Reply, bad_request, invalid_json, invalid_type, read_body, unrecognized_argument,
};
use crate::server::{Backend, Delivery, OrgEntry, State, query};

const KNOWN_KEYS: [&str; 5] = [
    "input_file_id",
    "endpoint",
    "completion_window",
    "metadata",
    "output_expires_after",
];

/// The batch with its timestamps on the wall clock and its stored metadata.
fn real_batch(state: &State, b: &Backend, mut batch: Batch) -> Batch {
    let epoch = b.upstream.config().epoch_unix_s;
    let conv = |t: u64| state.clock.unix_from_model(t, epoch);
    batch.created_at = state.clock.unix_from_model(batch.created_at, epoch);
    for t in [
        &mut batch.in_progress_at,
        &mut batch.expires_at,
        &mut batch.finalizing_at,
        &mut batch.completed_at,
        &mut batch.failed_at,
        &mut batch.expired_at,
        &mut batch.cancelling_at,
        &mut batch.cancelled_at,
    ] {
        *t = t.map(conv);
    }
    batch.metadata = b.metadata.get(&batch.id).cloned();
    batch
}

fn string_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(ApiError::missing_parameter(key)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid_type(key, "a string", other)),
    }
}

fn check_metadata(v: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            if m.len() > 16 {
                return Err(ApiError::invalid_value(
                    "metadata",
                    "at most 16 key-value pairs are allowed.",
                ));
            }
            for (k, v) in m {
                if k.chars().count() > 64 {
                    return Err(ApiError::invalid_value(
                        "metadata",
                        "keys may be at most 64 characters.",
                    ));
                }
                match v {
                    Value::String(s) if s.chars().count() <= 512 => {}
                    Value::String(_) => {
                        return Err(ApiError::invalid_value(
                            "metadata",
                            "values may be at most 512 characters.",
                        ));
                    }
                    other => return Err(invalid_type(&format!("metadata.{k}"), "a string", other)),
                }
            }
            Ok(Some(Value::Object(m.clone())))
        }
        Some(other) => Err(invalid_type("metadata", "an object", other)),
    }
}

/// `output_expires_after`: `{"anchor": "created_at", "seconds": 3600..=2592000}` (facts §5):
/// how long the result files live after their creation, which their `expires_at` shows (the
/// mock keeps them for as long as it runs).
fn check_output_expires_after(v: Option<&Value>) -> Result<Option<Duration>, ApiError> {
    const KEY: &str = "output_expires_after";
    let o = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => return Err(invalid_type(KEY, "an object", other)),
    };
    let anchor = format!("{KEY}.anchor");
    match o.get("anchor") {
        None | Some(Value::Null) => return Err(ApiError::missing_parameter(&anchor)),
        Some(Value::String(a)) if a == "created_at" => {}
        Some(Value::String(a)) => {
            return Err(ApiError::invalid_value(
                &anchor,
                &format!("'{a}'. Supported values are: 'created_at'."),
            ));
        }
        Some(other) => return Err(invalid_type(&anchor, "a string", other)),
    }
    let seconds = format!("{KEY}.seconds");
    match o.get("seconds") {
        None | Some(Value::Null) => Err(ApiError::missing_parameter(&seconds)),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => match n.as_u64() {
            Some(s @ 3600..=2_592_000) => Ok(Some(Duration::from_secs(s))),
            _ => Err(ApiError::invalid_value(
                &seconds,
                &format!("expected an integer between 3600 and 2592000, got {n}."),
            )),
        },
        Some(other) => Err(invalid_type(&seconds, "an integer", other)),
    }
}

/// `POST /v1/batches`.
pub(crate) async fn create(
    state: &State,
    org: &OrgEntry,
    req: Request<Incoming>,
    shutdown: &watch::Receiver<bool>,
) -> Delivery {
    let bytes = match read_body(req, state.limits.json, shutdown).await {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return invalid_json().into();
    };
    let Some(obj) = value.as_object() else {
        return bad_request(
            "Invalid type for the request body: expected an object.",
            None,
            Some("invalid_type"),
        )
        .into();
    };
    if let Some(k) = obj.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return unrecognized_argument(k).into();
    }
    let fields = string_field(obj, "input_file_id").and_then(|f| {
        Ok((
            f,
            string_field(obj, "endpoint")?,
            string_field(obj, "completion_window")?,
        ))
    });
    let (file, endpoint, window) = match fields {
        Ok(f) => f,
        Err(e) => return e.into(),
    };
    let metadata = match check_metadata(obj.get("metadata")) {
        Ok(m) => m,
        Err(e) => return e.into(),
    };
    let output_ttl = match check_output_expires_after(obj.get("output_expires_after")) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let now = state.clock.now();
    let mut b = state.lock();
    match b
        .upstream
        .create_batch(now, org.org, file, endpoint, window)
    {
        Ok(batch) => {
            if let Some(m) = metadata {
                b.metadata.insert(batch.id.clone(), m);
            }
            if let Some(ttl) = output_ttl {
                // The batch was just created: it cannot have ended yet.
                let _ = b.upstream.set_batch_output_ttl(org.org, &batch.id, ttl);
            }
            Reply::value(&real_batch(state, &b, batch)).into()
        }
        Err(e) => e.into(),
    }
}

/// `GET /v1/batches/{id}`.
pub(crate) fn retrieve(state: &State, org: &OrgEntry, id: &str) -> Delivery {
    let now = state.clock.now();
    let mut b = state.lock();
    match b.upstream.retrieve_batch(now, org.org, id) {
        Ok(batch) => Reply::value(&real_batch(state, &b, batch)).into(),
        Err(e) => e.into(),
    }
}

/// `POST /v1/batches/{id}/cancel`.
pub(crate) fn cancel(state: &State, org: &OrgEntry, id: &str) -> Delivery {
    let now = state.clock.now();
    let mut b = state.lock();
    match b.upstream.cancel_batch(now, org.org, id) {
        Ok(batch) => Reply::value(&real_batch(state, &b, batch)).into(),
        Err(e) => e.into(),
    }
}

/// `GET /v1/batches`.
pub(crate) fn list(state: &State, org: &OrgEntry, query: Option<&str>) -> Delivery {
    let (mut after, mut limit) = (None, None);
    for (k, v) in query::pairs(query) {
        match k.as_str() {
            "after" => after = Some(v),
            "limit" => match query::limit(&v, 100) {
                Ok(n) => limit = Some(n),
                Err(e) => return e.into(),
            },
            _ => {}
        }
    }
    let now = state.clock.now();
    let mut b = state.lock();
    let page = b
        .upstream
        .list_batches(now, org.org, after.as_deref(), limit);
    let data: Vec<Batch> = page
        .data
        .into_iter()
        .map(|x| real_batch(state, &b, x))
        .collect();
    Reply::value(&BatchList { data, ..page }).into()
}
