//! HTTP plumbing shared by the endpoint modules: the response body type (whole or dribbled),
//! OpenAI-style JSON and error replies, and bounded, timed request-body reading.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::error::ApiError;
pub use crate::error::{bad_request, invalid_json, invalid_type, json_type, unrecognized_argument};

/// Longest time a client may take to send its request body, in real time.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A response body: all at once, or chunks from a task that paces them (slow bodies).
#[derive(Debug)]
pub enum Body {
    /// The whole body (taken on the first poll).
    Full(Option<Bytes>),
    /// Chunks as the pacing task sends them; ends when it drops its sender.
    Chunks(mpsc::Receiver<Bytes>, u64),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::Full(None)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Body::Chunks(rx, _) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Body::Chunks(..) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Chunks(_, len) => SizeHint::with_exact(*len),
        }
    }
}

/// Headers a reply usually carries (content type, request id, version, timing, organization
/// and the six `x-ratelimit-*`), so that adding them does not grow the map (which rehashes).
const REPLY_HEADERS: usize = 11;

/// A reply under construction: status, headers and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The headers, `content-type` first, then in the order they were added. They become the
    /// response's own map, so nothing is copied when it is sent.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: Bytes) -> Reply {
        let mut headers = HeaderMap::with_capacity(REPLY_HEADERS);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A JSON success (`application/json`).
    pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply::new(status, "application/json", body.into())
    }

    /// A serializable value as JSON.
    pub fn value<T: serde::Serialize>(value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(v) => Reply::json(200, v),
            Err(_) => Reply::error(&ApiError {
                status: 500,
                message: "The server had an error while processing your request. Sorry about that!"
                    .into(),
                kind: "server_error".into(),
                param: None,
                code: None,
            }),
        }
    }

    /// An OpenAI error envelope (`application/json; charset=utf-8`, facts §1).
    pub fn error(err: &ApiError) -> Reply {
        Reply::new(
            err.status,
            "application/json; charset=utf-8",
            Bytes::from(err.to_json()),
        )
    }

    /// Replaces the `content-type` (it keeps its place, first).
    pub fn set_content_type(&mut self, content_type: &'static str) {
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }

    /// Adds a header whose name and value are already built.
    pub fn header_value(mut self, name: &HeaderName, value: HeaderValue) -> Reply {
        self.push_header(name, value);
        self
    }

    /// Adds a header whose name and value are already built, in place (the hot paths add
    /// several without moving the reply for each).
    pub fn push_header(&mut self, name: &HeaderName, value: HeaderValue) {
        self.headers.append(name.clone(), value);
    }

    /// Adds a header with a built name and a text value; values that are not valid header text
    /// are skipped.
    pub fn header_text(self, name: &HeaderName, value: &str) -> Reply {
        match HeaderValue::from_str(value) {
            Ok(v) => self.header_value(name, v),
            Err(_) => self,
        }
    }

    /// Adds a header; values that are not valid header text are skipped.
    pub fn header(mut self, name: &'static str, value: impl AsRef<str>) -> Reply {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.append(HeaderName::from_static(name), v);
        }
        self
    }

    /// The hyper response, with `body` as given. `content-length` is left to hyper, which
    /// writes it from the body's exact size.
    pub fn into_response_with(self, body: Body) -> Response<Body> {
        let mut resp = Response::new(body);
        *resp.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *resp.headers_mut() = self.headers;
        resp
    }

    /// The hyper response with the whole body.
    pub fn into_response(mut self) -> Response<Body> {
        let body = Body::Full(Some(std::mem::take(&mut self.body)));
        self.into_response_with(body)
    }
}

/// The 413 for a body over `limit` bytes (wording **`[inferred]`**).
pub fn too_large(limit: usize) -> ApiError {
    ApiError {
        status: 413,
        message: format!("Request body too large: the limit for this endpoint is {limit} bytes."),
        kind: "invalid_request_error".into(),
        param: None,
        code: Some("request_too_large".into()),
    }
}

/// Reads the whole request body, refusing more than `limit` bytes (413 without reading a
/// body whose `content-length` already says so) and bodies slower than
/// [`BODY_READ_TIMEOUT`] (408).
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(e)) => Err(bad_request(
            format!("Could not read the request body: {e}"),
            None,
            None,
        )),
        Err(_) => Err(ApiError {
            status: 408,
            message: "The request body was not received in time.".into(),
            kind: "invalid_request_error".into(),
            param: None,
            code: Some("request_timeout".into()),
        }),
    }
}
