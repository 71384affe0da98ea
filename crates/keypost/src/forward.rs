//! Pushing what Keypost sees to the systems that watch it: every alert to an HMAC-signed
//! webhook, every audit record to syslog (RFC 5424). Each runs as a background task of `serve`
//! with a durable cursor in the database, so a receiver that was down gets everything once it
//! is back (at least once, in order). The webhook also keeps a durable retry queue for the
//! alerts its receiver refuses, so that one of them does not hold up the rest.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_lc_rs::hmac;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use store::{AuditQuery, Store};

/// The webhook's cursor and retry queue.
const WEBHOOK: &str = "webhook";
const SYSLOG_CURSOR: &str = "syslog";
/// Alerts the webhook reads at a time.
const WEBHOOK_PAGE: u32 = 100;
/// How long one POST may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused alert is tried again after a minute, then twice as long each time, at most
/// hourly, for as long as it is refused (each refusal logged).
const RETRY_FIRST: i64 = 60;
const RETRY_MAX: i64 = 3600;
/// How often each task looks for something new.
const POLL: Duration = Duration::from_millis(500);
/// Longest wait between attempts while a receiver is down.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyslogTarget {
    /// One datagram per message (RFC 5426).
    Udp(String),
    /// Octet-counted frames over one connection (RFC 6587).
    Tcp(String),
}

impl SyslogTarget {
    /// `udp://host:port` or `tcp://host:port`.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s.split_once("://") {
            Some(("udp", addr)) => Ok(Self::Udp(addr.to_owned())),
            Some(("tcp", addr)) => Ok(Self::Tcp(addr.to_owned())),
            _ => bail!("audit.syslog = {s:?}: expected udp://host:port or tcp://host:port"),
        }
    }
}

/// The webhook's URL, checked: plain `http://` only (Keypost has no TLS client; put a
/// TLS-terminating relay in front for a remote receiver). The body is signed either way.
pub(crate) fn check_webhook(url: &str) -> Result<hyper::Uri> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("alerts.webhook = {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        bail!(
            "alerts.webhook = {url:?}: only http:// URLs are supported (use a TLS relay for https)"
        );
    }
    Ok(uri)
}

/// `sha256=` and the hex HMAC-SHA256 of `{timestamp}.{body}` under `secret`: the receiver
/// recomputes it and checks the timestamp is recent, so a captured request cannot be replayed.
pub(crate) fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("background task")?
}

/// What one POST of an alert came to.
#[derive(Debug)]
enum Outcome {
    /// A 2xx.
    Delivered,
    /// No connection, no answer within the timeout, or an answer that says nothing about this
    /// alert (5xx, 401, 404, 429, ...): the receiver is not taking alerts now. Delivery waits
    /// at this alert, so they arrive in order once it is back.
    Unavailable(String),
    /// The receiver read this alert and refused it (400, 413, 422): it goes into the durable
    /// retry queue and the alerts after it go on, so one alert the receiver cannot take (its
    /// content shaped by whoever made the request) never stops the feed.
    Refused(String),
}

/// The webhook's delivery: every alert, once each (at least), in id order, with a durable
/// cursor and retry queue in the store, so a restart resumes exactly where it stopped.
pub(crate) struct Webhook {
    store: Arc<dyn Store>,
    uri: hyper::Uri,
    secret: crate::config::Secret,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Webhook {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        uri: hyper::Uri,
        secret: crate::config::Secret,
    ) -> Self {
        Self {
            store,
            uri,
            secret,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn post(&self, alert: &store::Alert) -> Outcome {
        let body =
            match serde_json::to_vec(&serde_json::json!({"type": "keypost.alert", "alert": alert}))
            {
                Ok(b) => b,
                Err(e) => return Outcome::Refused(format!("encoding: {e}")),
            };
        let now = identity::now();
        let request = hyper::Request::post(self.uri.clone())
            .header("content-type", "application/json")
            .header("user-agent", "keypost-webhook/1")
            .header("x-keypost-timestamp", now.to_string())
            .header(
                "x-keypost-signature",
                signature(self.secret.as_bytes(), now, &body),
            )
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Outcome::Unavailable(e.to_string()),
        };
        match tokio::time::timeout(WEBHOOK_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                // Drained (bounded by the timeout), so the connection can be reused.
                let _ = tokio::time::timeout(WEBHOOK_TIMEOUT, resp.into_body().collect()).await;
                match status.as_u16() {
                    200..=299 => Outcome::Delivered,
                    400 | 413 | 422 => Outcome::Refused(format!("HTTP {status}")),
                    _ => Outcome::Unavailable(format!("HTTP {status}")),
                }
            }
            Ok(Err(e)) => Outcome::Unavailable(e.to_string()),
            Err(_) => Outcome::Unavailable("no answer within the timeout".into()),
        }
    }

