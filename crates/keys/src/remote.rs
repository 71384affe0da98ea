//! The signer as a separate process: the protocol it speaks over a Unix socket, the server loop
//! that runs in `keypost signer`, and the client every other process signs through.
//!
//! One binary frame per request and per answer ([`crate::wire`] has the format). A request
//! names what to sign and for whom — never which key: the signer picks the realm's active key
//! itself, writes the JWS header (so the `kid` in it is always the key that signed), decides
//! "active" by its own clock, and refuses exactly as the in-process [`Signer`] does. The
//! web-facing process holds no private key and no key-encryption key; it can only ask.
//!
//! ```text
//!   jws(realm "contoso", purpose "access-token", alg "EdDSA", typ "at+jwt", payload <b64url>)
//!   → signed(kid, alg "EdDSA", header <b64url>, signature)     signed input: header.payload
//!   raw(…) and any request for the audit key → refused: checkpoints and tombstones are
//!   signed inside the signer process only
//!   any failure → refused(reason) | no_active_key(detail) | failed(detail)
//! ```

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use store::{KeyPurpose, Kid, RealmId, UnixTime};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::transport::{Endpoint, Stream, TlsFiles};
use crate::wire::{self, Answer, Request};
use crate::{Algorithm, Error, Result, Signature, Signer, SigningKey};

/// What [`SignService::sign_jws_async`] resolves to.
pub type SignFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(SigningKey, String, Signature)>> + Send + 'a>,
>;

/// Signing, wherever the keys are: in this process ([`Signer`]) or in the signer process
/// ([`RemoteSigner`]).
pub trait SignService: Send + Sync + std::fmt::Debug {
    /// A JWS signing input `{header}.{payload_b64}` whose header names the realm's active key
    /// for `purpose` and `alg` (`{"alg","typ","kid"}`), and its signature.
    fn sign_jws(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        typ: &str,
        payload_b64: &str,
        now: UnixTime,
    ) -> Result<(SigningKey, String, Signature)>;

    /// [`SignService::sign_jws`] for async callers: the wait for a signer process costs a
    /// task, not a parked thread. By default, signs right here (an in-process signer's work
    /// is a signature's worth of CPU).
    fn sign_jws_async<'a>(
        &'a self,
        realm: &'a RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        typ: &'a str,
        payload_b64: &'a str,
        now: UnixTime,
    ) -> SignFuture<'a> {
        Box::pin(std::future::ready(self.sign_jws(
            realm,
            purpose,
            alg,
            typ,
            payload_b64,
            now,
        )))
    }

    /// A signature of `message` with the realm's active key for `purpose` and `alg`.
    fn sign_raw(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        message: &[u8],
        now: UnixTime,
    ) -> Result<(SigningKey, Signature)>;
}

/// The JWS protected header Keypost writes for `key`.
fn header(key: &SigningKey, typ: &str) -> String {
    jws_header(key.alg, &key.kid, typ)
}

/// The JWS protected header Keypost writes, base64url-encoded: three plain strings.
pub(crate) fn jws_header(alg: Algorithm, kid: &Kid, typ: &str) -> String {
    #[derive(serde::Serialize)]
    struct Header<'a> {
        alg: &'a str,
        typ: &'a str,
        kid: &'a str,
    }
    let h = Header {
        alg: alg.as_str(),
        typ,
        kid: kid.as_str(),
    };
    B64.encode(serde_json::to_vec(&h).unwrap_or_default())
}

impl SignService for Signer {
    fn sign_jws(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        typ: &str,
        payload_b64: &str,
        now: UnixTime,
    ) -> Result<(SigningKey, String, Signature)> {
        let (key, input, sig) = self.sign_current(realm, purpose, alg, now, |key| {
            format!("{}.{payload_b64}", header(key, typ)).into_bytes()
        })?;
        let input = String::from_utf8(input).map_err(|_| Error::Crypto)?;
        Ok((key, input, sig))
    }

