//! The HTTP server: serves the behaviour model ([`crate::Upstream`]) on OpenAI's paths over
//! hyper 1 and tokio, in the shape of mini-redis — [`run`] takes its listener and shutdown
//! signal from the caller, one module per endpoint group parses, applies and responds, and the
//! binary's `main` only wires flags to [`run`].
//!
//! - [`State`]: the model behind one `Mutex` (never held across an `.await`), the API keys, the
//!   clock, the counters.
//! - [`clock::ServerClock`]: real time ↦ model time × `--speedup`, and back for everything
//!   reported.
//! - [`config::ServerConfig`] / [`config::Args`]: flags and the TOML file, validated.
//! - [`serve_threads`]: [`run`] on N threads, one current-thread runtime each, sharing the
//!   listener (the binary's `--workers`).
//! - Endpoints: [`chat`], [`files`], [`batches`], [`models`], [`admin`] (`/_mock/config`,
//!   `/_mock/stats`, `/metrics`); routing and authentication live here.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mock_openai::server::{self, State, clock::ServerClock, config::ServerConfig};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let state = State::new(ServerConfig::default(), ServerClock::system(100.0)?)?;
//! server::run(listener, state, tokio::signal::ctrl_c()).await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod batches;
pub mod chat;
pub mod clock;
pub mod config;
pub mod files;
pub mod http;
pub mod models;
pub mod multipart;
mod query;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::ConfigError;
use crate::error::ApiError;
use crate::ids;
use crate::org::OrgId;
use crate::upstream::Upstream;
use admin::{Endpoint, Outcome, Stats};
use clock::ServerClock;
use config::{BodyLimits, ServerConfig, TransportConfig, TransportFault};
use http::{Body, Reply};
use tagstorm_core::tokens::Model;

/// How long a connection may take to send its request headers, in real time: the default of
/// [`ServerConfig::header_read_timeout`].
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the server state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Two `--api-key`s are the same key.
    #[error("mock_server.keys[{0}]: the same API key is configured twice")]
    DuplicateKey(usize),
}

/// One organization as the router sees it.
#[derive(Clone, Debug)]
pub struct OrgEntry {
    /// The model's organization.
    pub org: OrgId,
    /// `org-…`, shown in logs and `openai-organization` instead of the key.
    pub name: Arc<str>,
    /// `name` as the `openai-organization` header value, built once.
    pub header: HeaderValue,
    /// The organization's model.
    pub model: Model,
}

#[derive(Debug)]
enum Auth {
    /// No keys configured: any bearer token is this organization.
    AnyKey(OrgEntry),
    /// Each configured key is its own organization.
    Keys(HashMap<String, OrgEntry>),
}

/// Everything behind the model's mutex: the model and the server's own mutable state.
#[derive(Debug)]
pub(crate) struct Backend {
    pub upstream: Upstream,
    pub transport: TransportConfig,
    transport_rng: Pcg64,
    transport_seen: u64,
    /// Batch metadata by batch id (the model does not store it).
    pub metadata: HashMap<String, serde_json::Value>,
}

impl Backend {
    /// Restarts the count the transport script indexes.
    pub fn reset_transport_script(&mut self) {
        self.transport_seen = 0;
    }

    /// The transport fault of the next successful chat response: scripted first, else one
    /// random draw (always made, so a script does not shift later draws).
    pub fn next_transport_fault(&mut self) -> TransportFault {
        let n = self.transport_seen;
        self.transport_seen = n.saturating_add(1);
        let t = &self.transport;
        let u: f64 = self.transport_rng.random();
        if let Some(k) = n.checked_sub(t.after) {
            if let Some(f) = usize::try_from(k).ok().and_then(|k| t.sequence.get(k)) {
                return *f;
            }
        }
        if u < t.reset_rate {
            TransportFault::Reset
        } else if u < t.reset_rate + t.slow_body_rate {
            TransportFault::SlowBody
        } else {
            TransportFault::Ok
        }
    }
}

/// The server's shared state.
#[derive(Debug)]
pub struct State {
    backend: Mutex<Backend>,
    auth: Auth,
    /// The clock handlers read.
    pub clock: ServerClock,
    pub(crate) stats: Stats,
    pub(crate) retry_after_ms: bool,
    pub(crate) enforce_limits: bool,
    pub(crate) limits: BodyLimits,
    header_read_timeout: Duration,
    seed: u64,
    request_seq: AtomicU64,
}

