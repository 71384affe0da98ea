//! The HTTP edge: accepts connections, holds each to its deadlines, and hands its requests
//! to the router (identity and JMAP). Owns everything between the TCP socket and axum: the
//! connection caps, the deadlines below, the peer address the handlers read
//! (`ConnectInfo<SocketAddr>`), and graceful shutdown. Nothing here knows a protocol above
//! HTTP, except which route is a long-lived push stream.
//!
//! ```text
//!  accept ── ConnectionLimits: a full server waits; a source past its share is closed at once
//!    └─ connection ── Watch: closes it past the deadline of what it waits for
//!         └─ hyper http1 ── handle: the request deadline ── Router
//! ```
//!
//! A connection waits for one thing at a time, and each has its own bound:
//!
//! | waiting for | bound |
//! |---|---|
//! | a request head | `header_read_timeout`, from connecting or from the head's first byte |
//! | the next request (kept alive) | `idle_timeout` |
//! | the client to read the response | `idle_timeout` without any progress |
//! | the response (handler, body upload included) | `request_timeout`: 408 if the body was still arriving, else 503 |
//! | a JMAP push stream to end | `push_lifetime` (its start is a request like any other) |
//!
//! hyper's own `header_read_timeout` counts from the end of the previous response, so it
//! would cut a kept-alive connection after the header timeout; it is set to the sum of both
//! as a backstop, and the watch enforces each.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use audit::TrustedProxies;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::conn_limit::{Admitted, ConnectionLimits};

/// The listener's deadlines and caps (`[listen]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EdgeLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) push_lifetime: Duration,
    pub(crate) max_connections: NonZeroU32,
    /// `None`: no per-source cap.
    pub(crate) max_connections_per_source: Option<NonZeroUsize>,
}

/// The routes whose response is a stream meant to stay open: bounded by `push_lifetime`
/// instead of ending with their request.
fn is_push(path: &str) -> bool {
    path == jmap::EVENTSOURCE_PATH
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets open
/// connections finish their requests (push streams end at once) for up to `request_timeout`,
/// and returns. Peers in `trusted` (the proxies) are not capped per source.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: EdgeLimits,
    trusted: TrustedProxies,
    shutdown: impl Future<Output = ()>,
) {
    let caps = ConnectionLimits::new(
        limits.max_connections,
        limits.max_connections_per_source,
        trusted,
    );
    let limits = Arc::new(limits);
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = caps.slot() => slot,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admitted) = caps.admit(slot, peer.ip()) else {
            // Dropping the socket closes it: no byte is read from a source past its share.
            tracing::debug!(%peer, "refused a connection: its source has its share open");
            continue;
        };
        let conn = Conn {
            app: app.clone(),
            peer,
            watch: Arc::new(Watch::new(limits.header_read_timeout, limits.idle_timeout)),
            limits: limits.clone(),
            stopping: stopping.clone(),
        };
        tokio::spawn(conn.run(tcp, admitted));
    }
    drop(listener);
    let _ = stop.send(true);
    if tokio::time::timeout(limits.request_timeout, caps.drained())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at shutdown are closed");
    }
}

/// As hyper-util's and axum's servers do: a failed connection is the peer's problem; anything
/// else (out of file descriptors) is waited out rather than spun on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One accepted connection.
#[derive(Clone)]
struct Conn {
    app: Router,
    peer: SocketAddr,
    watch: Arc<Watch>,
    limits: Arc<EdgeLimits>,
    stopping: watch::Receiver<bool>,
}