    fn sign_raw(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        message: &[u8],
        now: UnixTime,
    ) -> Result<(SigningKey, Signature)> {
        let (key, _, sig) = self.sign_current(realm, purpose, alg, now, |_| message.to_vec())?;
        Ok((key, sig))
    }
}

fn now() -> UnixTime {
    store::clock::now()
}

/// A request the signer refused, for the audit log. The fields are what the request said,
/// unchecked (an unknown realm is reported as asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The operation asked for: `jws`, `raw`, or `malformed` for a request that did not parse.
    pub op: &'static str,
    /// The realm named.
    pub realm: String,
    /// The purpose named.
    pub purpose: String,
    /// The algorithm named.
    pub alg: String,
    /// Why it was refused.
    pub reason: &'static str,
}

/// Called with every refusal, in the signer process (it audits them).
pub type RefusalHook = Arc<dyn Fn(&Refusal) + Send + Sync>;

/// What the signer holds a JWS payload to before it signs it for a realm (`realm, purpose,
/// typ, payload_b64, now`): the realm's own issuer, tenant, audiences and lifetimes, so that a
/// compromised web process cannot have it sign a token the realm's issuer would never issue.
/// The refusal names why (one of the reasons the client knows).
pub type PayloadCheck = Arc<
    dyn Fn(&RealmId, KeyPurpose, &str, &str, UnixTime) -> std::result::Result<(), &'static str>
        + Send
        + Sync,
>;

/// The reasons a [`PayloadCheck`] may give (the client maps answers back onto these).
pub const PAYLOAD_REFUSALS: [&str; 3] = [
    "payload is not the realm's token",
    "token lifetime exceeds the realm's policy",
    "token audience is not the realm's",
];

/// What the signer process answers with: its keys, the policy it holds payloads to, and where
/// refusals go.
#[derive(Clone)]
pub struct SignerService {
    /// The signer.
    pub signer: Arc<Signer>,
    /// Every token payload's check.
    pub check: PayloadCheck,
    /// Every refusal's report.
    pub on_refused: RefusalHook,
}

/// Answers the request in `body` with `signer`, by the signer's own clock, appending the
/// answer frame to `out` and reporting refusals to `on_refused`.
fn answer(svc: &SignerService, body: &[u8], out: &mut Vec<u8>) {
    let (signer, on_refused) = (&*svc.signer, &svc.on_refused);
    let Some(request) = Request::decode(body) else {
        return refuse_malformed(on_refused, out);
    };
    let parse =
        |realm: &str, purpose: &str, alg: &str| -> Result<(RealmId, KeyPurpose, Algorithm)> {
            Ok((
                RealmId::new(realm).map_err(|_| Error::Refused("unknown realm"))?,
                purpose
                    .parse()
                    .map_err(|_| Error::Refused("unknown purpose"))?,
                alg.parse()?,
            ))
        };
    // Over a connection, only tokens are signed: the audit key signs checkpoints and
    // tombstones inside the signer process alone, so a compromised web process cannot forge
    // them.
    let (op, realm, purpose, alg, result) = match request {
        Request::Ping => return reply(out, Answer::Pong),
        Request::Raw {
            realm,
            purpose,
            alg,
            ..
        } => (
            "raw",
            realm,
            purpose,
            alg,
            Err(Error::Refused("raw signing is not offered over the socket")),
        ),
        Request::Jws {
            realm,
            purpose,
            alg,
            ..
        } if purpose == KeyPurpose::Audit.as_str() => (
            "jws",
            realm,
            purpose,
            alg,
            Err(Error::Refused("key is for another purpose")),
        ),
        Request::Jws {
            realm,
            purpose,
            alg,
            typ,
            payload,
        } => (
            "jws",
            realm,
            purpose,
            alg,
            parse(realm, purpose, alg).and_then(|(r, p, a)| {
                let now = now();
                (svc.check)(&r, p, typ, payload, now).map_err(Error::Refused)?;
                signer.sign_jws(&r, p, a, typ, payload, now)
            }),
        ),
    };
    match result {
        Ok((key, input, sig)) => reply(
            out,
            Answer::Signed {
                kid: key.kid.as_str(),
                alg: key.alg.as_str(),
                // The header is base64url: it holds no dot.
                header: input.split_once('.').map_or("", |(header, _)| header),
                signature: &sig.0,
            },
        ),
        Err(Error::Refused(why)) => {
            on_refused(&Refusal {
                op,
                realm: realm.into(),
                purpose: purpose.into(),
                alg: alg.into(),
                reason: why,
            });
            reply(out, Answer::Refused(why));
        }
        Err(e @ Error::NoActiveKey { .. }) => reply(out, Answer::NoActiveKey(&e.to_string())),
        Err(e) => {
            tracing::error!(target: "keypost::security", error = %e, "signing failed");
            reply(out, Answer::Failed("signing failed"));
        }
    }
}