impl State {
    /// Builds the model and its organizations from a validated configuration.
    pub fn new(config: ServerConfig, clock: ServerClock) -> Result<Arc<State>, StateError> {
        config.validate()?;
        let mut upstream = Upstream::new(config.upstream.clone(), config.seed)?;
        upstream.set_wall_clock(clock.wall());
        let entry = |up: &mut Upstream, account: &crate::config::AccountConfig| {
            let org = up.add_org(account)?;
            let name: Arc<str> = Arc::from(up.org_name(org).unwrap_or("org-unknown"));
            let header = HeaderValue::from_str(&name)
                .unwrap_or_else(|_| HeaderValue::from_static("org-unknown"));
            Ok::<_, ConfigError>(OrgEntry {
                org,
                name,
                header,
                model: account.model,
            })
        };
        let auth = if config.keys.is_empty() {
            let e = entry(&mut upstream, &config.account)?;
            info!(org = %e.name, "no API keys configured: any bearer token is accepted as one organization");
            Auth::AnyKey(e)
        } else {
            let mut map = HashMap::new();
            for (i, k) in config.keys.iter().enumerate() {
                let e = entry(&mut upstream, &k.account)?;
                let limits = upstream.org_limits(e.org).copied();
                info!(org = %e.name, ?limits, "organization for API key #{i}");
                if map.insert(k.key.clone(), e).is_some() {
                    return Err(StateError::DuplicateKey(i));
                }
            }
            Auth::Keys(map)
        };
        Ok(Arc::new(State {
            backend: Mutex::new(Backend {
                upstream,
                transport: config.transport,
                transport_rng: Pcg64::seed_from_u64(ids::mix(config.seed, 0x7a45_0000, 0)),
                transport_seen: 0,
                metadata: HashMap::new(),
            }),
            auth,
            clock,
            stats: Stats::default(),
            retry_after_ms: config.retry_after_ms,
            enforce_limits: config.enforce_limits,
            limits: config.limits,
            header_read_timeout: config.header_read_timeout,
            seed: config.seed,
            request_seq: AtomicU64::new(0),
        }))
    }

    /// Locks the model. Never hold the guard across an `.await`. A poisoned lock is taken
    /// over: no handler panics, and the model's state stays consistent per call.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Backend> {
        self.backend.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `req_…` id: `req_` and 32 hex digits, as [`ids::hex`] draws them.
    fn next_request_id(&self) -> StackId<36> {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        let mut id = StackId(*b"req_00000000000000000000000000000000");
        fill_hex(ids::mix(self.seed, ids::ns::REQUEST, n), &mut id.0[4..]);
        id
    }

    /// The `chatcmpl-…` id of the completion answering request `rid`: `chatcmpl-` and 29
    /// alphanumerics, as [`ids::alnum`] draws them.
    pub(crate) fn completion_id(&self, rid: &str) -> StackId<38> {
        let mut id = StackId(*b"chatcmpl-00000000000000000000000000000");
        fill_alnum(
            crate::tags::fnv1a64(rid.as_bytes()) ^ self.seed,
            &mut id.0[9..],
        );
        id
    }

    fn authenticate(&self, req: &Request<Incoming>) -> Result<&OrgEntry, ApiError> {
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(ApiError {
                status: 401,
                message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.".into(),
                kind: "invalid_request_error".into(),
                param: None,
                code: Some("invalid_api_key".into()),
            });
        };
        match &self.auth {
            Auth::AnyKey(e) => Ok(e),
            Auth::Keys(m) => m
                .get(token)
                .ok_or_else(|| ApiError::invalid_api_key(&mask_key(token))),
        }
    }
}

/// An ASCII id of `N` bytes, built on the stack: the ids made for every request cost no
/// allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StackId<const N: usize>([u8; N]);