impl Conn {
    async fn run(self, tcp: TcpStream, admitted: Admitted) {
        let io = TokioIo::new(Watched {
            io: tcp,
            watch: self.watch.clone(),
            stalled: false,
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout + self.limits.idle_timeout);
        let handler = self.clone();
        let service = hyper::service::service_fn(move |req| handler.clone().handle(req));
        let mut served = pin!(http.serve_connection(io, service));
        let mut expired = pin!(self.watch.expired());
        let mut stopping = self.stopping.clone();
        let mut shutting_down = false;
        loop {
            tokio::select! {
                ended = served.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended");
                    }
                    break;
                }
                () = &mut expired => {
                    // Dropping the connection closes the socket.
                    tracing::debug!(peer = %self.peer, "closed a connection past its deadline");
                    break;
                }
                _ = stopping.changed(), if !shutting_down => {
                    // Closes it now if idle, else after the response in progress.
                    served.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
        drop(admitted);
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Outgoing>, Infallible> {
        let busy = Busy::new(self.watch.clone());
        let push = is_push(req.uri().path());
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let arrived = Arc::new(AtomicBool::new(body.is_end_stream()));
        let body = axum::body::Body::new(Arriving {
            body,
            arrived: arrived.clone(),
        });
        let routed = self.app.oneshot(Request::from_parts(parts, body));
        let response = match tokio::time::timeout(self.limits.request_timeout, routed).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => past_deadline(arrived.load(Ordering::Acquire), self.peer),
        };
        let ends = push.then(|| {
            let mut stopping = self.stopping;
            let lifetime = self.limits.push_lifetime;
            let end: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                tokio::select! {
                    () = tokio::time::sleep(lifetime) => {}
                    // A stopping server ends its streams, so that it need not wait for them.
                    _ = stopping.changed() => {}
                }
            });
            end
        });
        Ok(response.map(|body| Outgoing {
            body,
            _busy: busy,
            ends,
            ended: false,
        }))
    }
}