/// Appends `answer` to `out`, or a failure if it does not fit a frame: every request gets
/// exactly one answer, or the client's answers would be out of step.
fn reply(out: &mut Vec<u8>, answer: Answer<'_>) {
    if answer.encode(out).is_err() {
        // A short, fixed detail always fits.
        let _ = Answer::Failed("answer too long").encode(out);
    }
}

/// Reports something that is not a request (audited as `malformed`) and answers it failed.
fn refuse_malformed(on_refused: &RefusalHook, out: &mut Vec<u8>) {
    on_refused(&malformed());
    reply(out, Answer::Failed("bad message"));
}

/// The refusal of something that is not a request.
fn malformed() -> Refusal {
    Refusal {
        op: "malformed",
        realm: String::new(),
        purpose: String::new(),
        alg: String::new(),
        reason: "bad message",
    }
}

/// Answers requests on one connection until it closes, in order. Clients may pipeline: the
/// answers to every complete request already received go out in one write, so a burst of
/// requests costs one wake-up and one write each way rather than one per request. A frame
/// announcing more than [`wire::MAX_FRAME`] bytes is answered with a failure and ends the
/// connection (what follows it cannot be told apart from its body).
fn converse(stream: impl Read + Write, svc: &SignerService) {
    let mut conn = BufReader::new(stream);
    let (mut body, mut out) = (Vec::new(), Vec::new());
    loop {
        let last = match wire::read(&mut conn, &mut body) {
            Ok(()) => {
                answer(svc, &body, &mut out);
                false
            }
            Err(e) if wire::is_too_long(&e) => {
                refuse_malformed(&svc.on_refused, &mut out);
                true
            }
            Err(_) => return,
        };
        // Another whole request already here: answer it before writing.
        if !last && wire::holds_frame(conn.buffer()) {
            continue;
        }
        if conn.get_mut().write_all(&out).is_err() || conn.get_mut().flush().is_err() || last {
            return;
        }
        out.clear();
    }
}

/// At most this many connections are served at once; more are closed at once. `serve` keeps
/// a small pool, so only a flood reaches this.
const MAX_CONNECTIONS: usize = 256;

/// Runs `handle` on a thread of its own for each accepted connection, at most
/// [`MAX_CONNECTIONS`] at once. A failed accept (out of file descriptors, say) or a thread
/// that cannot be started is logged and the loop goes on: nothing a peer does ends it.
fn each_connection<S: Send + 'static>(
    incoming: impl Iterator<Item = std::io::Result<S>>,
    handle: impl Fn(S) + Clone + Send + 'static,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let live = Arc::new(AtomicUsize::new(0));
    for stream in incoming {
        let s = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "signer: accepting a connection failed");
                store::clock::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if live.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            live.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(target: "keypost::security", "signer: too many connections; closing one");
            continue;
        }
        let (handle, count) = (handle.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("keypost-signer-conn".into())
            .spawn(move || {
                handle(s);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            live.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(error = %e, "signer: cannot start a connection thread");
        }
    }
}