impl<const N: usize> StackId<N> {
    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        // Built only from ASCII prefixes and digits; the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Fills `out` with lower-case hex digits drawn from `state`, the same digits as [`ids::hex`].
fn fill_hex(mut state: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for chunk in out.chunks_mut(16) {
        let v = crate::tags::splitmix64(&mut state);
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = HEX[((v >> (i * 4)) & 0xf) as usize];
        }
    }
}

/// Fills `out` with `[0-9A-Za-z]` drawn from `state`, the same characters as [`ids::alnum`].
fn fill_alnum(mut state: u64, out: &mut [u8]) {
    const ALNUM: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for b in out {
        *b = ALNUM[(crate::tags::splitmix64(&mut state) % 62) as usize];
    }
}

/// Masks a key as OpenAI's 401 shows it: the first and last few characters only.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "*".repeat(chars.len().min(64));
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat((chars.len() - 10).min(64)))
}

/// How a handler's answer goes out.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// Send it.
    Now(Reply),
    /// Send the headers, then the body in pieces over this real duration.
    Slow(Reply, Duration),
    /// Reset the connection instead of answering.
    Reset,
    /// Hold the connection for this real duration, then close it without a response.
    Hold(Duration),
}

impl From<Reply> for Delivery {
    fn from(r: Reply) -> Self {
        Delivery::Now(r)
    }
}

impl From<ApiError> for Delivery {
    fn from(e: ApiError) -> Self {
        Delivery::Now(Reply::error(&e))
    }
}

/// The connection is dropped on purpose (timeout hold or reset); hyper closes it without a
/// response.
#[derive(Debug)]
pub struct Abort;

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Abort {}

/// Per-connection context.
#[derive(Debug, Clone)]
struct ConnCtx {
    reset: Arc<AtomicBool>,
    /// Set once the client has closed its side (or the read failed): an answer made after
    /// that reaches no one, and hyper drops the connection without sending it.
    peer_closed: Arc<AtomicBool>,
    /// Set when bytes arrive, cleared once a request's head and body have been read and
    /// routed: with no request open ([`ConnCtx::head_begun`]), it means the client has begun
    /// a request head that hyper has not finished reading (an idle keep-alive connection has
    /// sent nothing since its last request). A partial request that arrived in one read with
    /// the complete one before it is missed; bytes that arrive after a body was read, while
    /// the answer goes out, are taken for the next head. Only the connection's own task
    /// touches it, so `Relaxed` suffices.
    bytes_since_request: Arc<AtomicBool>,
    /// Set while a request is open: from when hyper hands its complete head to the service
    /// until it drops the answer's body ([`RequestOpen`]).
    request_open: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
}

impl ConnCtx {
    /// Whether the client has begun a request head that hyper is still waiting to complete:
    /// what hyper's header read timeout, or shutdown, cuts off without an answer.
    fn head_begun(&self) -> bool {
        self.bytes_since_request.load(Ordering::Relaxed)
            && !self.request_open.load(Ordering::Relaxed)
    }
}

/// Keeps its connection's request open ([`ConnCtx::request_open`]) while it lives. It is made
/// when hyper calls the service, in the same poll that parsed the head, and ends inside the
/// answer's body ([`Answer`]), which hyper drops once it has written the last of it (or the
/// answer is never made), before it reads another head.
#[derive(Debug)]
struct RequestOpen(Arc<AtomicBool>);

impl RequestOpen {
    fn new(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Relaxed);
        RequestOpen(flag.clone())
    }
}

