//! JMAP (RFC 8620 Core, RFC 8621 Mail) over HTTP: the session resource, the API endpoint and
//! blob download, behind the one token gate.
//!
//! `jmap` owns the JMAP wire protocol: request parsing and limits, result references, method
//! dispatch, JMAP error types, and the audit records of what each request read. It must never
//! read mail without emitting `MailItemsAccessed` (or `MailboxQueried` when only ids were
//! listed), and it never authenticates anyone itself: every request passes through
//! [`tokens::Gate`], and a principal only ever sees its own account.
//!
//! ```text
//!   Authorization ──Gate::authenticate(OfIssuer, Mail, "mail")──> Principal
//!        │                                   │ refusal: 401 + audited TokenRejected
//!        └── /.well-known/jmap   /jmap/api [methodCalls] ──> mail ──> audit   /jmap/download
//! ```
#![forbid(unsafe_code)]

mod api;
mod blob;
mod limits;
mod methods;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use audit::{AuditLog, Event, Operation, Source, TrustedProxies};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mail::Mail;
use serde_json::json;
use store::{Account, Store};
use tokens::{Audience, Gate, GateError, Principal};

#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for fuzzing (`fuzz/`, and the bounded run in the test suite); not a stable
    //! API. They run everything that reads a request before any account is touched.

    /// Parses an API request body and every call's arguments as the methods would.
    pub fn request(body: &[u8]) {
        if let Ok((_, calls)) = crate::api::parse_request(body) {
            for (name, args, _) in calls {
                crate::api::check_arguments(&name, args);
            }
        }
    }
}

/// Largest API request accepted (advertised as `maxSizeRequest`).
pub const MAX_SIZE_REQUEST: usize = 10 * 1024 * 1024;
/// Most method calls in one request (`maxCallsInRequest`).
pub const MAX_CALLS_IN_REQUEST: usize = 32;
/// Most objects one `/get` returns (`maxObjectsInGet`).
pub const MAX_OBJECTS_IN_GET: usize = 500;
/// Longest `Email/query` page.
pub const MAX_QUERY_LIMIT: u64 = 1000;
/// Where push notifications are streamed (RFC 8620 §7.3): the one route whose response is
/// meant to stay open, which the HTTP edge bounds by a lifetime instead of the request deadline.
pub const EVENTSOURCE_PATH: &str = "/jmap/eventsource";
/// Most API requests one account may have running at once (`maxConcurrentRequests`).
pub const MAX_CONCURRENT_REQUESTS: usize = 8;
/// Most uploads one account may have running at once (`maxConcurrentUpload`).
pub const MAX_CONCURRENT_UPLOAD: usize = 4;
/// Most bytes the result references of one method call may copy from earlier responses
/// (RFC 8620 §3.7). Lists of ids are what references are for; this is a thousand times the
/// largest such list a query or /get returns.
pub const MAX_REFERENCE_BYTES: usize = 1024 * 1024;
/// Largest response of one method call, serialised (the output twin of `maxSizeRequest`).
pub const MAX_SIZE_METHOD_RESPONSE: usize = MAX_SIZE_REQUEST;
/// Largest API response, serialised.
pub const MAX_SIZE_RESPONSE: usize = 2 * MAX_SIZE_METHOD_RESPONSE;
/// Most blob bytes one `Email/parse` reads: one message of the largest size accepted.
pub const MAX_PARSE_BYTES: usize = mail::MAX_MESSAGE_SIZE;

/// The JMAP service.
pub struct Jmap {
    gate: Arc<Gate>,
    mail: Mail,
    store: Arc<dyn Store>,
    audit: AuditLog,
    public_url: String,
    trusted_proxies: TrustedProxies,
    limits: limits::Limits,
    running: limits::Concurrency,
}

impl std::fmt::Debug for Jmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jmap")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Jmap {
    /// JMAP over `mail`, admitting requests through `gate`.
    pub fn new(gate: Arc<Gate>, mail: Mail, store: Arc<dyn Store>, public_url: &str) -> Self {
        Self {
            gate,
            mail,
            audit: AuditLog::new(store.clone()),
            store,
            public_url: public_url.trim_end_matches('/').to_owned(),
            trusted_proxies: TrustedProxies::default(),
            limits: limits::Limits::default(),
            running: limits::Concurrency::default(),
        }
    }

    /// Believes `X-Forwarded-For` from these proxies (`listen.trusted_proxies`).
    pub fn with_trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }
}