/// Serves signing requests on `listener`: one thread per connection.
pub fn serve(listener: UnixListener, svc: SignerService) -> std::io::Result<()> {
    each_connection(listener.incoming(), move |stream| converse(stream, &svc));
    Ok(())
}

/// Serves signing requests over mutually authenticated TLS on `listener` (see
/// [`TlsFiles::server_config`]). A peer without a client certificate from the CA is refused
/// in the handshake, logged and reported to `on_refused`.
pub fn serve_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    svc: SignerService,
) -> std::io::Result<()> {
    let on_refused = svc.on_refused.clone();
    // Refused handshakes are audited at most once a second: every port scan and health
    // check is one, and they come from anyone who can reach the port.
    let last_audited = Arc::new(std::sync::atomic::AtomicU64::new(0));
    each_connection(listener.incoming(), move |tcp: std::net::TcpStream| {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let Ok(conn) = ServerConnection::new(config.clone()) else {
            return;
        };
        let mut tls = StreamOwned::new(conn, tcp);
        // A bounded handshake, in total and per read; afterwards pooled connections may idle.
        let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let _ = tls.sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        while tls.conn.is_handshaking() {
            let step = if std::time::Instant::now() > deadline {
                Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
            } else {
                tls.conn.complete_io(&mut tls.sock).map(|_| ())
            };
            if let Err(e) = step {
                tracing::warn!(target: "keypost::security", %peer, error = %e, "signer: TLS peer refused");
                let second = now().max(0) as u64;
                let last = last_audited.swap(second, std::sync::atomic::Ordering::SeqCst);
                if last != second {
                    on_refused(&Refusal {
                        op: "connect",
                        realm: String::new(),
                        purpose: String::new(),
                        alg: String::new(),
                        reason: "TLS handshake failed (no valid client certificate)",
                    });
                }
                return;
            }
        }
        let _ = tls.sock.set_read_timeout(None);
        converse(tls, &svc);
    });
    Ok(())
}

/// How long a TLS peer may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The reasons a signer refuses, as the static strings [`Error::Refused`] carries.
const REASONS: [&str; 12] = [
    "raw signing is not offered over the socket",
    "unknown key",
    "key is bound to another realm",
    "key is for another purpose",
    "key is revoked",
    "key is not active yet",
    "key is retired or expired",
    "key is not loaded",
    "unknown realm",
    "unknown purpose",
    "bad message",
    "TLS handshake failed (no valid client certificate)",
];

/// Signs through the signer process: at a Unix socket, or over mutually authenticated TLS.
pub struct RemoteSigner {
    endpoint: Endpoint,
    idle: Mutex<Vec<BufReader<Box<dyn Stream>>>>,
    /// The pipelined connection async callers share (Unix socket only), apart from the
    /// blocking pool. One: a single signer thread signs Ed25519 tokens far faster than two
    /// cores can mint them otherwise, and every request that shares a batch with others saves
    /// the signer a wake-up, which on a small machine costs about what a signature does
    /// (measured: two connections were slower than one; BENCHMARKS.md).
    pipe: Mutex<Option<Arc<Pipe>>>,
    /// Held by the one caller reconnecting the pipe.
    connecting: tokio::sync::Mutex<()>,
}

/// How long a signing request may wait for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One pipelined connection to the signer for async callers. Requests queue for a writer
/// task; a reader task hands each answer frame to the oldest waiting request (the signer
/// answers in order). At most [`IN_FLIGHT`] batches are written and unanswered at a time, so
/// under load requests gather while the signer works and go out together — one write, one
/// wake-up of the signer, one read back for many signatures — while an idle pipe sends a
/// lone request at once. Either side failing closes the pipe: waiting requests see their
/// answer dropped and retry on a fresh one.
struct Pipe {
    requests: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Reply)>,
    shared: Arc<Shared>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

