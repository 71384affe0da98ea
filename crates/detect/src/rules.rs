//! The detection rules: what each catches, why, and how it decides. Each rule looks at one new
//! audit record and, where it needs to, at that user's or source's history before it.
//!
//! Hand-rolled on purpose: these rules are the product (the original breach was noticed by a
//! customer's own rule on premium logs); no library knows Keypost's events.

use serde_json::{Value, json};
use store::{AuditColumn, AuditQuery, AuditRecord, RealmId, Severity, Store};

use crate::message::{SHOWN, shown};

/// Every rule, with its id (used in settings and alerts) and what it catches.
pub const RULES: [(&str, &str); 10] = [
    (
        "forged-token",
        "A token whose signature belongs to another realm's key, an unknown key or a revoked \
         key, or a correctly signed token Keypost never issued: someone holds a signing key \
         (the Storm-0558 pattern). Critical; one alert per source address, counting its \
         attempts and listing the kids it presented.",
    ),
    (
        "token-out-of-policy",
        "A token crafted outside policy: a lifetime longer than the realm issues, iat in the \
         future, a forbidden algorithm, keys in the header, unknown crit, an ID token presented \
         as an access token, a correctly signed token missing a required claim. Tools forging \
         tokens produce these. High; one alert per source address.",
    ),
    (
        "misdirected-token",
        "A token whose signature verified with one of the realm's own keys, refused because it \
         names another tenant (tid), another issuer or another service (aud), or is signed by \
         a key of another purpose (an ID-token key). Keypost issues none of these: someone \
         holds a real key or a real token and is trying it where it does not belong. High; \
         one alert per source address.",
    ),
    (
        "unknown-issuer",
        "A token naming an issuer that is none of Keypost's realms (another identity \
         provider's, or a look-alike of a realm's), refused before any key was consulted: \
         someone probing for realms, or a client sent to the wrong place. Tied to no tenant, \
         so the provider's admins hear of it. Medium; one alert per source address.",
    ),
    (
        "new-client",
        "Mail read by a client id never seen before for that user (the user has earlier reads). \
         An attacker's tooling usually shows up as a new client. Medium.",
    ),
    (
        "new-network",
        "Mail read from a network (IPv4 /24, IPv6 /48) never seen before for that user (the user \
         has earlier reads). Medium.",
    ),
    (
        "mail-volume",
        "A user's mail items read in the last hour far above their own baseline: more than the \
         threshold (default 1000) and ten times their hourly average of the week before. Bulk \
         exfiltration looks like this. High; one alert per user and hour.",
    ),
    (
        "password-spray",
        "Failed sign-ins from one source address across many accounts within 15 minutes \
         (default 10 accounts). High; one alert per source.",
    ),
    (
        "credential-stuffing",
        "Failed sign-ins on one account from many source addresses within 15 minutes \
         (default 10 addresses). High; one alert per account.",
    ),
    (
        "signer-refused",
        "The signer process refused a signing request: the audit key or raw signing asked for \
         over its socket, a realm that does not exist, a malformed request. Keypost's own web \
         process never asks these; whoever did controls something that can reach the socket. \
         Critical; one alert per reason. Requests naming no existing realm alert the provider.",
    ),
];

/// What a rule found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Rule id.
    pub rule: &'static str,
    /// Severity.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// Repeats with this key count on one alert.
    pub dedup_key: String,
    /// What was observed.
    pub details: Value,
}

/// Settings a rule runs with for one realm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Its threshold, if it has one and the realm set it.
    pub threshold: Option<u64>,
}

/// One user's mail reads in the last hour, and their weekly hourly baseline when known.
#[derive(Debug, Default)]
pub(crate) struct Window {
    events: std::collections::VecDeque<(i64, u64)>,
    total: u64,
    /// (items per hour over the week before, when computed).
    baseline: Option<(u64, i64)>,
}

impl Window {
    fn push(&mut self, time: i64, items: u64) {
        self.events.push_back((time, items));
        self.total += items;
        while let Some((t, n)) = self.events.front().copied() {
            if t > time - HOUR {
                break;
            }
            self.events.pop_front();
            self.total -= n;
        }
    }

    /// Whether the window holds nothing newer than an hour before `now`.
    pub(crate) fn idle(&self, now: i64) -> bool {
        self.events.back().is_none_or(|(t, _)| *t <= now - HOUR)
    }
}

/// Facts about a user's history that, once true, stay true (they have read mail before; with
/// this client; from this network), so the detector asks the log about each only once.
pub(crate) type Seen =
    std::sync::Mutex<std::collections::HashSet<(Option<RealmId>, String, String)>>;

