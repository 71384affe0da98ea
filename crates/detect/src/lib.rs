//! Detection: rules over the live audit stream, alerts, and their delivery to the people who
//! must act on them.
//!
//! `detect` owns the rule catalogue ([`rules::RULES`]), the alert lifecycle (raised, repeated,
//! acknowledged, resolved) and delivery: a new alert lands as an email in the Inbox of every
//! admin of its tenant, and of the provider admins when it is high or critical. It runs off
//! the request path: [`Detector::run_once`] reads the audit records appended since its cursor,
//! so a slow rule never slows a mail read, and a restart resumes where it stopped.
//!
//! ```text
//!   audit log ──(id > cursor)──> rules::Context::evaluate ──Finding──> AlertStore::raise_alert
//!                                                                     └─ new: email to admins,
//!                                                                        AlertRaised audited
//! ```
#![forbid(unsafe_code)]

pub mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use audit::{AuditLog, Event, Operation};
use mail::{Draft, Mail};
use serde_json::Value;
use store::{
    Account, Alert, AlertStatus, AuditQuery, EmailAddress, RealmId, Role, Severity, Store, UnixTime,
};

pub use rules::{Finding, RULES, Setting};

/// The detector's cursor in the audit log.
pub const CURSOR: &str = "detector";

/// How many audit records one pass evaluates.
const BATCH: u32 = 500;
/// At most this many batches per [`Detector::run_once`] (100,000 records).
const MAX_BATCHES_PER_RUN: usize = 200;

/// Detection failed to run (not: found something).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Delivering an alert failed.
    #[error(transparent)]
    Mail(#[from] mail::Error),
    /// Auditing failed.
    #[error(transparent)]
    Audit(#[from] audit::Error),
}

/// An alert a pass raised or counted again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    /// The alert.
    pub id: i64,
    /// First time (delivered) or a repeat (counted).
    pub new: bool,
    /// The rule.
    pub rule: &'static str,
}

/// The detector.
pub struct Detector {
    store: Arc<dyn Store>,
    mail: Mail,
    audit: AuditLog,
    /// Alerts come from `Keypost Security <security@{sender_domain}>`.
    sender_domain: String,
    /// Each user's last hour of mail reads (the `mail-volume` rule).
    volumes: rules::Volumes,
    /// What each user's history is known to contain (`new-client`, `new-network`).
    seen: rules::Seen,
    /// Where this detector left the cursor: if another detector (`keypost alerts scan`) moved
    /// it since, the in-memory windows missed records and are rebuilt from the log.
    left_at: std::sync::Mutex<Option<i64>>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").finish_non_exhaustive()
    }
}

/// A rule's defaults (every rule is on unless a tenant turns it off).
fn default_setting() -> Setting {
    Setting {
        enabled: true,
        threshold: None,
    }
}

impl Detector {
    /// A detector over `store`, delivering alerts with `mail`.
    pub fn new(store: Arc<dyn Store>, mail: Mail, sender_domain: &str) -> Self {
        Self {
            audit: AuditLog::new(store.clone()),
            store,
            mail,
            sender_domain: sender_domain.to_owned(),
            volumes: Default::default(),
            seen: Default::default(),
            left_at: Default::default(),
        }
    }

    /// Evaluates every audit record appended since the last pass, a batch at a time, raising
    /// and delivering alerts. Returns what it raised; an empty list when there was nothing new.
    /// It drains the backlog rather than taking one batch per call, so the detector keeps up
    /// with any rate of appends the log sustains (one batch per tick capped it at
    /// `BATCH / tick` records per second, and alerts fell ever further behind above that).
    pub fn run_once(&self, now: UnixTime) -> Result<Vec<Raised>, Error> {
        let mut raised = Vec::new();
        // Bounded, so a sustained flood still yields a result (and the tick comes round
        // again) rather than one call that never returns.
        for _ in 0..MAX_BATCHES_PER_RUN {
            let (r, full) = self.pass(now)?;
            raised.extend(r);
            if !full {
                break;
            }
        }
        Ok(raised)
    }