/// Batches written to the signer and not yet fully answered, at most. Two: the signer
/// always has the next batch waiting while the answers to the last travel back.
const IN_FLIGHT: usize = 2;

/// Where the body of a request's answer frame goes.
type Reply = tokio::sync::oneshot::Sender<Vec<u8>>;

/// What the writer and the reader of a pipe share.
#[derive(Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Signalled when a batch is fully answered, or the pipe closed.
    answered: tokio::sync::Notify,
}

/// The requests written and not yet answered, oldest first, and how many of each written
/// batch are still unanswered; `closed` once the connection failed (nothing may wait on it
/// after that).
#[derive(Default)]
struct Waiting {
    queue: std::collections::VecDeque<Reply>,
    batches: std::collections::VecDeque<usize>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        let mut w = self.lock();
        w.closed = true;
        w.queue.clear();
        w.batches.clear();
        drop(w);
        self.answered.notify_one();
    }

    /// Waits until another batch may be written; `false` if the pipe closed.
    async fn room(&self) -> bool {
        loop {
            let answered = self.answered.notified();
            {
                let w = self.lock();
                if w.closed {
                    return false;
                }
                if w.batches.len() < IN_FLIGHT {
                    return true;
                }
            }
            // A batch answered since the check above left a permit: no wake-up is lost.
            answered.await;
        }
    }
}

