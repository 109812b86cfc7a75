//! HTTP plumbing shared by the endpoint modules: the response body type (whole or dribbled),
//! OpenAI-style JSON and error replies, and bounded, timed request-body reading.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, watch};

use crate::error::ApiError;
pub use crate::error::{bad_request, invalid_json, invalid_type, json_type, unrecognized_argument};
use crate::headers::write_duration;

/// Longest time a client may take to send its request body, in real time.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest time a body still being read when shutdown begins may take to finish, in real
/// time; then it is refused with [`BODY_READ_TIMEOUT`]'s 408. Graceful shutdown waits for
/// every request in flight, so without this a client that stalled mid-body would hold Ctrl-C
/// up for the whole read timeout; a second is enough for one that is still sending a normal
/// body to finish it.
pub const SHUTDOWN_BODY_GRACE: Duration = Duration::from_secs(1);

/// Longest time a request head still arriving when shutdown begins may take to finish, in real
/// time; then its connection is closed without an answer, as the header read timeout would
/// close it, and counted the same way (`unknown`/`header_timeout`). hyper's graceful shutdown
/// closes an idle connection at once and finishes a request in flight, but waits out the whole
/// header read timeout (30 s by default) for a connection's first head once it has begun; a
/// second is enough for a client that is still sending a normal head to finish it, as for
/// [`SHUTDOWN_BODY_GRACE`].
pub const SHUTDOWN_HEAD_GRACE: Duration = Duration::from_secs(1);

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

/// The content type of OpenAI's error envelope (facts §1).
const ERROR_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The headers every reply carries, in the order they open its map: the content type, then
/// what [`Reply::decorate`] fills in for every answer.
const CONTENT_TYPE_SLOT: usize = 0;
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const VERSION: HeaderName = HeaderName::from_static("openai-version");
const PROCESSING_MS: HeaderName = HeaderName::from_static("openai-processing-ms");
const ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");

/// The `x-ratelimit-*` names, in the order OpenAI sends them: limit, remaining and reset, of
/// requests then tokens.
pub static LIMIT_NAMES: [HeaderName; 6] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// The headers of the largest common reply: the five every reply has and the six limits.
const REPLY_HEADERS: usize = 11;

/// Where the `x-ratelimit-*` headers start in a map made from [`LIMITED`].
const LIMITS_SLOT: usize = 5;

/// The header maps replies start from: the fixed names with placeholder values, which the
/// reply overwrites in place.
///
/// Why: inserting a header hashes its name and probes the map, about 300 instructions for each
/// of these names, so building the eleven headers of a rate-limited answer one by one cost
/// about 3,400 instructions a request. Cloning a built map copies its two arrays and bumps
/// no counts (every name and placeholder is static), and overwriting a value by position
/// hashes nothing (`benches/mock_callgrind.sh`, BENCHMARKS.md). [`Reply::set`] checks each
/// position's name, so if `http` ever changed its iteration order, a value would still land
/// under its own name, only more slowly.
static PLAIN: LazyLock<HeaderMap> = LazyLock::new(|| template(&[]));
/// [`PLAIN`] followed by the six `x-ratelimit-*` headers.
static LIMITED: LazyLock<HeaderMap> = LazyLock::new(|| template(&LIMIT_NAMES));

/// Whether two names are equal, comparing the pointers first: a template's names are clones of
/// the same static text, so the bytes are compared only when the pointers differ.
fn same_name(a: &HeaderName, b: &HeaderName) -> bool {
    std::ptr::eq(a.as_str(), b.as_str()) || a == b
}

fn template(extra: &[HeaderName]) -> HeaderMap {
    let placeholder = HeaderValue::from_static("");
    // Room for eleven: hyper reuses a response's map for the next request's headers on the
    // connection, and a clone's table is as large as its template's (entries aside), so a
    // five-header table would be regrown for a request with seven headers.
    let mut headers = HeaderMap::with_capacity(REPLY_HEADERS.max(LIMITS_SLOT + extra.len()));
    for name in [
        CONTENT_TYPE,
        REQUEST_ID,
        VERSION,
        PROCESSING_MS,
        ORGANIZATION,
    ]
    .iter()
    .chain(extra)
    {
        headers.append(name.clone(), placeholder.clone());
    }
    headers.insert(VERSION, HeaderValue::from_static("2020-10-01"));
    headers
}

