//! The blast radius of a key, a token, a source address or a client, computed from the audit
//! log: who was reached, which mail items were read and when, what was refused.
//!
//! This answers the question the original breach left open for weeks ("which mailboxes did the
//! key open?") from records every tenant already has.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use store::{AuditQuery, AuditRecord, Store, UnixTime};

/// What to investigate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Everything done with tokens signed by this key, and every token presented with it.
    Kid(String),
    /// Everything done with one token.
    Jti(String),
    /// Everything from one source address.
    Ip(String),
    /// Everything done through one client.
    Client(String),
}

impl Subject {
    fn query(&self) -> AuditQuery {
        let mut q = AuditQuery::default();
        match self {
            Subject::Kid(k) => q.kid = Some(k.clone()),
            Subject::Jti(j) => q.jti = Some(j.clone()),
            Subject::Ip(a) => q.source_ip = Some(a.clone()),
            Subject::Client(c) => q.client_id = Some(c.clone()),
        }
        q
    }
}

/// A refused attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// When.
    pub time: UnixTime,
    /// The realm it was refused for.
    pub realm: Option<String>,
    /// Why (`KeyNotInRealm`, ...).
    pub reason: String,
    /// The subject the token named.
    pub sub: Option<String>,
    /// From where.
    pub source_ip: Option<String>,
    /// With what.
    pub user_agent: Option<String>,
    /// Audit record id.
    pub record: i64,
}

/// One account reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reached {
    /// Realm.
    pub realm: Option<String>,
    /// The account (email).
    pub account: String,
    /// Mail items whose content was read (`MailItemsAccessed`), in order of first read.
    pub items_read: Vec<String>,
    /// Requests that listed ids only (`MailboxQueried`).
    pub queries: u64,
    /// Changes made (`MailItemsUpdated`, `MailSent`).
    pub changes: u64,
    /// First and last activity.
    pub first: UnixTime,
    /// Last activity.
    pub last: UnixTime,
    /// Source addresses.
    pub sources: Vec<String>,
    /// Clients.
    pub clients: Vec<String>,
}

/// The blast radius.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlastRadius {
    /// Audit records examined.
    pub records: u64,
    /// Tenants involved (refused or reached).
    pub tenants: Vec<String>,
    /// Tokens issued (`TokenIssued` records).
    pub tokens_issued: u64,
    /// Refused attempts.
    pub refused: Vec<Attempt>,
    /// Accounts whose mail was touched, and how.
    pub reached: Vec<Reached>,
    /// Mail items read, over all accounts.
    pub items_read: usize,
}

fn push_unique(v: &mut Vec<String>, s: Option<&String>) {
    if let Some(s) = s
        && !v.contains(s)
    {
        v.push(s.clone());
    }
}

/// Computes the blast radius of `subject` from the audit log (records at or after `since`).
pub fn investigate(
    store: &dyn Store,
    subject: &Subject,
    since: Option<UnixTime>,
) -> store::Result<BlastRadius> {
    const PAGE: u32 = 5_000;
    let mut out = BlastRadius::default();
    let mut reached: BTreeMap<(Option<String>, String), Reached> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store.search_audit(&AuditQuery {
            since,
            after_id: Some(after),
            limit: Some(PAGE),
            ..subject.query()
        })?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in &page {
            out.records += 1;
            let realm = r.realm.as_ref().map(|x| x.to_string());
            if let Some(t) = &realm
                && !out.tenants.contains(t)
            {
                out.tenants.push(t.clone());
            }
            match r.operation.as_str() {
                "TokenRejected" => out.refused.push(attempt(r)),
                "TokenIssued" => out.tokens_issued += 1,
                "MailItemsAccessed" | "MailboxQueried" | "MailItemsUpdated" | "MailSent" => {
                    let account = r.actor.clone().unwrap_or_default();
                    let e = reached
                        .entry((realm.clone(), account.clone()))
                        .or_insert_with(|| Reached {
                            realm: realm.clone(),
                            account,
                            first: r.time,
                            ..Default::default()
                        });
                    e.last = e.last.max(r.time);
                    e.first = e.first.min(r.time);
                    push_unique(&mut e.sources, r.source_ip.as_ref());
                    push_unique(&mut e.clients, r.client_id.as_ref());
                    match r.operation.as_str() {
                        "MailItemsAccessed" => {
                            for item in r
                                .details
                                .get("items")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                            {
                                if let Some(i) = item.as_str()
                                    && !e.items_read.iter().any(|x| x == i)
                                {
                                    e.items_read.push(i.to_owned());
                                }
                            }
                        }
                        "MailboxQueried" => e.queries += 1,
                        _ => e.changes += 1,
                    }
                }
                _ => {}
            }
        }
    }
    out.reached = reached.into_values().collect();
    out.items_read = out.reached.iter().map(|r| r.items_read.len()).sum();
    out.tenants.sort();
    Ok(out)
}

fn attempt(r: &AuditRecord) -> Attempt {
    let text = |k: &str| r.details.get(k).and_then(Value::as_str).map(str::to_owned);
    Attempt {
        time: r.time,
        realm: r.realm.as_ref().map(|x| x.to_string()),
        reason: text("reason").unwrap_or_default(),
        sub: text("sub"),
        source_ip: r.source_ip.clone(),
        user_agent: r.user_agent.clone(),
        record: r.id,
    }
}