/// Per-user windows, kept by the detector across passes.
pub(crate) type Volumes =
    std::sync::Mutex<std::collections::HashMap<(Option<RealmId>, String), Window>>;

/// What a rule may look up.
pub struct Context<'a> {
    pub(crate) store: &'a dyn Store,
    pub(crate) settings: &'a dyn Fn(&RealmId, &str) -> Setting,
    pub(crate) volumes: &'a Volumes,
    pub(crate) seen: &'a Seen,
}

const SPRAY_WINDOW: i64 = 15 * 60;
const HOUR: i64 = 3600;

/// Whether the refused token was a signed one: an access token at a resource (records made
/// before `token_type` was written have none). Refresh tokens and authorization codes refused
/// at the token endpoint are opaque secrets, and say nothing about signing keys or claims.
fn signed_token(r: &AuditRecord) -> bool {
    r.details
        .get("token_type")
        .is_none_or(|t| t == "access_token")
}

fn reason(r: &AuditRecord) -> &str {
    r.details
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// How much of a presented kid a title shows (all of it is in the details).
const TITLE_KID: usize = 64;

/// What the refused-token rules de-duplicate on: the source address as recorded. A flood of
/// tokens with made-up kids from one source is one alert that counts them, not one each.
/// Where a refused token came from, as its alert counts it: the source's network (an IPv6 /64
/// is one source, as for every limit: addresses within it are the sender's to pick).
fn source(r: &AuditRecord) -> String {
    match &r.source_ip {
        Some(ip) => audit::network_key(ip, audit::DEFAULT_V6_PREFIX).unwrap_or_else(|| ip.clone()),
        None => "(no source)".into(),
    }
}

fn source_shown(r: &AuditRecord) -> String {
    shown(&source(r), SHOWN)
}

/// What a refused token presented, as an alert keeps it: the lists (`reasons`, `kids`) grow
/// with each repeat, bounded (`store::merge_alert_details`); the rest is the first attempt's.
fn presented(r: &AuditRecord) -> Value {
    let details = |k: &str| r.details.get(k).cloned().unwrap_or(Value::Null);
    json!({"reasons": [reason(r)], "kids": r.kid.iter().collect::<Vec<_>>(),
        "iss": details("iss"), "sub": details("sub"), "alg": details("alg"),
        "audience": details("audience"), "client_id": r.client_id,
        "source_ip": r.source_ip, "user_agent": r.user_agent})
}

/// The network a source address is in, as a prefix of its text: IPv4 /24, IPv6 /48.
pub fn network_of(ip: &str) -> String {
    if let Ok(std::net::IpAddr::V4(v4)) = ip.parse() {
        let o = v4.octets();
        return format!("{}.{}.{}.", o[0], o[1], o[2]);
    }
    if let Ok(std::net::IpAddr::V6(v6)) = ip.parse() {
        let s = v6.segments();
        return format!("{:x}:{:x}:{:x}:", s[0], s[1], s[2]);
    }
    ip.to_owned()
}

fn history(r: &AuditRecord, operation: &str) -> AuditQuery {
    AuditQuery {
        realm: r.realm.clone(),
        operation: Some(operation.into()),
        actor: r.actor.clone(),
        before_id: Some(r.id),
        ..Default::default()
    }
}

impl Context<'_> {
    /// Whether the user's history before `r` has a record matching `q` (`fact` names it for
    /// the cache; only "yes" is cached, since history only grows).
    fn seen_before(&self, r: &AuditRecord, fact: String, q: &AuditQuery) -> store::Result<bool> {
        let key = (r.realm.clone(), r.actor.clone().unwrap_or_default(), fact);
        if self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Ok(true);
        }
        let yes = self.store.audit_exists(q)?;
        if yes {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() > 200_000 {
                seen.clear();
            }
            seen.insert(key);
        }
        Ok(yes)
    }

    fn setting(&self, r: &AuditRecord, rule: &str) -> Option<Setting> {
        let realm = r.realm.as_ref()?;
        let s = (self.settings)(realm, rule);
        s.enabled.then_some(s)
    }

    /// Every finding `r` produces.
    pub fn evaluate(&self, r: &AuditRecord) -> store::Result<Vec<Finding>> {
        let mut out = Vec::new();
        match r.operation.as_str() {
            "TokenRejected" if signed_token(r) => {
                out.extend(self.forged_token(r));
                out.extend(self.out_of_policy(r));
                out.extend(self.misdirected(r));
                out.extend(self.unknown_issuer(r));
            }
            "MailItemsAccessed" if r.result == "success" => {
                out.extend(self.new_client(r)?);
                out.extend(self.new_network(r)?);
                out.extend(self.mail_volume(r)?);
            }
            "SignInFailed" => {
                out.extend(self.password_spray(r)?);
                out.extend(self.credential_stuffing(r)?);
            }
            // Once an account is throttled, further guesses are refused as throttled: they
            // still count as attempts on it.
            "SignInThrottled" => out.extend(self.credential_stuffing(r)?),
            "SigningRefused" => out.extend(self.signer_refused(r)),
            "AuditChainRefused" => out.push(audit_chain_refused(r)),
            _ => {}
        }
        Ok(out)
    }

    fn forged_token(&self, r: &AuditRecord) -> Option<Finding> {
        self.setting(r, "forged-token")?;
        let why = match reason(r) {
            "KeyNotInRealm" => "signed by a key of another realm",
            "NotIssued" => "correctly signed but never issued (a stolen signing key)",
            "LedgerMismatch" => "correctly signed but not the token the ledger holds",
            "KeyRevoked" => "signed by a revoked key",
            "UnknownKid" => "signed by a key no realm has",
            _ => return None,
        };
        let realm = r.realm.as_ref().map_or("", RealmId::as_str);
        let kid = r
            .kid
            .as_deref()
            .map_or_else(|| "(none)".to_owned(), |k| shown(k, TITLE_KID));
        Some(Finding {
            rule: "forged-token",
            severity: Severity::Critical,
            title: format!(
                "Forged token refused in {realm} from {}: {why} (kid {kid})",
                source_shown(r)
            ),
            dedup_key: source(r),
            details: presented(r),
        })
    }

    /// A refusal that comes only after the signature verified with one of the realm's keys
    /// (`tokens::validate` checks these claims and the key's purpose after the signature).
    fn misdirected(&self, r: &AuditRecord) -> Option<Finding> {
        // Without a realm no key was consulted: that is `unknown-issuer`'s.
        r.realm.as_ref()?;
        self.setting(r, "misdirected-token")?;
        let why = match reason(r) {
            "TenantMismatch" => "it names another tenant (tid)",
            "IssuerMismatch" => "it names another issuer",
            "AudienceMismatch" => "it is for another service (aud)",
            "WrongKeyPurpose" => "it is signed by a key for another kind of token",
            _ => return None,
        };
        let realm = r.realm.as_ref().map_or("", RealmId::as_str);
        Some(Finding {
            rule: "misdirected-token",
            severity: Severity::High,
            title: format!(
                "Token signed by a key of {realm} refused from {}: {why}",
                source_shown(r)
            ),
            dedup_key: source(r),
            details: presented(r),
        })
    }

    /// A refusal recorded without a realm because the token's `iss` names none of Keypost's
    /// (a token without an `iss`, or not a token at all, is garbage and alerts nobody).
    fn unknown_issuer(&self, r: &AuditRecord) -> Option<Finding> {
        if r.realm.is_some() || reason(r) != "IssuerMismatch" {
            return None;
        }
        Some(Finding {
            rule: "unknown-issuer",
            severity: Severity::Medium,
            title: format!(
                "Token naming an issuer Keypost does not have refused from {}",
                source_shown(r)
            ),
            dedup_key: source(r),
            details: presented(r),
        })
    }

    fn signer_refused(&self, r: &AuditRecord) -> Option<Finding> {
        // A tenant may turn it off for its realm; asks naming no realm go to the provider.
        if r.realm.is_some() {
            self.setting(r, "signer-refused")?;
        }
        let why = reason(r);
        Some(Finding {
            rule: "signer-refused",
            severity: Severity::Critical,
            title: format!(
                "The signer refused a signing request: {}",
                shown(why, SHOWN)
            ),
            dedup_key: why.to_owned(),
            details: json!({"reason": why, "op": r.details.get("op"),
                "purpose": r.details.get("purpose"), "alg": r.details.get("alg"),
                "realm_asked": r.details.get("realm_asked")}),
        })
    }

    fn out_of_policy(&self, r: &AuditRecord) -> Option<Finding> {
        self.setting(r, "token-out-of-policy")?;
        let why = match reason(r) {
            "LifetimeExceedsPolicy" => "a lifetime longer than the realm issues",
            "IssuedInFuture" => "iat in the future",
            "AlgorithmNotAllowed" => "a forbidden algorithm",
            "AlgorithmMismatch" => "an algorithm the key is not pinned to",
            "HeaderKeyForbidden" => "a key in its header",
            "CritUnsupported" => "an unknown crit extension",
            "TypeMismatch" => "the wrong type (an ID token as an access token)",
            // Reached only once the signature verified: no token Keypost issues lacks one.
            "MissingClaim" => "a required claim missing, malformed or of the wrong type",
            _ => return None,
        };
        Some(Finding {
            rule: "token-out-of-policy",
            severity: Severity::High,
            title: format!("Crafted token refused from {}: {why}", source_shown(r)),
            dedup_key: source(r),
            details: presented(r),
        })
    }

    fn new_client(&self, r: &AuditRecord) -> store::Result<Option<Finding>> {
        let (Some(_), Some(client), Some(actor)) =
            (self.setting(r, "new-client"), &r.client_id, &r.actor)
        else {
            return Ok(None);
        };
        let before = history(r, "MailItemsAccessed");
        if !self.seen_before(r, "reads".into(), &before)? {
            return Ok(None); // no baseline yet: a user's first client is not news
        }
        let same = AuditQuery {
            client_id: Some(client.clone()),
            ..before
        };
        if self.seen_before(r, format!("client {client}"), &same)? {
            return Ok(None);
        }
        let tenant_new = !self.store.audit_exists(&AuditQuery {
            realm: r.realm.clone(),
            operation: Some("MailItemsAccessed".into()),
            client_id: Some(client.clone()),
            before_id: Some(r.id),
            ..Default::default()
        })?;
        Ok(Some(Finding {
            rule: "new-client",
            severity: Severity::Medium,
            title: format!(
                "Mail of {} read by a client never seen for them: {}",
                shown(actor, SHOWN),
                shown(client, SHOWN)
            ),
            dedup_key: format!("{actor}|{client}"),
            details: json!({"actor": actor, "client_id": client, "new_for_tenant": tenant_new,
                "source_ip": r.source_ip}),
        }))
    }

    fn new_network(&self, r: &AuditRecord) -> store::Result<Option<Finding>> {
        let (Some(_), Some(ip), Some(actor)) =
            (self.setting(r, "new-network"), &r.source_ip, &r.actor)
        else {
            return Ok(None);
        };
        let before = history(r, "MailItemsAccessed");
        if !self.seen_before(r, "reads".into(), &before)? {
            return Ok(None);
        }
        let network = network_of(ip);
        let seen = AuditQuery {
            source_prefix: Some(network.clone()),
            ..before
        };
        if self.seen_before(r, format!("network {network}"), &seen)? {
            return Ok(None);
        }
        Ok(Some(Finding {
            rule: "new-network",
            severity: Severity::Medium,
            title: format!(
                "Mail of {} read from a network never seen for them: {}",
                shown(actor, SHOWN),
                shown(ip, SHOWN)
            ),
            dedup_key: format!("{actor}|{network}"),
            details: json!({"actor": actor, "source_ip": ip, "network": network, "client_id": r.client_id}),
        }))
    }

    fn mail_volume(&self, r: &AuditRecord) -> store::Result<Option<Finding>> {
        let (Some(setting), Some(actor)) = (self.setting(r, "mail-volume"), &r.actor) else {
            return Ok(None);
        };
        let floor = setting.threshold.unwrap_or(1000);
        let base = AuditQuery {
            realm: r.realm.clone(),
            operation: Some("MailItemsAccessed".into()),
            actor: Some(actor.clone()),
            ..Default::default()
        };
        let items = r
            .details
            .get("items")
            .and_then(Value::as_array)
            .map_or(0, |a| a.len() as u64);
        // The last hour is kept in memory per user, fed by the records as they pass; the
        // database is asked only when a user is first seen (since a restart) and, once an hour,
        // for their weekly baseline. Summing an hour of history per record would make the
        // detector fall behind under exactly the load it must watch.
        let mut volumes = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        let key = (r.realm.clone(), actor.clone());
        if !volumes.contains_key(&key) {
            // Rebuilt from the log with each read at its own time, so it ages out on time.
            let mut w = Window::default();
            let mut after = 0;
            loop {
                let page = self.store.search_audit(&AuditQuery {
                    since: Some(r.time - HOUR),
                    before_id: Some(r.id),
                    after_id: Some(after),
                    limit: Some(5_000),
                    ..base.clone()
                })?;
                let Some(last) = page.last().map(|p| p.id) else {
                    break;
                };
                for p in &page {
                    let n = p
                        .details
                        .get("items")
                        .and_then(Value::as_array)
                        .map_or(0, |a| a.len() as u64);
                    w.push(p.time, n);
                }
                after = last;
            }
            volumes.insert(key.clone(), w);
        }
        let Some(w) = volumes.get_mut(&key) else {
            return Ok(None);
        };
        w.push(r.time, items);
        let last_hour = w.total;
        if last_hour <= floor {
            return Ok(None);
        }
        let hourly_baseline = match w.baseline {
            Some((b, at)) if r.time - at < HOUR => b,
            _ => {
                let week = self.store.sum_audit_items(&AuditQuery {
                    since: Some(r.time - HOUR - 7 * 24 * HOUR),
                    until: Some(r.time - HOUR),
                    ..base
                })?;
                let b = week / (7 * 24);
                w.baseline = Some((b, r.time));
                b
            }
        };
        if last_hour <= hourly_baseline.saturating_mul(10) {
            return Ok(None);
        }
        Ok(Some(Finding {
            rule: "mail-volume",
            severity: Severity::High,
            title: format!(
                "{} read {last_hour} mail items in an hour (baseline {hourly_baseline}/hour)",
                shown(actor, SHOWN)
            ),
            dedup_key: format!("{actor}|{}", r.time / HOUR),
            details: json!({"actor": actor, "items_last_hour": last_hour,
                "hourly_baseline": hourly_baseline, "threshold": floor}),
        }))
    }

    fn password_spray(&self, r: &AuditRecord) -> store::Result<Option<Finding>> {
        let (Some(setting), Some(ip)) = (self.setting(r, "password-spray"), &r.source_ip) else {
            return Ok(None);
        };
        let threshold = setting.threshold.unwrap_or(10);
        // A source is its network (an IPv6 /64) where the sign-in recorded one.
        let network = r
            .details
            .get("source_network")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let accounts = self.store.count_distinct_audit(
            &AuditQuery {
                realm: r.realm.clone(),
                operation: Some("SignInFailed".into()),
                source_ip: network.is_none().then(|| ip.clone()),
                source_network: network,
                since: Some(r.time - SPRAY_WINDOW),
                before_id: Some(r.id + 1),
                ..Default::default()
            },
            AuditColumn::Actor,
        )?;
        if accounts < threshold {
            return Ok(None);
        }
        Ok(Some(Finding {
            rule: "password-spray",
            severity: Severity::High,
            title: format!(
                "Password spraying from {}: failed sign-ins on {accounts} accounts in 15 minutes",
                shown(ip, SHOWN)
            ),
            dedup_key: ip.clone(),
            details: json!({"source_ip": ip, "accounts": accounts, "threshold": threshold}),
        }))
    }

    fn credential_stuffing(&self, r: &AuditRecord) -> store::Result<Option<Finding>> {
        let (Some(setting), Some(actor)) = (self.setting(r, "credential-stuffing"), &r.actor)
        else {
            return Ok(None);
        };
        let threshold = setting.threshold.unwrap_or(10);
        let sources = self.store.count_distinct_audit(
            &AuditQuery {
                realm: r.realm.clone(),
                operations: vec!["SignInFailed".into(), "SignInThrottled".into()],
                actor: Some(actor.clone()),
                since: Some(r.time - SPRAY_WINDOW),
                before_id: Some(r.id + 1),
                ..Default::default()
            },
            AuditColumn::SourceNetwork,
        )?;
        if sources < threshold {
            return Ok(None);
        }
        Ok(Some(Finding {
            rule: "credential-stuffing",
            severity: Severity::High,
            title: format!(
                "Failed sign-ins on {} from {sources} networks in 15 minutes",
                shown(actor, SHOWN)
            ),
            dedup_key: actor.clone(),
            details: json!({"actor": actor, "sources": sources, "threshold": threshold}),
        }))
    }
}

/// The signer found an audit chain rewritten: always critical, never switched off (the
/// tenant's own log is what lets it see every other rule's evidence).
fn audit_chain_refused(r: &AuditRecord) -> Finding {
    let problem = r
        .details
        .get("problem")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    let chain = r
        .details
        .get("chain")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    Finding {
        rule: "audit-chain-tampered",
        severity: Severity::Critical,
        title: format!("The audit log was rewritten in the database: {problem}"),
        dedup_key: format!("{chain}:{problem}"),
        details: json!({"chain": chain, "problem": problem,
            "detail": r.details.get("detail")}),
    }
}

#[cfg(test)]
mod tests {
    use super::network_of;

    #[test]
    fn networks() {
        assert_eq!(network_of("192.0.2.77"), "192.0.2.");
        assert_eq!(network_of("2001:db8:1:2::5"), "2001:db8:1:");
        assert_eq!(network_of("not an address"), "not an address");
    }
}
