//! The admin API: a tenant's audit log and alerts over HTTP, paged, for admin tools and SIEMs.
//!
//! A token reaches it only if it names the admin audience (RFC 8707 `resource={public_url}/admin`)
//! and carries the `audit` scope, which Keypost grants to admin accounts only. A tenant admin
//! sees their own tenant; a provider admin sees every tenant (or one, with `tenant=`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use store::{AlertStatus, AuditQuery, RealmId, Role};
use tokens::Audience;

use crate::http::{ClientSource, authorization, blocking, no_store};
use crate::{Identity, OAuthError, now};

/// Most records or alerts one page returns.
const MAX_PAGE: u32 = 1_000;

/// The realm an admin may read: their own, or (provider admins) the one asked for, if any.
fn scope_of(
    id: &Identity,
    headers: &HeaderMap,
    src: &audit::Source,
    asked: Option<&str>,
) -> Result<Option<RealmId>, OAuthError> {
    let access = tokens::Access {
        resource: tokens::Resource::OfIssuer,
        audience: Audience::Admin,
        scope: Some("audit"),
        source: src,
        now: now(),
    };
    let p = id.authenticate(authorization(headers), &access, "admin")?;
    let account = p
        .account()
        .and_then(|a| id.store().get_account(&a).ok().flatten())
        .ok_or_else(|| OAuthError::forbidden("an admin account is required"))?;
    let asked = asked
        .map(|t| {
            RealmId::new(t).map_err(|_| OAuthError::invalid_request("tenant is not a realm id"))
        })
        .transpose()?;
    match account.role {
        Role::ProviderAdmin => Ok(asked),
        Role::TenantAdmin => match asked {
            Some(t) if t != account.realm => Err(OAuthError::forbidden("another tenant's log")),
            _ => Ok(Some(account.realm)),
        },
        Role::User => Err(OAuthError::forbidden("an admin account is required")),
    }
}

fn number(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, OAuthError> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| OAuthError::invalid_request(format!("{name} must be an integer")))
        })
        .transpose()
}

fn time(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, OAuthError> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>().or_else(|_| {
                humantime::parse_rfc3339_weak(v)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                    .ok_or_else(|| OAuthError::invalid_request(format!("{name} must be a time")))
            })
        })
        .transpose()
}

fn limit(q: &HashMap<String, String>) -> Result<u32, OAuthError> {
    Ok(number(q, "limit")?.map_or(100, |n| {
        u32::try_from(n.clamp(1, i64::from(MAX_PAGE))).unwrap_or(MAX_PAGE)
    }))
}

/// `GET /admin/audit?tenant=&operation=&user=&ip=&client=&jti=&kid=&since=&until=&after=&limit=`:
/// records oldest first; `next` is the `after` of the following page (null at the end).
pub(crate) async fn audit_log(
    State(id): State<Arc<Identity>>,
    ClientSource(src): ClientSource,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    blocking(move || {
        let result = (|| -> Result<serde_json::Value, OAuthError> {
            let realm = scope_of(&id, &headers, &src, q.get("tenant").map(String::as_str))?;
            let limit = limit(&q)?;
            let text = |k: &str| q.get(k).cloned();
            let query = AuditQuery {
                realm,
                operation: text("operation"),
                actor: text("user"),
                source_ip: text("ip"),
                client_id: text("client"),
                jti: text("jti"),
                kid: text("kid"),
                since: time(&q, "since")?,
                until: time(&q, "until")?,
                after_id: number(&q, "after")?,
                limit: Some(limit),
                ..Default::default()
            };
            let records = id.audit().search(&query).map_err(crate::Error::from)?;
            let next = (records.len() == limit as usize).then(|| records.last().map(|r| r.id));
            Ok(json!({"records": records, "next": next.flatten()}))
        })();
        no_store(match result {
            Ok(v) => Json(v).into_response(),
            Err(e) => e.into_response(),
        })
    })
    .await
}

/// `GET /admin/alerts?tenant=&status=&limit=`: alerts, newest first.
pub(crate) async fn alerts(
    State(id): State<Arc<Identity>>,
    ClientSource(src): ClientSource,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    blocking(move || {
        let result = (|| -> Result<serde_json::Value, OAuthError> {
            let realm = scope_of(&id, &headers, &src, q.get("tenant").map(String::as_str))?;
            let status = q
                .get("status")
                .map(|s| {
                    s.parse::<AlertStatus>().map_err(|_| {
                        OAuthError::invalid_request("status must be open, acknowledged or resolved")
                    })
                })
                .transpose()?;
            let list = id
                .store()
                .list_alerts(realm.as_ref(), status, limit(&q)?)
                .map_err(crate::Error::from)?;
            Ok(json!({"alerts": list}))
        })();
        no_store(match result {
            Ok(v) => Json(v).into_response(),
            Err(e) => e.into_response(),
        })
    })
    .await
}