/// The answer to a request not answered within `request_timeout`. Whose fault it was decides
/// the status: a client still sending its body gets 408 (and the connection is closed, as
/// RFC 9110 §15.5.9 asks: the rest of the body is unread); a request that had all arrived was
/// the server's to answer, 503. The body is empty, as no protocol's error form is known here.
fn past_deadline(arrived: bool, peer: SocketAddr) -> axum::response::Response {
    let status = if arrived {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::REQUEST_TIMEOUT
    };
    tracing::warn!(%peer, status = status.as_u16(), "a request passed the request deadline");
    let mut response = (status, [(header::CACHE_CONTROL, "no-store")]).into_response();
    if !arrived {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// What a connection is waiting for, and until when.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Part of a request head (or, on a new connection, nothing yet).
    Head { until: Instant },
    /// The next request on a kept-alive connection: nothing of it has arrived.
    Idle { until: Instant },
    /// Requests being handled or their responses sent (bounded by the request deadline, the
    /// stall bound and the push lifetime instead).
    Busy(usize),
}

#[derive(Debug)]
struct WatchState {
    phase: Phase,
    /// Since when the client has taken no response byte (the socket's send buffer is full).
    stalled_since: Option<Instant>,
}

/// A connection's deadline, moved by what its socket and its requests do.
#[derive(Debug)]
struct Watch {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    state: Mutex<WatchState>,
    changed: Notify,
}

impl Watch {
    fn new(header_read_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            header_read_timeout,
            idle_timeout,
            state: Mutex::new(WatchState {
                phase: Phase::Head {
                    until: Instant::now() + header_read_timeout,
                },
                stalled_since: None,
            }),
            changed: Notify::new(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut WatchState) -> bool) {
        let changed = f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        if changed {
            self.changed.notify_one();
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let phase = match state.phase {
            Phase::Head { until } | Phase::Idle { until } => Some(until),
            Phase::Busy(_) => None,
        };
        let stall = state.stalled_since.map(|s| s + self.idle_timeout);
        phase.into_iter().chain(stall).min()
    }

    /// Bytes arrived: on an idle connection, the start of a request head.
    fn bytes_read(&self) {
        self.update(|s| match s.phase {
            Phase::Idle { .. } => {
                s.phase = Phase::Head {
                    until: Instant::now() + self.header_read_timeout,
                };
                true
            }
            _ => false,
        });
    }

    fn write_stalled(&self, stalled: bool) {
        self.update(|s| {
            s.stalled_since = stalled.then(Instant::now);
            true
        });
    }

    /// The client took response bytes. hyper may still be sending a response whose body it
    /// has already dropped (a body of one large frame): the connection is not idle while it
    /// makes progress. (A later deadline needs no wake-up: the watcher looks again when the
    /// earlier one passes.)
    fn bytes_written(&self) {
        let idle_timeout = self.idle_timeout;
        self.update(|s| {
            if let Phase::Idle { until } = &mut s.phase {
                *until = Instant::now() + idle_timeout;
            }
            false
        });
    }

    /// Completes once the deadline has passed.
    async fn expired(&self) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            match self.deadline() {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A request in progress, from its head until its response has been sent (the guard lives in
/// the response body, which hyper drops once written).
#[derive(Debug)]
struct Busy(Arc<Watch>);

impl Busy {
    fn new(watch: Arc<Watch>) -> Self {
        watch.update(|s| {
            s.phase = match s.phase {
                Phase::Busy(n) => Phase::Busy(n + 1),
                _ => Phase::Busy(1),
            };
            true
        });
        Self(watch)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let idle = self.0.idle_timeout;
        self.0.update(|s| {
            s.phase = match s.phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Idle {
                    until: Instant::now() + idle,
                },
            };
            true
        });
    }
}

/// The socket, reporting to the watch when bytes arrive and when the client stops taking them.
struct Watched {
    io: TcpStream,
    watch: Arc<Watch>,
    stalled: bool,
}

impl Watched {
    fn wrote(&mut self, result: &Poll<std::io::Result<usize>>) {
        let stalled = result.is_pending();
        if stalled != self.stalled {
            self.stalled = stalled;
            self.watch.write_stalled(stalled);
        }
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.watch.bytes_written();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.bytes_read();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        this.wrote(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, data);
        this.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request body that records whether it has all arrived (for the deadline's status).
struct Arriving {
    body: Incoming,
    arrived: Arc<AtomicBool>,
}

impl Body for Arriving {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.body.is_end_stream() {
            this.arrived.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body: keeps its request counted as in progress until hyper has sent it, and
/// ends a push stream at its lifetime.
struct Outgoing {
    body: axum::body::Body,
    _busy: Busy,
    ends: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    ended: bool,
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Some(ends) = &mut this.ends
            && ends.as_mut().poll(cx).is_ready()
        {
            this.ends = None;
            this.ended = true;
        }
        if this.ended {
            return Poll::Ready(None);
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ends.is_some() {
            // It may end early: never announce a length it might not reach.
            SizeHint::default()
        } else {
            self.body.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn limits() -> EdgeLimits {
        EdgeLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_millis(200),
            push_lifetime: Duration::from_secs(30),
            max_connections: NonZeroU32::new(8).unwrap(),
            max_connections_per_source: None,
        }
    }

    /// A server for `app` on a loopback port; stops when the sender is dropped or sent to.
    async fn server(app: Router) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        server_with(app, limits()).await
    }

    async fn server_with(
        app: Router,
        limits: EdgeLimits,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            app,
            limits,
            TrustedProxies::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        (address, stop)
    }

    /// Sends `request` and reads until the server closes the connection.
    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(address).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_handler_past_the_deadline_is_answered_503() {
        let app = Router::new().route("/slow", get(std::future::pending::<()>));
        let (address, _stop) = server(app).await;
        let answer = exchange(
            address,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    }

    #[tokio::test]
    async fn a_body_still_arriving_at_the_deadline_is_answered_408_and_closed() {
        async fn read(body: Bytes) -> String {
            format!("{} bytes", body.len())
        }
        let app = Router::new().route("/upload", post(read));
        let (address, _stop) = server(app).await;
        // Announces ten bytes and sends one: the connection stays open for the rest.
        let mut tcp = TcpStream::connect(address).await.unwrap();
        tcp.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nx")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        let (address, _stop) = server(app).await;
        let answer = exchange(
            address,
            b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with("127.0.0.1"), "{answer}");
    }

    /// Reads one response with a `Content-Length` body off `tcp`.
    async fn response(tcp: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "closed mid-head");
            seen.push(byte[0]);
        }
        let head = String::from_utf8(seen).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        tcp.read_exact(&mut body).await.unwrap();
        head + &String::from_utf8(body).unwrap()
    }

    /// The header deadline counts from a request's first byte, not from the end of the
    /// previous response: a connection kept alive longer than it still serves its next request.
    #[tokio::test]
    async fn a_kept_alive_connection_outlives_the_header_timeout() {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let header_read_timeout = Duration::from_millis(100);
        let limits = EdgeLimits {
            header_read_timeout,
            idle_timeout: Duration::from_secs(30),
            ..limits()
        };
        let (address, _stop) = server_with(app, limits).await;
        let mut tcp = TcpStream::connect(address).await.unwrap();
        for _ in 0..2 {
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let answer = response(&mut tcp).await;
            assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
            tokio::time::sleep(header_read_timeout * 5).await;
        }
    }

    /// A response body of `frames` frames of 64 KiB, made as hyper asks for them (as a
    /// streamed download is).
    struct Frames(usize);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let this = self.get_mut();
            if this.0 == 0 {
                return Poll::Ready(None);
            }
            this.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 64 << 10])))))
        }
    }

    /// A client with a small receive window, which asked for `path`.
    async fn small_window_client(address: SocketAddr, path: &str) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        tcp
    }

    /// A client that asks for a large response and does not read it is disconnected once it
    /// has taken nothing for the idle timeout (a slow read holds no connection for ever).
    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected() {
        const FRAMES: usize = 256;
        let app = Router::new().route(
            "/big",
            get(|| async { axum::body::Body::new(Frames(FRAMES)) }),
        );
        let idle_timeout = Duration::from_millis(200);
        let limits = EdgeLimits {
            idle_timeout,
            ..limits()
        };
        let (address, _stop) = server_with(app, limits).await;
        let mut tcp = small_window_client(address, "/big").await;
        tokio::time::sleep(idle_timeout * 10).await;
        let mut received = Vec::new();
        let _ = tcp.read_to_end(&mut received).await;
        assert!(
            received.len() < FRAMES << 16,
            "the connection was closed before the body was sent ({} bytes)",
            received.len()
        );
    }

    /// A client that reads a large response slowly but steadily gets all of it, however long
    /// that takes beyond the idle timeout. The body is one frame, which hyper takes (and drops
    /// the body) long before it has sent it; larger than the kernel's buffers on both ends
    /// hold, so that most of it is still in hyper's.
    #[tokio::test]
    async fn a_slow_but_steady_reader_gets_the_whole_response() {
        const SIZE: usize = 32 << 20;
        let app = Router::new().route("/big", get(|| async { vec![b'x'; SIZE] }));
        // Long enough for the kernel's wake-ups: a full send buffer is reported writable only
        // once a third of it is free, which takes a slow reader a while.
        let idle_timeout = Duration::from_secs(2);
        let limits = EdgeLimits {
            idle_timeout,
            ..limits()
        };
        let (address, _stop) = server_with(app, limits).await;
        let mut tcp = TcpStream::connect(address).await.unwrap();
        tcp.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut received = 0;
        let mut buf = vec![0u8; 64 << 10];
        let started = Instant::now();
        // Until the head and the whole body are in (the head is a few hundred bytes).
        while received < SIZE + 100 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
            tokio::time::sleep(idle_timeout / 200).await;
        }
        assert!(received > SIZE, "cut off after {received} bytes");
        assert!(
            started.elapsed() > idle_timeout,
            "the read was slower than the idle timeout"
        );
    }

    /// A response body that never ends, as a push stream with nothing to say.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn shutdown_ends_push_streams_and_returns() {
        let stream = || async { axum::body::Body::new(Silent) };
        let app = Router::new().route(jmap::EVENTSOURCE_PATH, get(stream));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            app,
            EdgeLimits {
                // Also how long shutdown waits for connections: far longer than this test's.
                request_timeout: Duration::from_secs(3600),
                push_lifetime: Duration::from_secs(3600),
                ..limits()
            },
            TrustedProxies::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut tcp = TcpStream::connect(address).await.unwrap();
        let request = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", jmap::EVENTSOURCE_PATH);
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        stop.send(()).unwrap();
        // The stream ends (chunked: the last chunk), the server closes the connection and
        // returns, all without waiting out the drain bound.
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            let mut rest = Vec::new();
            tcp.read_to_end(&mut rest).await.unwrap();
            assert!(String::from_utf8_lossy(&rest).ends_with("0\r\n\r\n"));
            served.await.unwrap();
        });
        ended
            .await
            .expect("the push stream kept the server from stopping");
    }
}