impl Drop for RequestOpen {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// An answer's body, which keeps its request open until hyper drops it.
#[derive(Debug)]
struct Answer {
    body: Body,
    _open: RequestOpen,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream that resets (RST) instead of closing (FIN) when a handler asked for it.
#[derive(Debug)]
struct ConnIo {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
    peer_closed: Arc<AtomicBool>,
    bytes_since_request: Arc<AtomicBool>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // SO_LINGER 0: close() sends RST and discards unsent data.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let closed = match &polled {
            Poll::Ready(Ok(())) => buf.filled().len() == before && buf.remaining() > 0,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if closed {
            this.peer_closed.store(true, Ordering::SeqCst);
        } else if buf.filled().len() > before {
            this.bytes_since_request.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `state` on `listener` until `shutdown` completes; then stops accepting, lets every
/// in-flight request finish (timeout holds are cut short, slow bodies sent at once, and a
/// request body still arriving gets [`http::SHUTDOWN_BODY_GRACE`], then a 408), gives a request
/// head still arriving [`http::SHUTDOWN_HEAD_GRACE`] before closing its connection without an
/// answer, and returns once all connections have closed.
pub async fn run<F: Future>(listener: TcpListener, state: Arc<State>, shutdown: F) {
    let (shutdown_tx, _) = watch::channel(false);
    // Each connection task holds a sender; `recv` returns `None` once all have finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, speedup = state.clock.speedup(), "serving");
    }
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ConnCtx {
            reset: Arc::new(AtomicBool::new(false)),
            peer_closed: Arc::new(AtomicBool::new(false)),
            bytes_since_request: Arc::new(AtomicBool::new(false)),
            request_open: Arc::new(AtomicBool::new(false)),
            shutdown: shutdown_tx.subscribe(),
        };
        let state = state.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            serve_connection(stream, state, ctx).await;
            drop(done);
        });
    }
    drop(listener);
    info!("shutting down: no longer accepting, waiting for in-flight requests");
    let _ = shutdown_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    info!("all connections closed");
}