/// The JMAP routes.
pub fn router(jmap: Arc<Jmap>) -> Router {
    let routes = Router::new()
        .route("/.well-known/jmap", get(session))
        .route("/jmap/session", get(session))
        .route("/jmap/api", post(api_call))
        .route("/jmap/download/{account}/{blob}/{name}", get(download))
        .route(EVENTSOURCE_PATH, get(eventsource))
        .route("/jmap/upload/{account}/", post(upload))
        .route("/jmap/upload/{account}", post(upload))
        // maxSizeRequest is enforced before the body is read; slow bodies are cut off.
        .layer(DefaultBodyLimit::max(MAX_SIZE_REQUEST))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_secs(30),
        ))
        .with_state(jmap);
    guard_panics(routes)
}

/// A handler that panics (a bug) answers a 500 `serverFail` problem document, as a failed
/// blocking task does, instead of dropping the connection unanswered. The panic's message is
/// not repeated here: it may quote request data (the panic hook records where it happened).
fn guard_panics(routes: Router) -> Router {
    routes.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |_: Box<dyn std::any::Any + Send>| {
            tracing::error!("a JMAP handler panicked; answered 500");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "serverFail",
                "internal error",
            )
        },
    ))
}

fn now() -> i64 {
    store::clock::now()
}

/// An authenticated request: the principal, its account, where it came from.
pub(crate) struct Authed {
    pub(crate) principal: Principal,
    pub(crate) account: Account,
    pub(crate) source: Source,
    /// This request's audit events. They are queued as one write when the request's work is
    /// done ([`Authed::flush`]), and the response — with any mail in it — leaves only once
    /// they are durable. Should the work unwind half way, dropping `Authed` queues what was
    /// recorded, so a change that happened is never left unaudited.
    events: std::sync::Mutex<Vec<(Event, i64)>>,
    audit: audit::AuditLog,
}

impl Authed {
    /// An audit event about this request, with everything that identifies who made it.
    pub(crate) fn event(&self, op: Operation) -> Event {
        self.attribute(Event::success(op))
    }

    /// `ev` with everything that identifies who made this request.
    fn attribute(&self, ev: Event) -> Event {
        let p = &self.principal;
        let mut ev = ev
            .realm(p.realm())
            .actor(self.account.email.clone())
            .target(self.account.id.to_string())
            .client(p.client_id().as_str())
            .jti(p.jti().as_str())
            .kid(p.kid().as_str())
            .source(&self.source);
        if let Some(s) = p.session() {
            ev = ev.detail("session", s.to_string());
        }
        ev
    }

    /// Records `ev` as part of this request (see `events`).
    pub(crate) fn record(&self, ev: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((ev, now()));
    }

    /// Queues this request's events; `None` if there were none.
    fn flush(&self) -> Option<store::Completion> {
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()));
        (!events.is_empty()).then(|| self.audit.submit_all(events))
    }
}

/// What a submission records belongs to this request (`mail::Mail::submit`).
impl mail::Recorder for Authed {
    fn attribute(&self, event: Event) -> Event {
        Authed::attribute(self, event)
    }

    fn record(&self, event: Event) {
        Authed::record(self, event);
    }
}

impl Drop for Authed {
    fn drop(&mut self) {
        // Only non-empty if the request's work unwound before `flush`: queue it anyway (the
        // write proceeds without a waiter).
        let _ = self.flush();
    }
}

/// RFC 8620 §3.6.1 problem details.
pub(crate) fn problem(status: StatusCode, kind: &str, detail: &str) -> Response {
    let body = json!({"type": format!("urn:ietf:params:jmap:error:{kind}"), "status": status.as_u16(), "detail": detail});
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// RFC 8620 §3.6.1's `limit` problem: the request went over the named limit of the session
/// object.
pub(crate) fn limit_problem(limit: &str, detail: &str) -> Response {
    let body = json!({
        "type": "urn:ietf:params:jmap:error:limit", "status": 400, "limit": limit, "detail": detail,
    });
    let mut r = (StatusCode::BAD_REQUEST, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

fn unauthorized(error: Option<&str>) -> Response {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"jmap\", error=\"{e}\""),
        None => "Bearer realm=\"jmap\"".to_owned(),
    };
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": error.unwrap_or("invalid_request")})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn source_of(j: &Jmap, headers: &HeaderMap, peer: Option<SocketAddr>) -> Source {
    let values = |name| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    };
    let user_agent = values(header::USER_AGENT).next();
    let forwarded = values(header::HeaderName::from_static("x-forwarded-for"));
    Source::of_http(
        peer.map(|p| p.ip()),
        forwarded,
        user_agent,
        &j.trusted_proxies,
    )
}