impl Pipe {
    async fn open(path: &Path) -> std::io::Result<Self> {
        use tokio::io::AsyncWriteExt;
        let (read, mut write) = tokio::net::UnixStream::connect(path).await?.into_split();
        let (requests, mut queued) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Reply)>();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some((frame, answer)) = queued.recv().await {
                if !s.room().await {
                    return;
                }
                batch.clear();
                batch.extend_from_slice(&frame);
                let mut answers = vec![answer];
                while let Ok((frame, answer)) = queued.try_recv() {
                    batch.extend_from_slice(&frame);
                    answers.push(answer);
                }
                {
                    // Queued before they are written, so the reader finds them in order.
                    let mut w = s.lock();
                    if w.closed {
                        return;
                    }
                    w.batches.push_back(answers.len());
                    w.queue.extend(answers);
                }
                if write.write_all(&batch).await.is_err() {
                    s.close();
                    return;
                }
            }
        });
        let s = shared.clone();
        let reader = tokio::spawn(async move {
            let mut read = tokio::io::BufReader::new(read);
            loop {
                let mut body = Vec::new();
                if wire::read_async(&mut read, &mut body).await.is_err() {
                    break;
                }
                let (next, batch_done) = {
                    let mut w = s.lock();
                    let next = w.queue.pop_front();
                    let done = match w.batches.front_mut() {
                        Some(left) if *left > 1 => {
                            *left -= 1;
                            false
                        }
                        Some(_) => w.batches.pop_front().is_some(),
                        None => false,
                    };
                    (next, done)
                };
                if batch_done {
                    s.answered.notify_one();
                }
                match next {
                    // A request whose caller gave up: its answer goes nowhere.
                    Some(answer) => drop(answer.send(body)),
                    // An answer nobody asked for: the stream is out of step.
                    None => break,
                }
            }
            s.close();
        });
        Ok(Self {
            requests,
            shared,
            tasks: [writer, reader],
        })
    }

    fn is_closed(&self) -> bool {
        self.requests.is_closed() || self.shared.lock().closed
    }

    /// Sends `frame` and waits for the body of its answer; `None` if the pipe closed first.
    async fn exchange(&self, frame: Vec<u8>) -> Option<Vec<u8>> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.requests.send((frame, answer)).ok()?;
        answered.await.ok()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // Closing the connection: both halves are owned by these tasks.
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for RemoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSigner")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RemoteSigner {
    /// A client of the signer listening at the Unix socket `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            endpoint: Endpoint::Unix(path.to_owned()),
            idle: Mutex::new(Vec::new()),
            pipe: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// A client of the signer at `host:port`, over TLS 1.3 with this side's certificate from
    /// `files` and only `files.ca` trusted.
    pub fn tls(address: &str, files: &TlsFiles) -> Result<Self> {
        Ok(Self {
            endpoint: Endpoint::tls(address, files)?,
            idle: Mutex::new(Vec::new()),
            pipe: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    fn connect(&self) -> std::io::Result<BufReader<Box<dyn Stream>>> {
        Ok(BufReader::new(self.endpoint.connect()?))
    }

    fn exchange(conn: &mut BufReader<Box<dyn Stream>>, frame: &[u8]) -> std::io::Result<Vec<u8>> {
        conn.get_mut().write_all(frame)?;
        conn.get_mut().flush()?;
        let mut body = Vec::new();
        wire::read(conn, &mut body)?;
        Ok(body)
    }

    /// Sends `request` and returns the body of its answer frame.
    fn call(&self, request: &Request<'_>) -> Result<Vec<u8>> {
        let frame = Self::frame(request)?;
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // A pooled connection may have died with a restarted signer: one fresh try after it.
        let attempt = |conn: Option<BufReader<Box<dyn Stream>>>| -> std::io::Result<(BufReader<Box<dyn Stream>>, Vec<u8>)> {
            let mut conn = match conn {
                Some(c) => c,
                None => self.connect()?,
            };
            let answer = Self::exchange(&mut conn, &frame)?;
            Ok((conn, answer))
        };
        let (conn, answer) = match attempt(pooled) {
            Ok(ok) => ok,
            Err(_) => attempt(None).map_err(|e| Error::Unavailable(e.to_string()))?,
        };
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(answer)
    }

    fn frame(request: &Request<'_>) -> Result<Vec<u8>> {
        let mut frame = Vec::new();
        request
            .encode(&mut frame)
            .map_err(|_| Error::Refused("request too long"))?;
        Ok(frame)
    }

    /// [`RemoteSigner::call`] from an async task over the Unix socket: the same protocol on
    /// a pipelined tokio stream, so waiting for the signer parks no thread and concurrent
    /// requests share reads and writes.
    async fn call_async(&self, path: &Path, request: &Request<'_>) -> Result<Vec<u8>> {
        let frame = Self::frame(request)?;
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let late = || Error::Unavailable("the signer did not answer in time".into());
        // A pipe may have died with a restarted signer: one fresh try after it.
        for _ in 0..2 {
            let pipe = tokio::time::timeout_at(deadline, self.pipe(path))
                .await
                .map_err(|_| late())??;
            match tokio::time::timeout_at(deadline, pipe.exchange(frame.clone())).await {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => continue,
                Err(_) => {
                    // A signer that stopped answering: later requests must not queue behind
                    // it. Only this pipe is dropped, not one another caller opened since.
                    let mut slot = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.as_ref().is_some_and(|p| Arc::ptr_eq(p, &pipe)) {
                        *slot = None;
                    }
                    return Err(late());
                }
            }
        }
        Err(Error::Unavailable("the signer did not answer".into()))
    }

    /// The open pipe, if there is one.
    fn open_pipe(&self) -> Option<Arc<Pipe>> {
        let slot = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        slot.clone().filter(|p| !p.is_closed())
    }

    /// The open pipe, connecting a new one if there is none or it closed. One caller
    /// connects at a time and the others use what it opened: after a signer restart, every
    /// waiting request reconnecting on its own would be a burst of connections.
    async fn pipe(&self, path: &Path) -> Result<Arc<Pipe>> {
        if let Some(pipe) = self.open_pipe() {
            return Ok(pipe);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(pipe) = self.open_pipe() {
            return Ok(pipe);
        }
        let pipe = Arc::new(
            Pipe::open(path)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?,
        );
        *self.pipe.lock().unwrap_or_else(|p| p.into_inner()) = Some(pipe.clone());
        Ok(pipe)
    }

    /// The signed input and signature a JWS answer carries: the header the signer wrote, a
    /// dot, and the payload that was asked for.
    fn jws_answer(
        body: &[u8],
        typ: &str,
        payload_b64: &str,
    ) -> Result<(SigningKey, String, Signature)> {
        let (key, header, sig) = Self::signed(body)?;
        // The header is a function of the key and `typ`: only the one this side would write
        // for the key the signer named can join the token (not another kid, alg or anything
        // smuggled after a dot).
        if header != self::header(&key, typ) {
            return Err(Error::Unavailable("the signer wrote another header".into()));
        }
        Ok((key, format!("{header}.{payload_b64}"), sig))
    }

    /// Whether the signer answers.
    pub fn ping(&self) -> bool {
        self.call(&Request::Ping)
            .is_ok_and(|body| Answer::decode(&body) == Some(Answer::Pong))
    }

    /// The key, header and signature of a signed answer; the error any other answer means.
    fn signed(body: &[u8]) -> Result<(SigningKey, &str, Signature)> {
        let answer = Answer::decode(body).ok_or_else(|| Error::Unavailable("bad answer".into()))?;
        match answer {
            Answer::Signed {
                kid,
                alg,
                header,
                signature,
            } => Ok((
                SigningKey {
                    kid: Kid::new(kid).map_err(|_| Error::Crypto)?,
                    alg: alg.parse()?,
                },
                header,
                Signature(signature.to_vec()),
            )),
            Answer::Refused(detail) => Err(Error::Refused(
                REASONS
                    .iter()
                    .chain(PAYLOAD_REFUSALS.iter())
                    .find(|r| **r == detail)
                    .copied()
                    .unwrap_or("refused"),
            )),
            Answer::NoActiveKey(detail) => Err(Error::NoActiveKey {
                realm: detail.to_owned(),
                purpose: String::new(),
            }),
            Answer::Failed(detail) => Err(Error::Unavailable(detail.to_owned())),
            Answer::Pong => Err(Error::Unavailable("unexpected answer".into())),
        }
    }
}

impl SignService for RemoteSigner {
    fn sign_jws(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        typ: &str,
        payload_b64: &str,
        _now: UnixTime,
    ) -> Result<(SigningKey, String, Signature)> {
        let request = jws_request(realm, purpose, alg, typ, payload_b64);
        Self::jws_answer(&self.call(&request)?, typ, payload_b64)
    }

    fn sign_jws_async<'a>(
        &'a self,
        realm: &'a RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        typ: &'a str,
        payload_b64: &'a str,
        now: UnixTime,
    ) -> SignFuture<'a> {
        Box::pin(async move {
            let Endpoint::Unix(path) = &self.endpoint else {
                // The TLS link is blocking I/O: let the runtime move other tasks off this
                // worker while it waits.
                return tokio::task::block_in_place(|| {
                    self.sign_jws(realm, purpose, alg, typ, payload_b64, now)
                });
            };
            let request = jws_request(realm, purpose, alg, typ, payload_b64);
            Self::jws_answer(&self.call_async(path, &request).await?, typ, payload_b64)
        })
    }

    fn sign_raw(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        message: &[u8],
        _now: UnixTime,
    ) -> Result<(SigningKey, Signature)> {
        let answer = self.call(&Request::Raw {
            realm: realm.as_str(),
            purpose: purpose.as_str(),
            alg: alg.as_str(),
            message,
        })?;
        let (key, _, sig) = Self::signed(&answer)?;
        Ok((key, sig))
    }
}

fn jws_request<'a>(
    realm: &'a RealmId,
    purpose: KeyPurpose,
    alg: Algorithm,
    typ: &'a str,
    payload: &'a str,
) -> Request<'a> {
    Request::Jws {
        realm: realm.as_str(),
        purpose: purpose.as_str(),
        alg: alg.as_str(),
        typ,
        payload,
    }
}
