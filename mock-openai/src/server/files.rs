//! The Files API: `POST /v1/files` (multipart `file` + `purpose`), `GET /v1/files/{id}`,
//! `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`, with timestamps moved to real time.

use bytes::Bytes;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;

use crate::error::ApiError;
use crate::files::FileObject;
use crate::server::http::{Reply, bad_request, read_body};
use crate::server::multipart;
use crate::server::{Delivery, OrgEntry, State};

/// A file object with its timestamps on the wall clock (see [`crate::server::clock`]).
pub(crate) fn real_file(state: &State, epoch: u64, mut f: FileObject) -> FileObject {
    f.created_at = state.clock.unix_from_model(f.created_at, epoch);
    f.expires_at = f.expires_at.map(|t| state.clock.unix_from_model(t, epoch));
    f
}

/// `POST /v1/files`.
pub(crate) async fn create(state: &State, org: &OrgEntry, req: Request<Incoming>) -> Delivery {
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
    let body = match read_body(req, state.limits.upload).await {
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
    let filename = file.filename.clone().unwrap_or_else(|| "file".to_owned());
    let bytes: Bytes = body.slice(file.data.clone());
    let data = Vec::from(bytes);
    drop(body);
    let now = state.clock.now();
    let mut b = state.lock();
    let epoch = b.upstream.config().epoch_unix_s;
    match b
        .upstream
        .upload_file(now, org.org, &filename, &purpose, data)
    {
        Ok(f) => Reply::value(&real_file(state, epoch, f)).into(),
        Err(e) => e.into(),
    }
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
        Ok(b) => Bytes::copy_from_slice(b),
        Err(e) => return e.into(),
    };
    let mut reply = Reply::json(200, bytes);
    reply.set_content_type("application/octet-stream");
    reply.into()
}