/// A refusal of the token edge in JMAP's form: RFC 6750's 401 and 403 with their
/// challenges, a problem document when validation could not run.
fn refusal(e: GateError) -> Response {
    match e {
        GateError::NoCredential => unauthorized(None),
        GateError::Rejected(tokens::Rejection::InsufficientScope) => {
            let mut r = (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "insufficient_scope"})),
            )
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"jmap\", error=\"insufficient_scope\", scope=\"mail\"",
                ),
            );
            r
        }
        GateError::Rejected(_) => unauthorized(Some("invalid_token")),
        other => {
            tracing::error!(error = %other, "token validation unavailable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "serverUnavailable",
                "try again later",
            )
        }
    }
}

/// Runs the token edge. The realm comes from the token's `iss` (a JMAP request does not name
/// a realm); the principal's account must then belong to that realm.
// Refusals come back as the finished response; it is built once per refused request, so its
// size does not matter.
#[allow(clippy::result_large_err)]
fn authenticate(j: &Jmap, headers: &HeaderMap, source: Source) -> Result<Authed, Response> {
    let presented = tokens::Presentation::Authorization(
        headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}")),
    );
    let access = tokens::Access {
        resource: tokens::Resource::OfIssuer,
        audience: Audience::Mail,
        scope: Some("mail"),
        source: &source,
        now: now(),
    };
    let principal = match j.gate.authenticate(presented, &access) {
        Ok(a) => a.principal,
        Err(e) => return Err(refusal(e)),
    };
    let forbidden = || {
        problem(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token does not act for a mail account",
        )
    };
    let account_id = principal.account().ok_or_else(forbidden)?;
    let account = match j.store.get_account(&account_id) {
        Ok(Some(a)) if &a.realm == principal.realm() && !a.disabled => a,
        Ok(_) => return Err(forbidden()),
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "serverUnavailable",
                "try again later",
            ));
        }
    };
    Ok(Authed {
        principal,
        account,
        source,
        events: Default::default(),
        audit: j.audit.clone(),
    })
}

/// Runs `f` for an authenticated request on a blocking thread (the store is synchronous), or
/// answers with the gate's refusal; then appends the audit events `f` recorded and releases
/// the response only once they are durable. A request to a limited `endpoint` counts against
/// its account's concurrency limit from before `f` runs until its response leaves; one over
/// the limit is refused at once with the `limit` problem (RFC 8620 §3.6.1).
async fn with_auth(
    j: Arc<Jmap>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    endpoint: Option<limits::Endpoint>,
    f: impl FnOnce(&Jmap, &Authed) -> Response + Send + 'static,
) -> Response {
    let source = source_of(&j, &headers, peer(connect));
    // The events are queued inside the blocking task, so they are written even if this
    // request is dropped (the client went away) while the work runs.
    let done = tokio::task::spawn_blocking(move || {
        let a = match authenticate(&j, &headers, source) {
            Ok(a) => a,
            Err(r) => return (r, None, None),
        };
        let permit = match endpoint.map(|e| (e, j.running.admit(&a.account.id, e))) {
            None => None,
            Some((_, Some(permit))) => Some(permit),
            Some((e, None)) => {
                let name = e.limit_name();
                return (
                    limit_problem(name, &format!("this account already runs its {name}")),
                    None,
                    None,
                );
            }
        };
        (f(&j, &a), a.flush(), permit)
    })
    .await;
    let Ok((response, pending, _permit)) = done else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "serverFail",
            "internal error",
        );
    };
    let Some(pending) = pending else {
        return response;
    };
    // Awaited, not blocked on: the committer batches every request's records into shared
    // commits while this task waits.
    match pending.await {
        Ok(_) => response,
        Err(e) => {
            tracing::error!(error = %e, "audit write failed; withholding the response");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "serverUnavailable",
                "try again later",
            )
        }
    }
}

fn peer(connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> Option<SocketAddr> {
    connect.map(|c| c.0.0)
}

async fn session(
    State(j): State<Arc<Jmap>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    with_auth(
        j,
        connect,
        headers,
        None,
        move |j, a| match methods::session_object(j, a) {
            Ok(v) => Json(v).into_response(),
            Err(e) => e.into_response(),
        },
    )
    .await
}

async fn api_call(
    State(j): State<Arc<Jmap>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    with_auth(
        j,
        connect,
        headers,
        Some(limits::Endpoint::Api),
        move |j, a| api::handle(j, a, &body),
    )
    .await
}

async fn download(
    State(j): State<Arc<Jmap>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path((account, blob, name)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    with_auth(j, connect, headers, None, move |j, a| {
        let not_found = || {
            problem(
                StatusCode::NOT_FOUND,
                "notFound",
                "no such blob in this account",
            )
        };
        if account != a.account.id.as_str() {
            return not_found();
        }
        let Some(blob_ref) = blob::BlobRef::parse(&blob) else {
            return not_found();
        };
        let fetched = match blob::fetch(j, a, &blob_ref) {
            Ok(Some(found)) => found,
            Ok(None) => return not_found(),
            Err(e) => return methods::MethodError::server(e).into_response(),
        };
        let ev = a
            .event(Operation::MailItemsAccessed)
            .detail("operation", "download")
            .detail(
                "items",
                fetched
                    .email
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>(),
            )
            .detail("blob", blob);
        a.record(ev);
        let accept = q
            .as_deref()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("accept=")))
            .map(|v| v.replace("%2F", "/").replace("%2f", "/"))
            .filter(|v| {
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/+-.".contains(&b))
            })
            .unwrap_or_else(|| "message/rfc822".to_owned());
        let safe_name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .take(100)
            .collect();
        let mut r = (StatusCode::OK, fetched.bytes).into_response();
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::CONTENT_TYPE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe_name}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, immutable, max-age=31536000"),
        );
        r
    })
    .await
}

