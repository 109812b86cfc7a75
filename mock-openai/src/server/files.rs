//! The Files API: `POST /v1/files` (multipart `file` + `purpose`),
//! `GET /v1/files?purpose=&limit=&order=&after=`, `GET /v1/files/{id}`,
//! `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`, with timestamps moved to real time.
//! An upload's optional `expires_after` comes as the form fields `expires_after[anchor]` and
//! `expires_after[seconds]`.

use std::time::Duration;

use bytes::Bytes;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::files::{FileList, FileListQuery, FileObject, MAX_LIST_FILES};
use crate::server::http::{Reply, bad_request, read_body};
use crate::server::multipart;
use crate::server::{Delivery, OrgEntry, State, query};

/// A file object with its timestamps on the wall clock (see [`crate::server::clock`]).
pub(crate) fn real_file(state: &State, epoch: u64, mut f: FileObject) -> FileObject {
    f.created_at = state.clock.unix_from_model(f.created_at, epoch);
    f.expires_at = f.expires_at.map(|t| state.clock.unix_from_model(t, epoch));
    f
}

/// `POST /v1/files`.
pub(crate) async fn create(
    state: &State,
    org: &OrgEntry,
    req: Request<Incoming>,
    shutdown: &watch::Receiver<bool>,
) -> Delivery {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let boundary = match multipart::boundary(&content_type) {
        Ok(b) => b,
        Err(e) => return bad_request(format!("Invalid file upload: {e}."), None, None).into(),
    };
    let body = match read_body(req, state.limits.upload, shutdown).await {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let parts = match multipart::parse(&body, &boundary) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("Invalid file upload: {e}."), None, None).into(),
    };
    let Some(file) = parts.iter().find(|p| p.name == "file") else {
        return ApiError::missing_parameter("file").into();
    };
    let Some(purpose) = parts.iter().find(|p| p.name == "purpose") else {
        return ApiError::missing_parameter("purpose").into();
    };
    let Ok(purpose) = std::str::from_utf8(&body[purpose.data.clone()]).map(|p| p.trim().to_owned())
    else {
        return ApiError::invalid_value("purpose", "must be text.").into();
    };
    let expires_after = match expires_after(&parts, &body) {
        Ok(e) => e,
        Err(e) => return e.into(),
    };
    let filename = file.filename.clone().unwrap_or_else(|| "file".to_owned());
    // A slice of the request body: stored as is, no copy.
    let data: Bytes = body.slice(file.data.clone());
    drop(body);
    let now = state.clock.now();
    let mut b = state.lock();
    let epoch = b.upstream.config().epoch_unix_s;
    match b
        .upstream
        .upload_file_expiring(now, org.org, &filename, &purpose, data, expires_after)
    {
        Ok(f) => Reply::value(&real_file(state, epoch, f)).into(),
        Err(e) => e.into(),
    }
}

/// The optional `expires_after` of an upload, sent as the form fields
/// `expires_after[anchor]` (`created_at`) and `expires_after[seconds]` (3600..=2592000, facts
/// §4), as the SDK sends it; `None` when neither is there.
fn expires_after(parts: &[multipart::Part], body: &Bytes) -> Result<Option<Duration>, ApiError> {
    const ANCHOR: &str = "expires_after.anchor";
    const SECONDS: &str = "expires_after.seconds";
    let field = |name: &str, param: &str| -> Result<Option<String>, ApiError> {
        match parts.iter().find(|p| p.name == name) {
            None => Ok(None),
            Some(p) => std::str::from_utf8(&body[p.data.clone()])
                .map(|v| Some(v.trim().to_owned()))
                .map_err(|_| ApiError::invalid_value(param, "must be text.")),
        }
    };
    let anchor = field("expires_after[anchor]", ANCHOR)?;
    let seconds = field("expires_after[seconds]", SECONDS)?;
    let (anchor, seconds) = match (anchor, seconds) {
        (None, None) => return Ok(None),
        (None, Some(_)) => return Err(ApiError::missing_parameter(ANCHOR)),
        (Some(_), None) => return Err(ApiError::missing_parameter(SECONDS)),
        (Some(a), Some(s)) => (a, s),
    };
    if anchor != "created_at" {
        return Err(ApiError::invalid_value(
            ANCHOR,
            &format!("'{anchor}'. Supported values are: 'created_at'."),
        ));
    }
    match seconds.parse::<u64>() {
        Ok(n @ 3600..=2_592_000) => Ok(Some(Duration::from_secs(n))),
        _ => Err(ApiError::invalid_value(
            SECONDS,
            &format!("expected an integer between 3600 and 2592000, got {seconds}."),
        )),
    }
}