    /// Delivers what is due at `now`: the retry queue's due alerts, oldest first, then every
    /// alert after the cursor, a page at a time. Returns whether the receiver took everything
    /// it was offered (`false`: it is unavailable; the caller backs off).
    pub(crate) async fn pass(&self, now: i64) -> Result<bool> {
        let s = self.store.clone();
        let due = blocking(move || Ok(s.due_alert_retries(WEBHOOK, now, WEBHOOK_PAGE)?)).await?;
        for (alert, attempts) in due {
            let id = alert.id;
            match self.post(&alert).await {
                Outcome::Delivered => {
                    let s = self.store.clone();
                    blocking(move || Ok(s.alert_retry_done(WEBHOOK, id)?)).await?;
                }
                Outcome::Unavailable(e) => {
                    tracing::warn!(alert = id, error = %e, "webhook unavailable; will retry");
                    return Ok(false);
                }
                Outcome::Refused(e) => self.defer(id, now, attempts + 1, e).await?,
            }
        }
        loop {
            let s = self.store.clone();
            let page = blocking(move || {
                let after = s.cursor(WEBHOOK)?;
                Ok(s.alerts_after(after, WEBHOOK_PAGE)?)
            })
            .await?;
            for alert in &page {
                let id = alert.id;
                match self.post(alert).await {
                    Outcome::Delivered => {
                        let s = self.store.clone();
                        blocking(move || Ok(s.set_cursor(WEBHOOK, id)?)).await?;
                    }
                    Outcome::Unavailable(e) => {
                        tracing::warn!(alert = id, error = %e, "webhook unavailable; will retry");
                        return Ok(false);
                    }
                    Outcome::Refused(e) => self.defer(id, now, 1, e).await?,
                }
            }
            if page.len() < WEBHOOK_PAGE as usize {
                return Ok(true);
            }
        }
    }

    /// Queues a refused alert for its `attempt`-th retry (and moves the cursor past it).
    async fn defer(&self, id: i64, now: i64, attempt: u32, error: String) -> Result<()> {
        let delay = RETRY_FIRST
            .saturating_mul(1_i64 << attempt.saturating_sub(1).min(16))
            .min(RETRY_MAX);
        tracing::error!(alert = id, attempt, error = %error,
            "the webhook refused an alert; queued for retry");
        let s = self.store.clone();
        blocking(move || Ok(s.defer_alert_delivery(WEBHOOK, id, now + delay, &error)?)).await
    }
}

/// Posts every alert to `uri`, signed with `secret`, in order; backs off while the receiver
/// is unavailable.
pub(crate) async fn webhook(store: Arc<dyn Store>, uri: hyper::Uri, secret: crate::config::Secret) {
    let hook = Webhook::new(store, uri, secret);
    let mut backoff = POLL;
    loop {
        tokio::time::sleep(backoff).await;
        backoff = match hook.pass(identity::now()).await {
            Ok(true) => POLL,
            Ok(false) => (backoff * 2).min(MAX_BACKOFF),
            Err(e) => {
                tracing::error!(error = %e, "webhook: reading or saving its state failed");
                (backoff * 2).min(MAX_BACKOFF)
            }
        };
    }
}

/// Sends every audit record, in order, to syslog; retries with backoff while it fails.
pub(crate) async fn syslog(store: Arc<dyn Store>, target: SyslogTarget, hostname: String) {
    let mut backoff = POLL;
    let mut tcp: Option<tokio::net::TcpStream> = None;
    loop {
        tokio::time::sleep(backoff).await;
        let s = store.clone();
        let page = blocking(move || {
            let after = s.cursor(SYSLOG_CURSOR)?;
            Ok(s.search_audit(&AuditQuery {
                after_id: Some(after),
                limit: Some(1_000),
                ..Default::default()
            })?)
        })
        .await;
        let records = match page {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "syslog: reading the audit log failed");
                continue;
            }
        };
        let Some(last) = records.last().map(|r| r.id) else {
            backoff = POLL;
            continue;
        };
        let sent = send(&target, &mut tcp, &records, &hostname).await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "syslog delivery failed; will retry");
            tcp = None;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        backoff = POLL;
        let s = store.clone();
        if let Err(e) = blocking(move || Ok(s.set_cursor(SYSLOG_CURSOR, last)?)).await {
            tracing::error!(error = %e, "syslog: saving the cursor failed");
        }
    }
}