/// A reply under construction: status, headers and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The headers: those of [`PLAIN`] or [`LIMITED`] first, then any added, in order. They
    /// become the response's own map, so nothing is copied when it is sent.
    headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: Bytes) -> Reply {
        Reply::from_template(&PLAIN, status, content_type, body)
    }

    fn from_template(
        template: &HeaderMap,
        status: u16,
        content_type: &'static str,
        body: Bytes,
    ) -> Reply {
        let mut reply = Reply {
            status,
            headers: template.clone(),
            body,
        };
        reply.set(
            CONTENT_TYPE_SLOT,
            &CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        reply
    }

    /// Sets header `name`, found at position `slot` of a fresh template map, to `value`
    /// without hashing; anywhere else (never, with `http` 1), it is inserted by name.
    fn set(&mut self, slot: usize, name: &HeaderName, value: HeaderValue) {
        match self.headers.iter_mut().nth(slot) {
            Some((n, v)) if same_name(n, name) => *v = value,
            _ => {
                self.headers.insert(name.clone(), value);
            }
        }
    }

    /// Fills in what every answer carries: its request id, the API version, the processing
    /// time, and the organization (removed when the request had none).
    pub fn decorate(&mut self, request_id: &str, org: Option<&HeaderValue>, processing_ms: u128) {
        // Answers almost always take under 10 ms: those values are static text, not a new
        // buffer.
        const SMALL_MS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
        let ms = match usize::try_from(processing_ms)
            .ok()
            .and_then(|ms| SMALL_MS.get(ms))
        {
            Some(ms) => HeaderValue::from_static(ms),
            None => HeaderValue::from(u64::try_from(processing_ms).unwrap_or(u64::MAX)),
        };
        // Request ids are `req_` and hex digits, always header text.
        if let Ok(v) = HeaderValue::from_str(request_id) {
            self.set(1, &REQUEST_ID, v);
        }
        self.set(3, &PROCESSING_MS, ms);
        match org {
            Some(o) => self.set(4, &ORGANIZATION, o.clone()),
            None => {
                self.headers.remove(ORGANIZATION);
            }
        }
    }

    /// A reply that carries the six `x-ratelimit-*` headers: `counts` are the limits and what
    /// remains (requests, tokens, requests, tokens) and `resets` the real times until the
    /// requests and tokens buckets are full, in the order of [`LIMIT_NAMES`].
    pub fn with_limits(
        status: u16,
        content_type: &'static str,
        body: Bytes,
        counts: [u64; 4],
        resets: [Duration; 2],
    ) -> Reply {
        // All six values are written into one buffer and each header holds a slice of it: one
        // allocation for the six instead of one per value. Counts take at most 20 digits each;
        // a duration's text is short unless it runs for years.
        let mut buf = BytesMut::with_capacity(4 * 20 + 2 * 16);
        let mut ends = [0usize; 6];
        let mut digits = itoa::Buffer::new();
        for (end, count) in ends.iter_mut().zip(counts) {
            buf.extend_from_slice(digits.format(count).as_bytes());
            *end = buf.len();
        }
        for (end, reset) in ends[4..].iter_mut().zip(resets) {
            // Writing to a `BytesMut` cannot fail (it grows as needed).
            let _ = write_duration(reset, &mut buf);
            *end = buf.len();
        }
        let values = buf.freeze();
        let mut reply = Reply::from_template(&LIMITED, status, content_type, body);
        // One pass over the six places; a value whose place did not hold its name (never, with
        // `http` 1) is inserted by name afterwards.
        let mut places = reply.headers.iter_mut().skip(LIMITS_SLOT);
        let mut misplaced = Vec::new();
        let mut start = 0;
        for (name, end) in LIMIT_NAMES.iter().zip(ends) {
            // Digits and `h`/`m`/`s`/`.` are always header text.
            let value = HeaderValue::from_maybe_shared(values.slice(start..end))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            start = end;
            match places.next() {
                Some((n, v)) if same_name(n, name) => *v = value,
                _ => misplaced.push((name, value)),
            }
        }
        for (name, value) in misplaced {
            reply.headers.insert(name.clone(), value);
        }
        reply
    }

    /// The headers so far.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
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
        Reply::new(err.status, ERROR_CONTENT_TYPE, Bytes::from(err.to_json()))
    }

    /// [`Reply::error`] with the six `x-ratelimit-*` headers (a 429).
    pub fn error_with_limits(err: &ApiError, counts: [u64; 4], resets: [Duration; 2]) -> Reply {
        Reply::with_limits(
            err.status,
            ERROR_CONTENT_TYPE,
            Bytes::from(err.to_json()),
            counts,
            resets,
        )
    }

    /// Replaces the `content-type` (it keeps its place, first).
    pub fn set_content_type(&mut self, content_type: &'static str) {
        self.set(
            CONTENT_TYPE_SLOT,
            &CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
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
/// [`BODY_READ_TIMEOUT`] (408). Once `shutdown` (the connection's signal) has fired, the read
/// has at most [`SHUTDOWN_BODY_GRACE`] left, then gets the same 408.
pub async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    shutdown: &watch::Receiver<bool>,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let collect = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(req.into_body(), limit).collect(),
    );
    let cut_short = async {
        // Cloned only if the body was not already there on the first poll (`biased`).
        let mut shutdown = shutdown.clone();
        super::shutting_down(&mut shutdown).await;
        tokio::time::sleep(SHUTDOWN_BODY_GRACE).await;
    };
    // `None`: too slow, by the read timeout or the shutdown grace.
    let collected = tokio::select! {
        biased;
        c = collect => c.ok(),
        () = cut_short => None,
    };
    match collected {
        Some(Ok(c)) => Ok(c.to_bytes()),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Some(Err(e)) => Err(bad_request(
            format!("Could not read the request body: {e}"),
            None,
            None,
        )),
        None => Err(ApiError {
            status: 408,
            message: "The request body was not received in time.".into(),
            kind: "invalid_request_error".into(),
            param: None,
            code: Some("request_timeout".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The places `Reply::set` writes without hashing hold their names in `http`'s iteration
    /// order; if this failed, replies would still be right, through the slow path.
    #[test]
    fn template_places_hold_their_names() {
        let names: Vec<&str> = LIMITED.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            &names[..LIMITS_SLOT],
            [
                "content-type",
                "x-request-id",
                "openai-version",
                "openai-processing-ms",
                "openai-organization"
            ]
        );
        let limits: Vec<&str> = LIMIT_NAMES.iter().map(HeaderName::as_str).collect();
        assert_eq!(&names[LIMITS_SLOT..], limits);
        assert_eq!(PLAIN.keys().count(), LIMITS_SLOT);
        // A clone of the template shares the static names' text, so `same_name` compares
        // pointers, not bytes.
        let copy = LIMITED.clone();
        for (name, expected) in copy.keys().skip(LIMITS_SLOT).zip(&LIMIT_NAMES) {
            assert!(std::ptr::eq(name.as_str(), expected.as_str()), "{name}");
        }
    }

    /// A reply's headers as (name, value) text, in order.
    fn listed(reply: &Reply) -> Vec<(&str, &str)> {
        reply
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn replies_fill_every_place_once() {
        let mut reply = Reply::with_limits(
            200,
            "application/json",
            Bytes::new(),
            [500, 200_000, 499, 199_000],
            [Duration::from_millis(120), Duration::from_millis(300)],
        );
        let org = HeaderValue::from_static("org-test");
        reply.decorate("req_0123", Some(&org), 3);
        let got = listed(&reply);
        assert_eq!(
            got,
            [
                ("content-type", "application/json"),
                ("x-request-id", "req_0123"),
                ("openai-version", "2020-10-01"),
                ("openai-processing-ms", "3"),
                ("openai-organization", "org-test"),
                ("x-ratelimit-limit-requests", "500"),
                ("x-ratelimit-limit-tokens", "200000"),
                ("x-ratelimit-remaining-requests", "499"),
                ("x-ratelimit-remaining-tokens", "199000"),
                ("x-ratelimit-reset-requests", "120ms"),
                ("x-ratelimit-reset-tokens", "300ms"),
            ]
        );
        // Without an organization, its header goes; a slow answer's time is written out.
        let mut reply = Reply::json(200, "{}");
        reply.set_content_type("text/plain");
        reply.decorate("req_1", None, 1234);
        let got = listed(&reply);
        assert_eq!(
            got,
            [
                ("content-type", "text/plain"),
                ("x-request-id", "req_1"),
                ("openai-version", "2020-10-01"),
                ("openai-processing-ms", "1234"),
            ]
        );
    }
}
