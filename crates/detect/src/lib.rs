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
//!                                                                     └─ new: claim_alert_mail
//!                                              under the hourly cap: email to admins ┘  │ over:
//!                                                     AlertRaised audited either way    held
//!   each pass: held alerts of an hour gone by ──> one summary email per tenant ("N more")
//! ```
//!
//! Whoever can send a request can make Keypost record a refusal, so nothing an alert costs may
//! grow with the requests: repeats are counted on one alert per source (not per made-up kid),
//! mail is capped per tenant and hour, and recipients are looked up by role.
#![forbid(unsafe_code)]

mod message;
pub mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use audit::{AuditLog, Event, Operation};
use mail::Mail;
use serde_json::Value;
use store::{Account, Alert, AlertStatus, AuditQuery, RealmId, Role, Severity, Store, UnixTime};

pub use rules::{Finding, RULES, Setting};

/// The detector's cursor in the audit log.
pub const CURSOR: &str = "detector";

/// How many audit records one pass evaluates.
const BATCH: u32 = 500;
/// At most this many batches per [`Detector::run_once`] (100,000 records).
const MAX_BATCHES_PER_RUN: usize = 200;
/// A repeat counts on the open alert it repeats while it keeps coming: at most this long
/// after the alert was last seen. After a quiet day it is news again, and mailed.
pub const DEDUP_WINDOW: i64 = 24 * 3600;
/// Alert mails per tenant (and for the provider's own alerts) per clock hour, by default;
/// the alerts beyond it are stored and named in one summary mail after the hour.
pub const DEFAULT_MAIL_CAP: u32 = 20;
/// Admins one alert is mailed to, at most, per role (bounded like every output).
const MAX_RECIPIENTS: u32 = 200;
/// Held alerts summarized per pass (the rest in the next: each page is one mail per tenant).
const SUMMARY_PAGE: u32 = 1_000;
const HOUR: i64 = 3600;

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
    /// Alert mails per tenant and clock hour.
    mail_cap: u32,
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
            mail_cap: DEFAULT_MAIL_CAP,
        }
    }

    /// Mails at most `cap` alerts per tenant and clock hour (at least one); the rest are
    /// named in one summary mail once the hour is over.
    pub fn with_mail_cap(mut self, cap: u32) -> Self {
        self.mail_cap = cap.max(1);
        self
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
        self.summarize_held(now)?;
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
        // A refusal naming a realm that does not exist (a made-up `iss` path) belongs to no
        // tenant: its alert is the provider's. Otherwise each made-up realm name would be an
        // alert, a mail cap and an audit chain of its own.
        let known: std::cell::RefCell<HashMap<RealmId, bool>> = Default::default();
        let tenant = |realm: &Option<RealmId>| -> Result<Option<RealmId>, Error> {
            let Some(realm) = realm else { return Ok(None) };
            let cached = known.borrow().get(realm).copied();
            let exists = match cached {
                Some(e) => e,
                None => {
                    let e = self.store.get_realm(realm)?.is_some();
                    known.borrow_mut().insert(realm.clone(), e);
                    e
                }
            };
            Ok(exists.then(|| realm.clone()))
        };
        // Findings of one pass are gathered per alert first: a rule that keeps firing (a user
        // reading in bulk, a spray) costs one write per pass, not one per record.
        let mut found: Vec<(Alert, &'static str)> = Vec::new();
        for r in &records {
            for f in ctx.evaluate(r)? {
                let realm = tenant(&r.realm)?;
                let mut details = f.details;
                if realm.is_none()
                    && let (Some(claimed), Value::Object(m)) = (&r.realm, &mut details)
                {
                    m.insert("realm_claimed".into(), claimed.as_str().into());
                }
                let alert = Alert {
                    id: 0,
                    realm,
                    rule: f.rule.to_owned(),
                    severity: f.severity,
                    title: f.title,
                    dedup_key: f.dedup_key,
                    first_seen: r.time,
                    last_seen: r.time,
                    count: 1,
                    evidence: vec![r.id],
                    details,
                    status: AlertStatus::Open,
                    status_by: None,
                };
                let same = |(a, _): &&mut (Alert, &'static str)| {
                    a.realm == alert.realm && a.rule == alert.rule && a.dedup_key == alert.dedup_key
                };
                match found.iter_mut().find(same) {
                    Some((a, _)) => a.absorb(&alert),
                    None => found.push((alert, f.rule)),
                }
            }
        }
        let alerts: Vec<Alert> = found.iter().map(|(a, _)| a.clone()).collect();
        let Some(outcome) = self
            .store
            .raise_alerts(&alerts, DEDUP_WINDOW, CURSOR, cursor, last)?
        else {
            // Another detector took this batch (and counted it): what this one fed its
            // in-memory windows from it is forgotten, and the next pass starts from there.
            tracing::debug!(cursor, "another detector took this batch");
            self.volumes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            *self.left_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok((Vec::new(), true));
        };
        let mut raised = Vec::new();
        for ((alert, rule), (id, new)) in found.into_iter().zip(outcome) {
            if new {
                let alert = Alert { id, ..alert };
                // Claimed before it is sent, in the store, so `serve` and `keypost alerts
                // scan` share one cap.
                let mailed = self
                    .store
                    .claim_alert_mail(id, hour_of(now), self.mail_cap, now)?;
                // The alert is stored whatever happens to the mail: a failed delivery is
                // logged and the alert stays visible (CLI, admin API, webhook, syslog).
                let delivered = if mailed {
                    match self.deliver(&alert, now) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!(target: "keypost::security", alert = id, error = %e,
                                "alert not delivered by mail");
                            Vec::new()
                        }
                    }
                } else {
                    Vec::new()
                };
                let mut ev = Event::success(Operation::AlertRaised)
                    .actor("keypost-detect")
                    .target(id.to_string())
                    .detail("rule", rule)
                    .detail("severity", alert.severity.as_str())
                    .detail("title", alert.title.clone())
                    .detail("evidence", alert.evidence.clone())
                    .detail("mail", if mailed { "sent" } else { "held" })
                    .detail("delivered_to", delivered);
                if let Some(realm) = &alert.realm {
                    ev = ev.realm(realm);
                }
                self.audit.record(ev, now)?;
                tracing::warn!(target: "keypost::security", alert = id, rule,
                    severity = alert.severity.as_str(), mailed, "{}", alert.title);
            }
            raised.push(Raised { id, new, rule });
        }
        *self.left_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
        let mut volumes = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        if volumes.len() > 10_000 {
            volumes.retain(|_, w| !w.idle(now));
        }
        Ok((raised, full))
    }

    /// Who hears of an alert of `realm` (`None`: the provider's own): the tenant's admins (the
    /// provider admins for the consumer realm or a tenant without one), and the provider
    /// admins too when it is high or critical. Asked of the store by role: the platform's
    /// accounts are never all read for one alert.
    fn recipients(
        &self,
        realm: Option<&RealmId>,
        severity: Severity,
    ) -> Result<Vec<Account>, Error> {
        let mut out = match realm {
            Some(r) => {
                self.store
                    .live_accounts_with_role(Role::TenantAdmin, Some(r), MAX_RECIPIENTS)?
            }
            None => Vec::new(),
        };
        if out.is_empty() || matches!(severity, Severity::High | Severity::Critical) {
            out.extend(self.store.live_accounts_with_role(
                Role::ProviderAdmin,
                None,
                MAX_RECIPIENTS,
            )?);
        }
        out.sort_by(|a, b| a.email.cmp(&b.email));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// Puts the alert in each recipient's Inbox; returns their addresses.
    fn deliver(&self, alert: &Alert, now: UnixTime) -> Result<Vec<String>, Error> {
        let flagged = alert.severity == Severity::Critical;
        self.send(
            alert.realm.as_ref(),
            alert.severity,
            flagged,
            |admin| message::alert(alert, admin, &self.sender_domain),
            ("Alert", vec![alert.id]),
            now,
        )
    }

    /// Puts `draft(admin)` in the Inbox of each admin who hears of alerts of `realm` at
    /// `severity`, audited as `MailDelivered` `via` what it is about; returns their addresses.
    fn send(
        &self,
        realm: Option<&RealmId>,
        severity: Severity,
        flagged: bool,
        draft: impl Fn(&Account) -> mail::Draft,
        (via, alerts): (&str, Vec<i64>),
        now: UnixTime,
    ) -> Result<Vec<String>, Error> {
        let mut delivered = Vec::new();
        for admin in self.recipients(realm, severity)? {
            let raw = draft(&admin).write()?;
            let inbox = self.mail.mailbox_by_role(&admin.id, "inbox")?;
            let keywords = if flagged {
                vec!["$flagged".to_owned()]
            } else {
                Vec::new()
            };
            match self.mail.deliver(&admin.id, &raw, &inbox.id, keywords, now) {
                Ok(d) => {
                    let mut ev = Event::success(Operation::MailDelivered)
                        .realm(&admin.realm)
                        .actor("keypost-detect")
                        .target(admin.email.clone())
                        .detail("items", vec![d.id.to_string()])
                        .detail("via", via);
                    ev = match alerts.as_slice() {
                        [one] => ev.detail("alert", *one),
                        many => ev.detail("alerts", many.to_vec()),
                    };
                    self.audit.record(ev, now)?;
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

    /// Mails, per tenant, one summary of the alerts the cap held back in hours now over, and
    /// marks them summarized: every alert reaches a mailbox, one by one or in a summary.
    fn summarize_held(&self, now: UnixTime) -> Result<(), Error> {
        let held = self.store.held_alerts(hour_of(now), SUMMARY_PAGE)?;
        let mut by_realm: Vec<(Option<RealmId>, Vec<Alert>)> = Vec::new();
        for a in held {
            match by_realm.iter_mut().find(|(r, _)| *r == a.realm) {
                Some((_, list)) => list.push(a),
                None => by_realm.push((a.realm.clone(), vec![a])),
            }
        }
        for (realm, alerts) in by_realm {
            let Some(worst) = alerts
                .iter()
                .map(|a| a.severity)
                .max_by_key(|s| message::rank(*s))
            else {
                continue;
            };
            let ids: Vec<i64> = alerts.iter().map(|a| a.id).collect();
            let sent = self.send(
                realm.as_ref(),
                worst,
                worst == Severity::Critical,
                |admin| {
                    message::summary(
                        realm.as_ref(),
                        &alerts,
                        self.mail_cap,
                        admin,
                        &self.sender_domain,
                        now,
                    )
                },
                ("AlertSummary", ids.clone()),
                now,
            );
            // Marked either way: a summary that cannot be delivered is logged, not retried
            // every 200 ms; the alerts themselves stay listed and open.
            if let Err(e) = sent {
                tracing::error!(target: "keypost::security", alerts = ids.len(), error = %e,
                    "alert summary not delivered by mail");
            }
            self.store.set_alerts_summarized(&ids)?;
        }
        Ok(())
    }
}

/// The start of the clock hour `now` is in: the mail cap counts per clock hour.
fn hour_of(now: UnixTime) -> UnixTime {
    now - now.rem_euclid(HOUR)
}

#[cfg(test)]
mod tests;
