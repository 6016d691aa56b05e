//! The server's limits and how they are kept under abuse (docs/serving.md, "Limits and
//! guarantees"): connections are capped (more are answered 503 and closed), every
//! connection is watched for slow or missing request heads and idle keep-alive, and
//! request bodies are read against a deadline and a global budget of bytes in flight.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::errors::{error, unavailable};

/// Default largest `POST /data` (and `POST /predict`) body (bytes): `--max-body`.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

/// Default `--header-timeout`: from a request's first byte to the end of its head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--body-timeout`: to read a whole request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `--http-idle-timeout`: a connection with no request under way is closed after it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Default `--max-inflight-bytes` (raised to `--max-body` when that is larger).
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 64 << 20;

/// Default `--max-key-bytes`.
pub const DEFAULT_MAX_KEY_BYTES: usize = 256;

/// Default `--max-keys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Connections answered 503 at once when over `--max-connections` (more are just closed).
const MAX_REFUSING: usize = 64;

/// The HTTP server's limits (docs/serving.md, "Limits and guarantees").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpLimits {
    /// Largest request body (`--max-body`).
    pub max_body: usize,
    /// From a request's first byte to the end of its head (`--header-timeout`).
    pub header_timeout: Duration,
    /// To read a whole request body (`--body-timeout`).
    pub body_timeout: Duration,
    /// A connection with no request under way (and a stalled answer) is closed after
    /// this (`--http-idle-timeout`).
    pub idle_timeout: Duration,
    /// Open connections (`--max-connections`).
    pub max_connections: usize,
    /// Bytes of request bodies held at once, over all requests (`--max-inflight-bytes`).
    pub max_inflight_bytes: usize,
    /// Longest key of a posted record (`--max-key-bytes`).
    pub max_key_bytes: usize,
    /// Live keys, and keys served (`--max-keys`).
    pub max_keys: usize,
    /// Host names accepted besides the loopback names and the bound address
    /// (`--allow-host`; `*` accepts any).
    pub allow_hosts: Vec<String>,
    /// The bearer token's file (`--token-file`).
    pub token_file: Option<PathBuf>,
    /// The live dashboard at `/` (`--no-dashboard` turns it off).
    pub dashboard: bool,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_body: DEFAULT_MAX_BODY,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_keys: DEFAULT_MAX_KEYS,
            allow_hosts: Vec::new(),
            token_file: None,
            dashboard: true,
        }
    }
}

/// Counters of the server itself, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub(super) struct ServeStats {
    pub(super) connections_open: AtomicI64,
    pub(super) connections_refused: AtomicU64,
    pub(super) timeouts_header: AtomicU64,
    pub(super) timeouts_idle: AtomicU64,
    pub(super) timeouts_write: AtomicU64,
    pub(super) timeouts_body: AtomicU64,
}

/// What a connection is doing, as its reads and writes see it.
#[derive(Debug)]
struct Phase {
    /// A request has been handed to the router and not answered yet.
    in_request: bool,
    /// When the connection last became idle (accepted, or an answer given).
    idle_since: Instant,
    /// When the first byte of the next request head arrived.
    head_started: Option<Instant>,
    /// The task of the last read that waited: woken when a request ends, so that the read
    /// is tried again with the idle deadline.
    reader: Option<std::task::Waker>,
}

#[derive(Debug)]
struct Activity(Mutex<Phase>);

#[derive(Clone, Copy, Debug)]
enum Timeout {
    Header,
    Idle,
    Write,
}

impl Activity {
    fn new() -> Activity {
        Activity(Mutex::new(Phase {
            in_request: false,
            idle_since: Instant::now(),
            head_started: None,
            reader: None,
        }))
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin_request(&self) {
        let mut phase = self.phase();
        phase.in_request = true;
        phase.head_started = None;
    }

    fn end_request(&self) {
        let mut phase = self.phase();
        phase.in_request = false;
        phase.idle_since = Instant::now();
        if let Some(reader) = phase.reader.take() {
            reader.wake();
        }
    }

    fn bytes_read(&self) {
        let mut phase = self.phase();
        if !phase.in_request && phase.head_started.is_none() {
            phase.head_started = Some(Instant::now());
        }
    }

    /// When a read that waits must give up: the head's deadline once a head has begun,
    /// the idle deadline before; none while a request is being handled (its body has its
    /// own deadline).
    fn read_deadline(
        &self,
        limits: &HttpLimits,
        reader: &std::task::Waker,
    ) -> Option<(Instant, Timeout)> {
        let mut phase = self.phase();
        if phase.in_request {
            if !phase.reader.as_ref().is_some_and(|r| r.will_wake(reader)) {
                phase.reader = Some(reader.clone());
            }
            return None;
        }
        Some(match phase.head_started {
            Some(t) => (t + limits.header_timeout, Timeout::Header),
            None => (phase.idle_since + limits.idle_timeout, Timeout::Idle),
        })
    }
}

/// A connection's socket, closed (an error to hyper) when a read or a write waits past
/// its deadline (see [`Activity::read_deadline`]; a write that makes no progress for
/// `--http-idle-timeout`).
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    limits: Arc<HttpLimits>,
    stats: Arc<ServeStats>,
    read_timer: Pin<Box<tokio::time::Sleep>>,
    write_timer: Pin<Box<tokio::time::Sleep>>,
    write_stalled: Option<Instant>,
}