/// Serves `state` on `listener` from `workers` threads, each running [`run`] on its own
/// current-thread runtime and accepting from the same socket; blocks until `shutdown`
/// completes and every thread has finished its connections.
///
/// One thread per core is cheaper than a work-stealing runtime for this server: a request is
/// a few microseconds of work that never moves between threads, so stealing only adds
/// cross-thread wake-ups, which cost more than the request itself at low load. `shutdown` runs
/// on the calling thread's runtime (it may use `tokio::signal`).
pub fn serve_threads<F>(
    listener: std::net::TcpListener,
    state: Arc<State>,
    workers: std::num::NonZeroUsize,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()>,
{
    serve_threads_on(thread_runtime()?, listener, state, workers, shutdown)
}

/// The runtime each serving thread runs: current-thread, with IO, timers and signals.
pub fn thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// [`serve_threads`] with the calling thread's runtime built by the caller, who can set things
/// up on it first: the binary registers its signal handlers there before it announces the
/// port. Tasks that `shutdown` spawns on it keep running until every thread has finished its
/// connections (the binary's forced stop on a second signal is one).
pub fn serve_threads_on<F>(
    rt: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    state: Arc<State>,
    workers: std::num::NonZeroUsize,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()>,
{
    listener.set_nonblocking(true)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each worker thread holds a sender; `recv` returns `None` once all have finished, so the
    // calling thread waits for them on its runtime, still driving its tasks.
    let (finished_tx, mut finished_rx) = mpsc::channel::<()>(1);
    let mut threads = Vec::with_capacity(workers.get() - 1);
    for i in 1..workers.get() {
        let listener = listener.try_clone()?;
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let finished = finished_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mock-openai-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let _finished = finished;
                thread_runtime()?.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    run(
                        listener,
                        state,
                        async move { shutting_down(&mut stop).await },
                    )
                    .await;
                    Ok(())
                })
            })?;
        threads.push(thread);
    }
    let stop_all = &stop_tx;
    let served = rt.block_on(async move {
        let result = async {
            let listener = TcpListener::from_std(listener)?;
            let shutdown = async move {
                shutdown.await;
                let _ = stop_all.send(true);
            };
            run(listener, state, shutdown).await;
            Ok(())
        }
        .await;
        // Also when this thread could not start serving: the others must not serve forever.
        let _ = stop_all.send(true);
        drop(finished_tx);
        let _ = finished_rx.recv().await;
        result
    });
    for t in threads {
        match t.join() {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    served
}

/// Completes once shutdown has begun (or the signal's sender is gone).
async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, ctx: ConnCtx) {
    let mut shutdown = ctx.shutdown.clone();
    let io = TokioIo::new(ConnIo {
        stream,
        reset: ctx.reset.clone(),
        peer_closed: ctx.peer_closed.clone(),
        bytes_since_request: ctx.bytes_since_request.clone(),
    });
    let conn_ctx = ctx.clone();
    let header_read_timeout = state.header_read_timeout;
    let counted = state.clone();
    let service = service_fn(move |req| {
        let open = RequestOpen::new(&ctx.request_open);
        let state = state.clone();
        let ctx = ctx.clone();
        async move {
            let answer = handle(state, ctx, req).await?;
            Ok::<_, Abort>(answer.map(|body| Answer { body, _open: open }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let (result, shut) = tokio::select! {
        res = conn.as_mut() => (res, false),
        () = shutting_down(&mut shutdown) => {
            // hyper closes an idle connection at once and finishes a request in flight, then
            // closes, but waits out the header read timeout for a first head that has begun.
            conn.as_mut().graceful_shutdown();
            let res = match tokio::time::timeout(http::SHUTDOWN_HEAD_GRACE, conn.as_mut()).await {
                Ok(res) => res,
                // Returning drops the connection, which closes it.
                Err(_) if conn_ctx.head_begun() => Ok(()),
                Err(_) => conn.await,
            };
            (res, true)
        }
    };
    match result {
        Err(e) => {
            if let Some(status) = automatic_status(&e) {
                counted
                    .stats
                    .record(Endpoint::Unknown, Outcome::Status(status));
            } else if e.is_timeout() && conn_ctx.head_begun() {
                // The header read timeout (the only timeout hyper runs here) with part of a
                // head read: hyper closes without an answer, but the client did send a request.
                counted
                    .stats
                    .record(Endpoint::Unknown, Outcome::HeaderTimeout);
            }
            debug!(error = %e, "connection ended with an error");
        }
        // Shutdown closed the connection with part of a head read: cut off after the grace,
        // or at once by hyper, which counts a keep-alive connection idle until a whole head
        // has arrived. The same as the header read timeout, only sooner.
        Ok(()) if shut && conn_ctx.head_begun() => {
            counted
                .stats
                .record(Endpoint::Unknown, Outcome::HeaderTimeout);
            debug!("shutdown closed a connection whose request head was still arriving");
        }
        Ok(()) => {}
    }
}

/// The status hyper answered on its own, if it did, when the connection ended with `e`: a
/// request it could not parse gets 400, 414 or 431 (its `on_error`) without ever reaching
/// [`handle`], yet its client saw an answer that the counters must show too.
fn automatic_status(e: &hyper::Error) -> Option<u16> {
    if e.is_parse_too_large() {
        // `Parse::UriTooLong` and `Parse::TooLarge` share the predicate; only the text differs.
        Some(if e.to_string().contains("URI too long") {
            414
        } else {
            431
        })
    } else if e.is_parse() && !e.is_parse_version_h2() && !e.to_string().contains("internal") {
        // An HTTP/2 preface and hyper's own internal error are closed without an answer.
        Some(400)
    } else {
        None
    }
}

/// Routes one request: finds the endpoint, checks the method and key, calls the endpoint's
/// module, delivers the answer and counts it.
async fn handle(
    state: Arc<State>,
    ctx: ConnCtx,
    req: Request<Incoming>,
) -> Result<Response<Body>, Abort> {
    let started = state.clock.real_elapsed();
    let rid = state.next_request_id();
    let rid = rid.as_str();
    let method = req.method().clone();
    // A cheap clone (the path shares the request head's buffer), kept for logs and the 404.
    let uri = req.uri().clone();
    let path = uri.path();
    // Counts the request as abandoned if this future is dropped while `dispatch` waits (the
    // client closed the connection during the modelled latency); disarmed once it returns.
    let mut pending = Pending {
        stats: &state.stats,
        endpoint: Endpoint::Unknown,
        armed: true,
    };
    let (endpoint, delivery, org) = dispatch(
        &state,
        req,
        &method,
        path,
        rid,
        &ctx.shutdown,
        &mut pending.endpoint,
    )
    .await;
    pending.armed = false;
    // The head and (if the endpoint reads one) the body are in: bytes from here on begin the
    // connection's next request.
    ctx.bytes_since_request.store(false, Ordering::Relaxed);
    let org_label = org.map_or("-", |o| &*o.name);
    // The client closed its side while its request was read (a body cut short reads as the
    // endpoint's own 400): the answer goes to no one, so it counts as abandoned. It is still
    // handed to hyper, which sends it if the client only half-closed.
    let answered = |status: u16| {
        if ctx.peer_closed.load(Ordering::SeqCst) {
            debug!(%method, %path, status, request_id = %rid, "the client left before its answer");
            Outcome::Abandoned
        } else {
            Outcome::Status(status)
        }
    };
    match delivery {
        Delivery::Now(reply) => {
            state.stats.record(endpoint, answered(reply.status));
            debug!(%method, %path, status = reply.status, org = org_label, request_id = %rid, "answered");
            let processing_ms = (state.clock.real_elapsed().saturating_sub(started)).as_millis();
            let mut reply = reply;
            reply.decorate(rid, org.map(|o| &o.header), processing_ms);
            Ok(reply.into_response())
        }
        Delivery::Slow(reply, over) => {
            state.stats.record(endpoint, answered(reply.status));
            debug!(%method, %path, status = reply.status, org = org_label, ?over, "answering slowly");
            let processing_ms = (state.clock.real_elapsed().saturating_sub(started)).as_millis();
            let mut reply = reply;
            reply.decorate(rid, org.map(|o| &o.header), processing_ms);
            let body = reply.body.clone();
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(dribble(body.clone(), over, tx, ctx.shutdown.clone()));
            Ok(reply.into_response_with(Body::Chunks(rx, body.len() as u64)))
        }
        Delivery::Reset => {
            state.stats.record(endpoint, Outcome::Reset);
            debug!(%method, %path, org = org_label, "resetting the connection");
            ctx.reset.store(true, Ordering::SeqCst);
            Err(Abort)
        }
        Delivery::Hold(d) => {
            state.stats.record(endpoint, Outcome::Timeout);
            debug!(%method, %path, org = org_label, ?d, "holding the connection (timeout)");
            let mut shutdown = ctx.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                () = shutting_down(&mut shutdown) => {}
            }
            Err(Abort)
        }
    }
}

/// Sends `body` in up to 20 pieces spread evenly over `over`; once shutdown begins, the rest
/// goes out at once (a slow body is an injected fault, cut short like a timeout hold).
async fn dribble(
    body: Bytes,
    over: Duration,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let pieces = body.len().clamp(1, 20);
    let step = body.len().div_ceil(pieces).max(1);
    let pause = over / u32::try_from(pieces).unwrap_or(1);
    let mut rushed = false;
    let mut at = 0;
    while at < body.len() {
        if !rushed {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                () = shutting_down(&mut shutdown) => rushed = true,
            }
        }
        let end = (at + step).min(body.len());
        if tx.send(body.slice(at..end)).await.is_err() {
            return;
        }
        at = end;
    }
}

/// An OpenAI-style 404 for an unknown path (OpenAI's wording: `Invalid URL (POST /v1/x)`).
fn unknown_url(method: &Method, path: &str) -> ApiError {
    ApiError {
        status: 404,
        message: format!("Invalid URL ({method} {path})"),
        kind: "invalid_request_error".into(),
        param: None,
        code: None,
    }
}

/// See `handle`: records [`Outcome::Abandoned`] for `endpoint` when dropped armed.
struct Pending<'a> {
    stats: &'a Stats,
    endpoint: Endpoint,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.stats.record(self.endpoint, Outcome::Abandoned);
        }
    }
}