async fn send(
    target: &SyslogTarget,
    tcp: &mut Option<tokio::net::TcpStream>,
    records: &[store::AuditRecord],
    hostname: &str,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    match target {
        SyslogTarget::Udp(addr) => {
            let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
            socket.connect(addr).await?;
            for r in records {
                let mut line = audit::export::syslog(r, hostname).into_bytes();
                // One datagram each; RFC 5426 receivers must take 2048 octets, most take more.
                line.truncate(64 * 1024 - 1);
                socket.send(&line).await?;
            }
        }
        SyslogTarget::Tcp(addr) => {
            if tcp.is_none() {
                *tcp = Some(tokio::net::TcpStream::connect(addr).await?);
            }
            let stream = tcp.as_mut().context("syslog connection")?;
            for r in records {
                let line = audit::export::syslog(r, hostname);
                stream
                    .write_all(format!("{} {line}", line.len()).as_bytes())
                    .await?;
            }
            stream.flush().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use store::{Alert, AlertStatus, AlertStore, Severity, SqliteStore};

    /// A webhook receiver: what it accepted, in order, and how it answers.
    #[derive(Default)]
    struct Receiver {
        accepted: Vec<i64>,
        /// Alerts it refuses (422) the first time they come.
        refuse_once: HashSet<i64>,
        /// Accepts this many more, then answers 503 (`None`: no limit).
        budget: Option<usize>,
    }

    async fn receive(
        axum::extract::State(r): axum::extract::State<Arc<Mutex<Receiver>>>,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        let header = |n| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let t: i64 = header("x-keypost-timestamp").parse().unwrap_or(0);
        if header("x-keypost-signature") != signature(b"0123456789abcdef", t, &body) {
            return StatusCode::UNAUTHORIZED;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let Some(id) = v["alert"]["id"].as_i64() else {
            return StatusCode::BAD_REQUEST;
        };
        let mut r = r.lock().unwrap();
        if r.refuse_once.remove(&id) {
            return StatusCode::UNPROCESSABLE_ENTITY;
        }
        match &mut r.budget {
            Some(0) => return StatusCode::SERVICE_UNAVAILABLE,
            Some(n) => *n -= 1,
            None => {}
        }
        r.accepted.push(id);
        StatusCode::OK
    }

    fn alert(n: usize) -> Alert {
        Alert {
            id: 0,
            realm: None,
            rule: "forged-token".into(),
            severity: Severity::Critical,
            title: format!("alert {n}"),
            dedup_key: format!("192.0.2.{n}"),
            first_seen: 1_000,
            last_seen: 1_000,
            count: 1,
            evidence: vec![],
            details: serde_json::json!({}),
            status: AlertStatus::Open,
            status_by: None,
        }
    }

    /// Finding 6: more than 1,000 alerts (the old webhook read only the newest 1,000 and
    /// moved its cursor past the rest) all arrive, in id order; a receiver outage holds
    /// delivery at the alert it failed on, across a restart; an alert the receiver refuses is
    /// queued durably, retried when due, and does not hold up the ones after it.
    #[test]
    fn the_webhook_delivers_every_alert_in_order_and_resumes_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("keypost-webhook-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("keypost.db");
        let total = 1_205;
        let ids: Vec<i64> = {
            let store = SqliteStore::open(&db).unwrap();
            (0..total)
                .map(|n| store.raise_alert(&alert(n), 0).unwrap().0)
                .collect()
        };
        let refused = ids[6];
        let receiver = Arc::new(Mutex::new(Receiver {
            refuse_once: HashSet::from([refused]),
            budget: Some(600),
            ..Default::default()
        }));
        let secret: crate::config::Secret =
            serde_json::from_value(serde_json::json!("0123456789abcdef")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let uri: hyper::Uri = format!("http://{}/hook", listener.local_addr().unwrap())
                .parse()
                .unwrap();
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(receive))
                .with_state(receiver.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });

            // The receiver takes 600, refuses one, then fails.
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
            let hook = Webhook::new(store.clone(), uri.clone(), secret.clone());
            assert!(!hook.pass(10_000).await.unwrap(), "the receiver went down");
            let first: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|i| *i != refused)
                .take(600)
                .collect();
            assert_eq!(receiver.lock().unwrap().accepted, first);
            drop((hook, store));

            // After a restart, with the receiver back: everything after the cursor, in order.
            receiver.lock().unwrap().budget = None;
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
            let hook = Webhook::new(store.clone(), uri.clone(), secret.clone());
            assert!(hook.pass(10_001).await.unwrap());
            let all_but: Vec<i64> = ids.iter().copied().filter(|i| *i != refused).collect();
            assert_eq!(receiver.lock().unwrap().accepted, all_but);
            // The refused alert is due a minute after it was refused, not before.
            assert!(hook.pass(10_000 + RETRY_FIRST - 1).await.unwrap());
            assert_eq!(receiver.lock().unwrap().accepted.len(), total - 1);
            assert!(hook.pass(10_000 + RETRY_FIRST).await.unwrap());
            let mut expected = all_but.clone();
            expected.push(refused);
            assert_eq!(receiver.lock().unwrap().accepted, expected);
            // Nothing is delivered twice.
            assert!(hook.pass(20_000).await.unwrap());
            assert_eq!(receiver.lock().unwrap().accepted.len(), total);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn webhook_signature_is_hmac_sha256_of_timestamp_and_body() {
        // Known answer, computed with Python's hmac module.
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        assert!(check_webhook("https://siem.example/hook").is_err());
        assert!(check_webhook("http://127.0.0.1:9/hook").is_ok());
        assert_eq!(
            SyslogTarget::parse("udp://127.0.0.1:514").unwrap(),
            SyslogTarget::Udp("127.0.0.1:514".into())
        );
        assert!(SyslogTarget::parse("127.0.0.1:514").is_err());
    }
}