    /// One batch; whether it was full (so more may be waiting).
    fn pass(&self, now: UnixTime) -> Result<(Vec<Raised>, bool), Error> {
        let cursor = self.store.cursor(CURSOR)?;
        {
            let mut left_at = self.left_at.lock().unwrap_or_else(|p| p.into_inner());
            if left_at.is_some_and(|l| l != cursor) {
                self.volumes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            *left_at = Some(cursor);
        }
        let records = self.store.search_audit(&AuditQuery {
            after_id: Some(cursor),
            limit: Some(BATCH),
            ..Default::default()
        })?;
        let Some(last) = records.last().map(|r| r.id) else {
            return Ok((Vec::new(), false));
        };
        let full = records.len() >= BATCH as usize;
        let cache: std::cell::RefCell<HashMap<(RealmId, String), Setting>> = Default::default();
        let settings = |realm: &RealmId, rule: &str| -> Setting {
            let key = (realm.clone(), rule.to_owned());
            if let Some(s) = cache.borrow().get(&key) {
                return *s;
            }
            let s = match self.store.rule_setting(realm, rule) {
                Ok(Some((enabled, threshold))) => Setting { enabled, threshold },
                Ok(None) => default_setting(),
                Err(e) => {
                    tracing::error!(error = %e, "reading rule settings failed; using defaults");
                    default_setting()
                }
            };
            cache.borrow_mut().insert(key, s);
            s
        };
        let ctx = rules::Context {
            store: &*self.store,
            settings: &settings,
            volumes: &self.volumes,
            seen: &self.seen,
        };
        // Findings of one pass are gathered per alert first: a rule that keeps firing (a user
        // reading in bulk, a spray) costs one write per pass, not one per record.
        let mut found: Vec<(Alert, &'static str)> = Vec::new();
        for r in &records {
            for f in ctx.evaluate(r)? {
                let same = |(a, _): &&mut (Alert, &'static str)| {
                    a.realm == r.realm && a.rule == f.rule && a.dedup_key == f.dedup_key
                };
                if let Some((a, _)) = found.iter_mut().find(same) {
                    a.count += 1;
                    a.last_seen = a.last_seen.max(r.time);
                    if a.evidence.len() < 50 {
                        a.evidence.push(r.id);
                    }
                    continue;
                }
                found.push((
                    Alert {
                        id: 0,
                        realm: r.realm.clone(),
                        rule: f.rule.to_owned(),
                        severity: f.severity,
                        title: f.title,
                        dedup_key: f.dedup_key,
                        first_seen: r.time,
                        last_seen: r.time,
                        count: 1,
                        evidence: vec![r.id],
                        details: f.details,
                        status: AlertStatus::Open,
                        status_by: None,
                    },
                    f.rule,
                ));
            }
        }
        let mut raised = Vec::new();
        for (alert, rule) in found {
            let (id, new) = self.store.raise_alert(&alert)?;
            if new {
                // The alert is stored whatever happens to the mail: a failed delivery is
                // logged and the alert stays visible (CLI, admin API, webhook, syslog).
                let delivered = match self.deliver(
                    &Alert {
                        id,
                        ..alert.clone()
                    },
                    now,
                ) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(target: "keypost::security", alert = id, error = %e,
                            "alert not delivered by mail");
                        Vec::new()
                    }
                };
                let mut ev = Event::success(Operation::AlertRaised)
                    .actor("keypost-detect")
                    .target(id.to_string())
                    .detail("rule", rule)
                    .detail("severity", alert.severity.as_str())
                    .detail("title", alert.title.clone())
                    .detail("evidence", alert.evidence.clone())
                    .detail("delivered_to", delivered);
                if let Some(realm) = &alert.realm {
                    ev = ev.realm(realm);
                }
                self.audit.record(ev, now)?;
                tracing::warn!(target: "keypost::security", alert = id, rule,
                    severity = alert.severity.as_str(), "{}", alert.title);
            }
            raised.push(Raised { id, new, rule });
        }
        self.store.set_cursor(CURSOR, last)?;
        *self.left_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
        let mut volumes = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        if volumes.len() > 10_000 {
            volumes.retain(|_, w| !w.idle(now));
        }
        Ok((raised, full))
    }