/// Routes and answers one request; `routed` is set to its endpoint as soon as that is known,
/// before anything waits. `shutdown` is the connection's signal, which cuts a body read short.
async fn dispatch<'s>(
    state: &'s State,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
    rid: &str,
    shutdown: &watch::Receiver<bool>,
    routed: &mut Endpoint,
) -> (Endpoint, Delivery, Option<&'s OrgEntry>) {
    // Up to five segments without allocating; a sixth makes the path unknown.
    let mut seg_buf = [""; 5];
    let mut n = 0;
    for seg in path.trim_matches('/').split('/') {
        if n == seg_buf.len() {
            return (Endpoint::Unknown, unknown_url(method, path).into(), None);
        }
        seg_buf[n] = seg;
        n += 1;
    }
    let segs = &seg_buf[..n];
    let (endpoint, allowed): (Endpoint, &[Method]) = match segs {
        ["v1", "chat", "completions"] => (Endpoint::ChatCompletions, &[Method::POST]),
        ["v1", "files"] => (
            if method == Method::GET {
                Endpoint::FilesList
            } else {
                Endpoint::FilesCreate
            },
            &[Method::GET, Method::POST],
        ),
        ["v1", "files", _] => (
            if method == Method::DELETE {
                Endpoint::FilesDelete
            } else {
                Endpoint::FilesRetrieve
            },
            &[Method::GET, Method::DELETE],
        ),
        ["v1", "files", _, "content"] => (Endpoint::FilesContent, &[Method::GET]),
        ["v1", "batches"] => (
            if method == Method::GET {
                Endpoint::BatchesList
            } else {
                Endpoint::BatchesCreate
            },
            &[Method::GET, Method::POST],
        ),
        ["v1", "batches", _] => (Endpoint::BatchesRetrieve, &[Method::GET]),
        ["v1", "batches", _, "cancel"] => (Endpoint::BatchesCancel, &[Method::POST]),
        ["v1", "models"] | ["v1", "models", _] => (Endpoint::Models, &[Method::GET]),
        ["_mock", "config"] => (Endpoint::MockConfig, &[Method::GET, Method::POST]),
        ["_mock", "stats"] => (Endpoint::MockStats, &[Method::GET]),
        ["metrics"] => (Endpoint::Metrics, &[Method::GET]),
        _ => return (Endpoint::Unknown, unknown_url(method, path).into(), None),
    };
    *routed = endpoint;
    if !allowed.contains(method) {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let err = ApiError {
            status: 405,
            message: format!(
                "Method {method} is not allowed for {path}; use {}.",
                names.join(" or ")
            ),
            kind: "invalid_request_error".into(),
            param: None,
            code: Some("method_not_allowed".into()),
        };
        let reply = Reply::error(&err).header("allow", names.join(", "));
        return (endpoint, reply.into(), None);
    }
    match endpoint {
        Endpoint::MockConfig => return (endpoint, admin::config(state, req, shutdown).await, None),
        Endpoint::MockStats => return (endpoint, admin::stats(state).into(), None),
        Endpoint::Metrics => return (endpoint, admin::metrics(state).into(), None),
        _ => {}
    }
    let org = match state.authenticate(&req) {
        Ok(o) => o,
        Err(e) => return (endpoint, e.into(), None),
    };
    let id = segs.get(2).copied().unwrap_or("");
    let delivery = match endpoint {
        Endpoint::ChatCompletions => chat::create(state, org, req, rid, shutdown).await,
        Endpoint::FilesCreate => files::create(state, org, req, shutdown).await,
        Endpoint::FilesList => files::list(state, org, req.uri().query()),
        Endpoint::FilesRetrieve => files::retrieve(state, org, id),
        Endpoint::FilesDelete => files::delete(state, org, id),
        Endpoint::FilesContent => files::content(state, org, id),
        Endpoint::BatchesCreate => batches::create(state, org, req, shutdown).await,
        Endpoint::BatchesRetrieve => batches::retrieve(state, org, id),
        Endpoint::BatchesCancel => batches::cancel(state, org, id),
        Endpoint::BatchesList => batches::list(state, org, req.uri().query()),
        Endpoint::Models => models::get(segs.get(2).copied()),
        Endpoint::MockConfig | Endpoint::MockStats | Endpoint::Metrics | Endpoint::Unknown => {
            unknown_url(method, path).into()
        }
    };
    (endpoint, delivery, Some(org))
}

#[cfg(test)]
mod tests {
    use super::{fill_alnum, fill_hex};
    use crate::ids;

    #[test]
    fn stack_ids_draw_the_same_characters_as_ids() {
        for seed in [0, 1, 42, u64::MAX] {
            for n in 0..50 {
                let state = ids::mix(seed, ids::ns::REQUEST, n);
                let mut hex = [0u8; 32];
                fill_hex(state, &mut hex);
                assert_eq!(std::str::from_utf8(&hex), Ok(ids::hex(state, 32).as_str()));
                let mut alnum = [0u8; 29];
                fill_alnum(state, &mut alnum);
                assert_eq!(
                    std::str::from_utf8(&alnum),
                    Ok(ids::alnum(state, 29).as_str())
                );
            }
        }
    }
}