async fn upload(
    State(j): State<Arc<Jmap>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 255)
        .unwrap_or("application/octet-stream")
        .to_owned();
    with_auth(j, connect, headers, Some(limits::Endpoint::Upload), move |j, a| {
        if account != a.account.id.as_str() {
            return problem(StatusCode::NOT_FOUND, "notFound", "no such account");
        }

        match j.mail.upload(&a.account.id, &body, &media_type, now()) {
            Ok(blob) => (
                StatusCode::CREATED,
                Json(json!({"accountId": a.account.id, "blobId": blob, "type": media_type, "size": body.len()})),
            )
                .into_response(),
            Err(mail::Error::NotAMessage(why)) => problem(StatusCode::PAYLOAD_TOO_LARGE, "limit", &why),
            // 507, as WebDAV answers a write over quota (RFC 4331): retrying will not help
            // until the account has room, which deleting mail makes.
            Err(e @ mail::Error::OverQuota { .. }) => problem(StatusCode::INSUFFICIENT_STORAGE, "overQuota", &e.to_string()),
            Err(e) => methods::MethodError::server(e).into_response(),
        }
    })
    .await
}

/// How often an EventSource connection looks for a new state. Changes from any process (the
/// CLI, another node) are seen within this; a notification channel can replace the poll.
const PUSH_POLL: Duration = Duration::from_secs(1);

/// RFC 8620 §7.3: Server-Sent Events with a StateChange whenever the account's state moves.
async fn eventsource(
    State(j): State<Arc<Jmap>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let source = source_of(&j, &headers, peer(connect));
    let first = {
        let (j, headers, source) = (j.clone(), headers.clone(), source.clone());
        tokio::task::spawn_blocking(move || {
            authenticate(&j, &headers, source)
                .map_err(Box::new)
                .map(|a| j.mail.modseq(&a.account.id).unwrap_or_default())
        })
        .await
    };
    let initial = match first {
        Ok(Ok(state)) => state,
        Ok(Err(r)) => return *r,
        Err(_) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "serverFail",
                "internal error",
            );
        }
    };
    let param = |name: &str| {
        q.as_deref().and_then(|q| {
            q.split('&').find_map(|kv| {
                kv.strip_prefix(name)
                    .and_then(|v| v.strip_prefix('='))
                    .map(str::to_owned)
            })
        })
    };
    let close_after_state = param("closeafter").as_deref() == Some("state");
    let ping = param("ping")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        .min(3600);
    // The token is checked again on every poll: a revoked or expired token ends the stream.
    let stream = futures_util::stream::unfold(
        (j, headers, source, initial, false),
        move |(j, headers, source, last, done)| async move {
            if done {
                return None;
            }
            loop {
                tokio::time::sleep(PUSH_POLL).await;
                let (jj, h, src) = (j.clone(), headers.clone(), source.clone());
                let (account, now_state) = tokio::task::spawn_blocking(move || {
                    let a = authenticate(&jj, &h, src).ok()?;
                    let state = jj.mail.modseq(&a.account.id).ok()?;
                    Some((a.account.id.clone(), state))
                })
                .await
                .ok()??;
                if now_state != last {
                    let s = now_state.to_string();
                    let data = json!({"@type": "StateChange", "changed": {account.as_str(): {"Email": s, "Mailbox": s, "Thread": s, "EmailDelivery": s}}});
                    let event = SseEvent::default().event("state").data(data.to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (j, headers, source, now_state, close_after_state),
                    ));
                }
            }
        },
    );
    if ping == 0 {
        return Sse::new(stream).into_response();
    }
    let ping_event = SseEvent::default()
        .event("ping")
        .data(json!({"interval": ping}).to_string());
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(ping))
                .event(ping_event),
        )
        .into_response()
}