impl Watched {
    fn new(
        stream: TcpStream,
        activity: Arc<Activity>,
        limits: Arc<HttpLimits>,
        stats: Arc<ServeStats>,
    ) -> Watched {
        let now = tokio::time::Instant::now();
        Watched {
            stream,
            activity,
            limits,
            stats,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            write_stalled: None,
        }
    }

    /// Pending until `deadline`, then the error that closes the connection.
    fn expire<T>(
        timer: &mut Pin<Box<tokio::time::Sleep>>,
        stats: &ServeStats,
        cx: &mut Context<'_>,
        deadline: Instant,
        kind: Timeout,
    ) -> Poll<io::Result<T>> {
        if Instant::now() < deadline {
            timer.as_mut().reset(deadline.into());
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let (counter, what) = match kind {
            Timeout::Header => (&stats.timeouts_header, "request head not complete in time"),
            Timeout::Idle => (&stats.timeouts_idle, "idle connection"),
            Timeout::Write => (&stats.timeouts_write, "answer not read by the client"),
        };
        counter.fetch_add(1, Relaxed);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
    }

    fn poll_written(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending => {
                let since = *self.write_stalled.get_or_insert_with(Instant::now);
                Self::expire(
                    &mut self.write_timer,
                    &self.stats,
                    cx,
                    since + self.limits.idle_timeout,
                    Timeout::Write,
                )
            }
            ready => {
                self.write_stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.activity.read_deadline(&this.limits, cx.waker()) {
                None => Poll::Pending,
                Some((deadline, kind)) => {
                    Self::expire(&mut this.read_timer, &this.stats, cx, deadline, kind)
                }
            },
            error => error,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.poll_written(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.poll_written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router, as hyper calls it for one connection: marks the connection busy while a
/// request is handled.
#[derive(Clone)]
struct Tracked {
    router: hyper_util::service::TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.activity.begin_request();
        let answer = self.router.call(request);
        let activity = Arc::clone(&self.activity);
        Box::pin(async move {
            let response = answer.await;
            activity.end_request();
            response
        })
    }
}

/// Answers a connection over `--max-connections` with a 503 and closes it, within 1 s.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let body = json!({
        "error": format!(
            "the server has {limit} connections open (--max-connections); retry later"
        )
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes, so that closing does not reset the
        // connection before the client has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// The accept loop: one task per connection, at most `--max-connections` at once.
pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Arc<HttpLimits>,
    stats: Arc<ServeStats>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            stats.connections_refused.fetch_add(1, Relaxed);
            if let Ok(refusal) = Arc::clone(&refusing).try_acquire_owned() {
                let limit = limits.max_connections;
                tokio::spawn(async move {
                    refuse(stream, limit).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = hyper_util::rt::TokioIo::new(Watched::new(
            stream,
            Arc::clone(&activity),
            Arc::clone(&limits),
            Arc::clone(&stats),
        ));
        let service = Tracked {
            router: hyper_util::service::TowerToHyperService::new(router.clone()),
            activity,
        };
        let connection = http.serve_connection(io, service);
        let stats = Arc::clone(&stats);
        stats.connections_open.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _ = connection.await;
            stats.connections_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

/// Reads a request body of at most `limit` bytes (`--max-body`) within `--body-timeout`,
/// counting its bytes against `--max-inflight-bytes` as they arrive; the permit returned
/// holds them until dropped.
pub(super) async fn read_body(
    limits: &HttpLimits,
    stats: &ServeStats,
    budget: &Arc<Semaphore>,
    mut body: Body,
    limit: usize,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), Response> {
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let mut bytes = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                stats.timeouts_body.fetch_add(1, Relaxed);
                let mut response = error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body was not received within {:?} (--body-timeout): {} bytes came",
                        limits.body_timeout,
                        bytes.len()
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(response);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if bytes.len() + data.len() > limit {
            return Err(too_large(limit));
        }
        let permits = u32::try_from(data.len()).unwrap_or(u32::MAX);
        match Arc::clone(budget).try_acquire_many_owned(permits) {
            Ok(permit) => match held.as_mut() {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            },
            Err(_) => {
                return Err(unavailable(format!(
                    "request bodies in flight are over {} bytes (--max-inflight-bytes); \
                     retry later",
                    limits.max_inflight_bytes
                )));
            }
        }
        bytes.extend_from_slice(&data);
    }
    Ok((bytes, held))
}

/// A 413 answer: a body over `--max-body`.
pub(super) fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body over {limit} bytes (--max-body): split it"),
    )
}

/// Whether a declared `Content-Length` is over `limit`.
pub(super) fn declared_over(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}