    /// Who hears of an alert: the tenant's admins (the provider admins for the consumer realm
    /// or a tenant without one), and the provider admins too when it is high or critical.
    fn recipients(&self, alert: &Alert) -> Result<Vec<Account>, Error> {
        let all = self.store.list_accounts(None)?;
        let live = |a: &&Account| !a.disabled;
        let providers: Vec<&Account> = all
            .iter()
            .filter(live)
            .filter(|a| a.role == Role::ProviderAdmin)
            .collect();
        let mut out: Vec<&Account> = all
            .iter()
            .filter(live)
            .filter(|a| a.role == Role::TenantAdmin && Some(&a.realm) == alert.realm.as_ref())
            .collect();
        if out.is_empty() || matches!(alert.severity, Severity::High | Severity::Critical) {
            out.extend(providers);
        }
        out.sort_by(|a, b| a.email.cmp(&b.email));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out.into_iter().cloned().collect())
    }

    /// Puts the alert in each recipient's Inbox; returns their addresses.
    fn deliver(&self, alert: &Alert, now: UnixTime) -> Result<Vec<String>, Error> {
        let mut delivered = Vec::new();
        for admin in self.recipients(alert)? {
            let raw = self.message(alert, &admin).write()?;
            let inbox = self.mail.mailbox_by_role(&admin.id, "inbox")?;
            let keywords = if alert.severity == Severity::Critical {
                vec!["$flagged".to_owned()]
            } else {
                Vec::new()
            };
            match self.mail.deliver(&admin.id, &raw, &inbox.id, keywords, now) {
                Ok(d) => {
                    self.audit.record(
                        Event::success(Operation::MailDelivered)
                            .realm(&admin.realm)
                            .actor("keypost-detect")
                            .target(admin.email.clone())
                            .detail("items", vec![d.id.to_string()])
                            .detail("via", "Alert")
                            .detail("alert", alert.id),
                        now,
                    )?;
                    delivered.push(admin.email.clone());
                }
                // A full mailbox must not stop the alert reaching the others.
                Err(e @ mail::Error::OverQuota { .. }) => {
                    tracing::error!(admin = %admin.email, error = %e, "alert not delivered");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(delivered)
    }

    fn message(&self, alert: &Alert, to: &Account) -> Draft {
        let description = RULES
            .iter()
            .find(|(id, _)| *id == alert.rule)
            .map_or("", |(_, d)| d);
        let tenant = alert.realm.as_ref().map_or("(provider)", RealmId::as_str);
        let mut observed = String::new();
        if let Value::Object(m) = &alert.details {
            for (k, v) in m.iter().filter(|(_, v)| !v.is_null()) {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                observed.push_str(&format!("  {k}: {v}\n"));
            }
        }
        let d = &alert.details;
        let investigate = [
            ("kid", "--kid"),
            ("source_ip", "--ip"),
            ("client_id", "--client"),
        ]
        .iter()
        .find_map(|(k, flag)| {
            d.get(*k)
                .and_then(Value::as_str)
                .map(|v| format!("keypost investigate {flag} {v}"))
        })
        .unwrap_or_else(|| "keypost audit search --realm ".to_owned() + tenant);
        let body = format!(
            "{title}\n\nSeverity: {severity}\nRule: {rule}\n  {description}\nTenant: {tenant}\nAlert: {id}\n\n\
             What was observed:\n{observed}\nEvidence: audit records {evidence:?}\n\n\
             Next steps:\n  {investigate}\n  keypost alerts ack {id}    (then: keypost alerts resolve {id})\n",
            title = alert.title,
            severity = alert.severity,
            rule = alert.rule,
            id = alert.id,
            evidence = alert.evidence,
        );
        Draft {
            from: vec![EmailAddress {
                name: Some("Keypost Security".into()),
                email: format!("security@{}", self.sender_domain),
            }],
            to: vec![EmailAddress {
                name: Some(to.display_name.clone()),
                email: to.email.clone(),
            }],
            subject: Some(format!(
                "[Keypost] {} alert: {}",
                alert.severity.as_str().to_uppercase(),
                alert.title
            )),
            sent_at: Some(alert.first_seen),
            headers: vec![
                ("X-Keypost-Alert".into(), alert.id.to_string()),
                ("X-Keypost-Rule".into(), alert.rule.clone()),
                ("Auto-Submitted".into(), "auto-generated".into()),
            ],
            text: Some(body),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use store::{FsBlobStore, SqliteStore};

    /// A detector over an in-memory store, its audit log, and the blob directory (`tag` names
    /// it; the caller removes it).
    fn bed(tag: &str) -> (std::path::PathBuf, Arc<dyn Store>, Detector, AuditLog) {
        let dir = std::env::temp_dir().join(format!("keypost-detect-{tag}-{}", std::process::id()));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let blobs = Arc::new(FsBlobStore::open(&dir).unwrap());
        let detector = Detector::new(store.clone(), Mail::new(store.clone(), blobs), "k.test");
        let log = AuditLog::new(store.clone());
        (dir, store, detector, log)
    }

    /// A backlog far larger than one batch (a busy server between two ticks) is all evaluated
    /// in one call: the forged token at its end raises its alert now, not after many ticks.
    #[test]
    fn one_pass_drains_a_backlog_of_many_batches() {
        let (dir, store, detector, log) = bed("backlog");
        let realm = RealmId::new("contoso").unwrap();
        let reads: Vec<(Event, i64)> = (0..(BATCH * 3 + 7))
            .map(|n| {
                let ev = Event::success(Operation::MailItemsAccessed)
                    .realm(&realm)
                    .actor("alice@contoso.test")
                    .client("app")
                    .detail("items", vec![format!("M{n}")]);
                (ev, 1_000)
            })
            .collect();
        let records: Vec<_> = reads
            .into_iter()
            .map(|(e, t)| AuditLog::prepare(e, t))
            .collect();
        store.append_audit(&records).unwrap();
        let forged = Event::failure(Operation::TokenRejected)
            .realm(&realm)
            .kid("stolen-kid")
            .detail("reason", "KeyNotInRealm");
        log.record(forged, 1_001).unwrap();

        let raised = detector.run_once(1_002).unwrap();
        assert!(
            raised.iter().any(|r| r.rule == "forged-token" && r.new),
            "{raised:?}"
        );
        assert!(detector.run_once(1_003).unwrap().is_empty(), "caught up");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A refresh token or authorization code refused at the token endpoint is an opaque
    /// secret nobody signed: `NotIssued` there is a made-up token, not a stolen signing key,
    /// and raises no `forged-token` alert; the same reason for an access token does.
    #[test]
    fn only_refused_signed_tokens_suggest_a_stolen_key() {
        let (dir, _store, detector, log) = bed("opaque");
        let realm = RealmId::new("contoso").unwrap();
        let refused = |reason: &str| {
            Event::failure(Operation::TokenRejected)
                .realm(&realm)
                .detail("reason", reason)
        };
        for (token_type, reason) in [
            ("refresh_token", "NotIssued"),
            ("refresh_token", "LedgerMismatch"),
            ("authorization_code", "CodeUnknown"),
        ] {
            log.record(refused(reason).detail("token_type", token_type), 1_000)
                .unwrap();
        }
        assert!(detector.run_once(1_001).unwrap().is_empty());
        // As the gate records a refused access token, and as records made before it said so.
        let access = refused("NotIssued").detail("token_type", "access_token");
        log.record(access.kid("k1"), 1_002).unwrap();
        log.record(refused("NotIssued").kid("k2"), 1_002).unwrap();
        let raised = detector.run_once(1_003).unwrap();
        assert_eq!(raised.len(), 2, "{raised:?}");
        assert!(
            raised.iter().all(|a| a.rule == "forged-token"),
            "{raised:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Keypost never issues a token without a claim the policy requires, or with one of the
    /// wrong type (a string `exp`): an access token refused for that after its signature
    /// verified was signed outside Keypost, and raises `token-out-of-policy`.
    #[test]
    fn a_signed_token_missing_a_claim_is_out_of_policy() {
        let (dir, _store, detector, log) = bed("claim");
        // As JMAP records a token whose `iss` could not even name a realm (no key was tried):
        // garbage, not a crafted token.
        let unread = Event::failure(Operation::TokenRejected)
            .detail("reason", "MissingClaim")
            .detail("audience", "mail");
        log.record(unread, 999).unwrap();
        assert!(detector.run_once(1_000).unwrap().is_empty());
        let realm = RealmId::new("contoso").unwrap();
        let refused = Event::failure(Operation::TokenRejected)
            .realm(&realm)
            .kid("k1")
            .detail("reason", "MissingClaim")
            .detail("token_type", "access_token");
        log.record(refused, 1_001).unwrap();
        let raised = detector.run_once(1_002).unwrap();
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].rule, "token-out-of-policy");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