/// Reads `purpose`, `after`, `limit` (1..=10,000) and `order` (`asc` or `desc`) from a query
/// string (facts §4); other keys are ignored.
fn list_query(query: Option<&str>) -> Result<FileListQuery, ApiError> {
    let mut q = FileListQuery::default();
    for (k, v) in query::pairs(query) {
        match k.as_str() {
            "purpose" => q.purpose = Some(v),
            "after" => q.after = Some(v),
            "limit" => q.limit = Some(query::limit(&v, MAX_LIST_FILES)?),
            "order" => q.order = query::order(&v)?,
            _ => {}
        }
    }
    Ok(q)
}

/// `GET /v1/files`.
pub(crate) fn list(state: &State, org: &OrgEntry, query: Option<&str>) -> Delivery {
    let q = match list_query(query) {
        Ok(q) => q,
        Err(e) => return e.into(),
    };
    let now = state.clock.now();
    let mut b = state.lock();
    let epoch = b.upstream.config().epoch_unix_s;
    let page = b.upstream.list_files(now, org.org, &q);
    let data: Vec<FileObject> = page
        .data
        .into_iter()
        .map(|f| real_file(state, epoch, f))
        .collect();
    Reply::value(&FileList { data, ..page }).into()
}

/// `GET /v1/files/{id}`.
pub(crate) fn retrieve(state: &State, org: &OrgEntry, id: &str) -> Delivery {
    let now = state.clock.now();
    let mut b = state.lock();
    let epoch = b.upstream.config().epoch_unix_s;
    match b.upstream.retrieve_file(now, org.org, id) {
        Ok(f) => Reply::value(&real_file(state, epoch, f)).into(),
        Err(e) => e.into(),
    }
}

/// `DELETE /v1/files/{id}`.
pub(crate) fn delete(state: &State, org: &OrgEntry, id: &str) -> Delivery {
    let now = state.clock.now();
    match state.lock().upstream.delete_file(now, org.org, id) {
        Ok(d) => Reply::value(&d).into(),
        Err(e) => e.into(),
    }
}

/// `GET /v1/files/{id}/content`: raw bytes (`application/octet-stream`; OpenAI's content type
/// is unconfirmed, facts §4).
pub(crate) fn content(state: &State, org: &OrgEntry, id: &str) -> Delivery {
    let now = state.clock.now();
    let bytes = match state.lock().upstream.file_content(now, org.org, id) {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let mut reply = Reply::json(200, bytes);
    reply.set_content_type("application/octet-stream");
    reply.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::ListOrder;

    #[test]
    fn list_queries() {
        assert_eq!(list_query(None).unwrap(), FileListQuery::default());
        assert_eq!(
            list_query(Some("purpose=batch&order=asc&limit=10000&after=file-1&x=y")).unwrap(),
            FileListQuery {
                purpose: Some("batch".into()),
                limit: Some(10_000),
                order: ListOrder::Asc,
                after: Some("file-1".into()),
            }
        );
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("order=newest", "order"),
            ("order=", "order"),
        ] {
            let e = list_query(Some(q)).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{q}");
        }
    }
}
