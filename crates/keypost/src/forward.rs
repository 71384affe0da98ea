//! Pushing what Keypost sees to the systems that watch it: new alerts to an HMAC-signed
//! webhook, every audit record to syslog (RFC 5424). Each runs as a background task of `serve`
//! with a durable cursor in the database, so a receiver that was down gets everything once it
//! is back (at least once, in order).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_lc_rs::hmac;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use store::{AuditQuery, Store};

const WEBHOOK_CURSOR: &str = "webhook";
const SYSLOG_CURSOR: &str = "syslog";
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

/// Posts every new alert to `uri`, signed with `secret`; retries with backoff while it fails.
pub(crate) async fn webhook(store: Arc<dyn Store>, uri: hyper::Uri, secret: crate::config::Secret) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut backoff = POLL;
    loop {
        tokio::time::sleep(backoff).await;
        let s = store.clone();
        let pending = blocking(move || {
            let after = s.cursor(WEBHOOK_CURSOR)?;
            let mut alerts = s.list_alerts(None, None, 1_000)?;
            alerts.retain(|a| a.id > after);
            alerts.sort_by_key(|a| a.id);
            Ok(alerts)
        })
        .await;
        let alerts = match pending {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "webhook: reading alerts failed");
                continue;
            }
        };
        backoff = POLL;
        for alert in alerts {
            let body =
                serde_json::to_vec(&serde_json::json!({"type": "keypost.alert", "alert": alert}))
                    .unwrap_or_default();
            let now = identity::now();
            let request = hyper::Request::post(uri.clone())
                .header("content-type", "application/json")
                .header("user-agent", "keypost-webhook/1")
                .header("x-keypost-timestamp", now.to_string())
                .header(
                    "x-keypost-signature",
                    signature(secret.as_bytes(), now, &body),
                )
                .body(Full::new(Bytes::from(body)));
            let outcome = match request {
                Ok(req) => {
                    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                        Ok(Ok(resp)) => {
                            let ok = resp.status().is_success();
                            let _ = resp.into_body().collect().await;
                            ok
                        }
                        _ => false,
                    }
                }
                Err(_) => false,
            };
            if !outcome {
                tracing::warn!(alert = alert.id, "webhook delivery failed; will retry");
                backoff = (backoff * 2).min(MAX_BACKOFF);
                break;
            }
            let s = store.clone();
            let id = alert.id;
            if let Err(e) = blocking(move || Ok(s.set_cursor(WEBHOOK_CURSOR, id)?)).await {
                tracing::error!(error = %e, "webhook: saving the cursor failed");
                break;
            }
        }
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
