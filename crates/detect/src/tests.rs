#![allow(clippy::unwrap_used)]

use super::*;
use store::{AccountId, EmailQuery, FsBlobStore, QueryPage, Realm, RealmKind, SqliteStore};

/// A detector over an in-memory store, its audit log, and the blob directory (`tag` names
/// it; the caller removes it).
fn bed(tag: &str) -> (std::path::PathBuf, Arc<dyn Store>, Detector, AuditLog) {
    let (dir, store, mail) = parts(tag);
    let detector = Detector::new(store.clone(), mail, "k.test");
    let log = AuditLog::new(store.clone());
    (dir, store, detector, log)
}

fn parts(tag: &str) -> (std::path::PathBuf, Arc<dyn Store>, Mail) {
    let dir = std::env::temp_dir().join(format!("keypost-detect-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let blobs = Arc::new(FsBlobStore::open(&dir).unwrap());
    let mail = Mail::new(store.clone(), blobs);
    (dir, store, mail)
}

fn rid(id: &str) -> RealmId {
    RealmId::new(id).unwrap()
}

/// The consumer realm, tenants `contoso` and `fabrikam`, an admin for each tenant
/// (`admin@{tenant}.test`) and a provider admin (`boss@keypost.test`).
fn world(store: &dyn Store) {
    for (id, kind) in [
        ("consumers", RealmKind::Consumer),
        ("contoso", RealmKind::Tenant),
        ("fabrikam", RealmKind::Tenant),
    ] {
        store
            .create_realm(&Realm {
                id: rid(id),
                kind,
                display_name: id.into(),
                domains: vec![format!("{id}.test")],
                access_token_alg: "EdDSA".into(),
                created_at: 1,
            })
            .unwrap();
    }
    account(store, "contoso", "admin@contoso.test", Role::TenantAdmin);
    account(store, "fabrikam", "admin@fabrikam.test", Role::TenantAdmin);
    account(store, "consumers", "boss@keypost.test", Role::ProviderAdmin);
}

fn account(store: &dyn Store, realm: &str, email: &str, role: Role) -> AccountId {
    let id = AccountId::new(email.replace(['@', '.'], "-")).unwrap();
    store
        .create_account(&Account {
            id: id.clone(),
            realm: rid(realm),
            email: email.into(),
            display_name: email.into(),
            password_hash: "x".into(),
            disabled: false,
            role,
            created_at: 1,
            must_change_password: false,
            credential_epoch: 0,
        })
        .unwrap();
    id
}

fn account_of(store: &dyn Store, email: &str) -> Account {
    store.find_account_by_email(email).unwrap().unwrap()
}

/// A message as delivered: raw, and its subject and text as a mail client shows them.
#[derive(Debug)]
struct Received {
    raw: String,
    subject: String,
    text: String,
}

/// The messages in an account's mailboxes, oldest first.
fn inbox(store: &dyn Store, mail: &Mail, email: &str) -> Vec<Received> {
    let account = account_of(store, email);
    let (ids, _) = mail
        .query(&account.id, &EmailQuery::default(), QueryPage::ALL)
        .unwrap();
    let mut out: Vec<Received> = ids
        .iter()
        .map(|id| {
            let e = mail.email(id).unwrap().unwrap();
            let (_, raw) = mail.blob(&account.id, &e.blob_id).unwrap().unwrap();
            let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
            Received {
                subject: parsed.subject().unwrap_or_default().to_owned(),
                text: parsed
                    .body_text(0)
                    .unwrap_or_default()
                    .replace("\r\n", "\n"),
                raw: String::from_utf8(raw).unwrap(),
            }
        })
        .collect();
    out.reverse();
    out
}

/// A refused access token, as the gate records it.
fn refused(realm: Option<&str>, reason: &str, kid: Option<&str>, source: Option<&str>) -> Event {
    let mut ev = Event::failure(Operation::TokenRejected)
        .detail("token_type", "access_token")
        .detail("reason", reason);
    if let Some(r) = realm {
        ev = ev.realm(&rid(r));
    }
    if let Some(k) = kid {
        ev = ev.kid(k);
    }
    if let Some(ip) = source {
        ev = ev.source(&audit::Source {
            ip: Some(ip.to_owned()),
            user_agent: None,
        });
    }
    ev
}

fn alerts_of(store: &dyn Store, rule: &str) -> Vec<Alert> {
    let mut a: Vec<Alert> = store
        .list_alerts(None, None, 10_000)
        .unwrap()
        .into_iter()
        .filter(|a| a.rule == rule)
        .collect();
    a.sort_by_key(|a| a.id);
    a
}

/// A backlog far larger than one batch (a busy server between two ticks) is all evaluated
/// in one call: the forged token at its end raises its alert now, not after many ticks.
#[test]
fn one_pass_drains_a_backlog_of_many_batches() {
    let (dir, store, detector, log) = bed("backlog");
    let realm = rid("contoso");
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
    let realm = rid("contoso");
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
    assert_eq!(
        raised.len(),
        1,
        "both from the same (no) source: {raised:?}"
    );
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
    let realm = rid("contoso");
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

/// Finding 6: tokens with made-up kids from one source, over several passes, are one
/// alert that counts them and lists the first kids, and one mail; another source is
/// another alert. After a quiet day the same source is news again.
#[test]
fn random_kids_from_one_source_are_one_alert_that_counts_them() {
    let (dir, store, mail) = parts("flood");
    world(&*store);
    let detector = Detector::new(store.clone(), mail.clone(), "k.test");
    let log = AuditLog::new(store.clone());
    let attacker = "198.51.100.7";
    for pass in 0..3 {
        for n in 0..10 {
            let kid = format!("made-up-{pass}-{n}");
            let reason = if n % 2 == 0 {
                "UnknownKid"
            } else {
                "KeyNotInRealm"
            };
            log.record(
                refused(Some("contoso"), reason, Some(&kid), Some(attacker)),
                1_000 + pass,
            )
            .unwrap();
        }
        detector.run_once(1_000 + pass).unwrap();
    }
    let forged = alerts_of(&*store, "forged-token");
    assert_eq!(forged.len(), 1, "{forged:#?}");
    let a = &forged[0];
    assert_eq!((a.count, a.dedup_key.as_str()), (30, attacker));
    assert_eq!((a.first_seen, a.last_seen), (1_000, 1_002));
    let kids = a.details["kids"].as_array().unwrap();
    assert_eq!(kids.len(), store::ALERT_DETAIL_VALUES, "bounded");
    assert_eq!(kids[0], "made-up-0-0");
    assert_eq!(
        a.details["reasons"],
        serde_json::json!(["UnknownKid", "KeyNotInRealm"])
    );
    assert_eq!(inbox(&*store, &mail, "admin@contoso.test").len(), 1);

    log.record(
        refused(
            Some("contoso"),
            "UnknownKid",
            Some("another"),
            Some("203.0.113.9"),
        ),
        1_010,
    )
    .unwrap();
    detector.run_once(1_010).unwrap();
    let forged = alerts_of(&*store, "forged-token");
    assert_eq!(forged.len(), 2);
    assert_eq!(
        (forged[1].dedup_key.as_str(), forged[1].count),
        ("203.0.113.9", 1)
    );
    assert_eq!(inbox(&*store, &mail, "admin@contoso.test").len(), 2);

    let later = 1_002 + DEDUP_WINDOW + 1;
    log.record(
        refused(Some("contoso"), "UnknownKid", Some("again"), Some(attacker)),
        later,
    )
    .unwrap();
    detector.run_once(later).unwrap();
    assert_eq!(
        alerts_of(&*store, "forged-token").len(),
        3,
        "news after a quiet day"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 6: at most the cap of alert mails per tenant and clock hour; the rest are held
/// and named in one summary mail once the hour is over (nothing dropped), sent once.
/// Another tenant's alerts are not held by this one's cap.
#[test]
fn alert_mail_is_capped_per_tenant_and_hour_with_one_summary() {
    let (dir, store, mail) = parts("cap");
    world(&*store);
    let detector = Detector::new(store.clone(), mail.clone(), "k.test").with_mail_cap(3);
    let log = AuditLog::new(store.clone());
    let hour = 100 * HOUR;
    for n in 0..10 {
        let source = format!("192.0.2.{n}");
        log.record(
            refused(Some("contoso"), "KeyNotInRealm", Some("k"), Some(&source)),
            hour + 10,
        )
        .unwrap();
    }
    log.record(
        refused(
            Some("fabrikam"),
            "KeyNotInRealm",
            Some("k"),
            Some("192.0.2.1"),
        ),
        hour + 10,
    )
    .unwrap();
    let raised = detector.run_once(hour + 20).unwrap();
    assert_eq!(raised.iter().filter(|r| r.new).count(), 11);
    assert_eq!(inbox(&*store, &mail, "admin@contoso.test").len(), 3);
    assert_eq!(inbox(&*store, &mail, "admin@fabrikam.test").len(), 1);
    // Within the hour, still held.
    detector.run_once(hour + HOUR - 1).unwrap();
    assert_eq!(inbox(&*store, &mail, "admin@contoso.test").len(), 3);

    detector.run_once(hour + HOUR + 5).unwrap();
    let mails = inbox(&*store, &mail, "admin@contoso.test");
    assert_eq!(mails.len(), 4, "one summary");
    let summary = &mails[3];
    assert_eq!(
        summary.subject,
        "[Keypost] 7 more CRITICAL alerts for contoso (mail capped at 3 an hour)"
    );
    let summary = &summary.text;
    let held: Vec<i64> = alerts_of(&*store, "forged-token")
        .iter()
        .filter(|a| a.realm == Some(rid("contoso")))
        .skip(3)
        .map(|a| a.id)
        .collect();
    assert_eq!(held.len(), 7);
    for id in &held {
        assert!(
            summary.contains(&format!("#{id} critical forged-token")),
            "{summary}"
        );
    }
    // The provider admin hears of critical alerts: of each tenant, under each tenant's cap.
    assert_eq!(inbox(&*store, &mail, "boss@keypost.test").len(), 3 + 1 + 1);
    let audited = store
        .search_audit(&AuditQuery {
            operation: Some("MailDelivered".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        audited.iter().any(|r| r.details["via"] == "AlertSummary"
            && r.details["alerts"] == serde_json::json!(held))
    );

    detector.run_once(hour + 2 * HOUR + 5).unwrap();
    assert_eq!(
        inbox(&*store, &mail, "admin@contoso.test").len(),
        4,
        "summarized once"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 12: a kid with newlines, a fake header and shell metacharacters stays one escaped
/// value in the mail (no header, no line of its own), and is offered as a command only where
/// it can be shell-quoted as it is.
#[test]
fn a_presented_kid_cannot_add_headers_lines_or_commands_to_the_mail() {
    let (dir, store, mail) = parts("escape");
    world(&*store);
    let detector = Detector::new(store.clone(), mail.clone(), "k.test");
    let log = AuditLog::new(store.clone());
    let evil = "x\n\nSubject: y'; rm -rf / #\r\nBcc: all@contoso.test\u{202e}";
    log.record(
        refused(
            Some("contoso"),
            "UnknownKid",
            Some(evil),
            Some("192.0.2.50"),
        ),
        1_000,
    )
    .unwrap();
    let quoted = "it's $(id) `id` !! k";
    log.record(
        refused(
            Some("fabrikam"),
            "UnknownKid",
            Some(quoted),
            Some("192.0.2.51"),
        ),
        1_000,
    )
    .unwrap();
    detector.run_once(1_001).unwrap();

    let [m] = <[Received; 1]>::try_from(inbox(&*store, &mail, "admin@contoso.test")).unwrap();
    let head = m.raw.split_once("\r\n\r\n").unwrap().0;
    let header_names: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n))
        .collect();
    assert_eq!(
        header_names
            .iter()
            .filter(|n| n.eq_ignore_ascii_case("subject"))
            .count(),
        1,
        "{head}"
    );
    assert!(
        !header_names.iter().any(|n| n.eq_ignore_ascii_case("bcc")),
        "{head}"
    );
    let escaped = r"x\n\nSubject: y'; rm -rf / #\r\nBcc: all@contoso.test\u{202e}";
    assert!(m.subject.contains(escaped), "one line: {}", m.subject);
    for shown in [&m.subject, &m.text] {
        assert!(
            !shown.contains("\nSubject: y") && !shown.contains("\nBcc:"),
            "{shown}"
        );
        assert!(
            !shown.contains('\u{202e}') && !shown.contains('\r'),
            "{shown}"
        );
    }
    assert!(
        m.text.contains(&format!("  kids: {escaped}\n")),
        "{}",
        m.text
    );
    assert!(
        !m.text.contains("--kid="),
        "no command for a value shown escaped: {}",
        m.text
    );
    assert!(
        m.text.contains("  keypost investigate --ip='192.0.2.50'\n"),
        "{}",
        m.text
    );

    let [m] = <[Received; 1]>::try_from(inbox(&*store, &mail, "admin@fabrikam.test")).unwrap();
    let command = r#"keypost investigate --kid='it'\''s $(id) `id` !! k'"#;
    assert!(m.text.contains(&format!("  {command}\n")), "{}", m.text);
    // What a shell makes of the suggested argument is the kid, and nothing runs.
    let arg = command.trim_start_matches("keypost investigate ");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s {arg}"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("--kid={quoted}")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 14: a token refused after its signature verified with one of the realm's keys
/// (another tenant, issuer, audience, or a key of another purpose) raises a high
/// `misdirected-token` alert; one naming an issuer Keypost does not have (recorded without
/// a realm) a medium `unknown-issuer` alert, the provider's.
#[test]
fn refusals_after_a_valid_signature_and_unknown_issuers_alert() {
    let (dir, store, mail) = parts("misdirected");
    world(&*store);
    let detector = Detector::new(store.clone(), mail.clone(), "k.test");
    let log = AuditLog::new(store.clone());
    let reasons = [
        "TenantMismatch",
        "IssuerMismatch",
        "AudienceMismatch",
        "WrongKeyPurpose",
    ];
    for (n, reason) in reasons.iter().enumerate() {
        let source = format!("192.0.2.{}", 60 + n);
        log.record(
            refused(Some("contoso"), reason, Some("contoso-key"), Some(&source)),
            1_000,
        )
        .unwrap();
    }
    // As JMAP records a token whose `iss` names none of Keypost's issuers.
    log.record(
        refused(None, "IssuerMismatch", None, Some("192.0.2.70")).detail("audience", "mail"),
        1_000,
    )
    .unwrap();
    detector.run_once(1_001).unwrap();

    let misdirected = alerts_of(&*store, "misdirected-token");
    let got: Vec<&str> = misdirected
        .iter()
        .map(|a| a.details["reasons"][0].as_str().unwrap())
        .collect();
    assert_eq!(got, reasons);
    assert!(
        misdirected
            .iter()
            .all(|a| a.severity == Severity::High && a.realm == Some(rid("contoso")))
    );
    let (unknown,) = <[Alert; 1]>::try_from(alerts_of(&*store, "unknown-issuer"))
        .map(|[a]| (a,))
        .unwrap();
    assert_eq!(
        (unknown.realm, unknown.severity, unknown.dedup_key.as_str()),
        (None, Severity::Medium, "192.0.2.70")
    );
    // High: the tenant's admin and the provider's; the unknown issuer: the provider's only.
    assert_eq!(inbox(&*store, &mail, "admin@contoso.test").len(), 4);
    assert_eq!(inbox(&*store, &mail, "boss@keypost.test").len(), 5);
    assert!(inbox(&*store, &mail, "admin@fabrikam.test").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token whose `iss` names a realm that does not exist is recorded under that name: its
/// alert is the provider's (made-up realm names are not tenants, each with its own alerts
/// and mail cap), with the name it claimed.
#[test]
fn a_refusal_naming_no_existing_realm_is_the_providers() {
    let (dir, store, mail) = parts("ghost");
    world(&*store);
    let detector = Detector::new(store.clone(), mail.clone(), "k.test");
    let log = AuditLog::new(store.clone());
    for n in 0..5 {
        let realm = format!("ghost{n}");
        log.record(
            refused(Some(&realm), "UnknownKid", Some("k"), Some("192.0.2.80")),
            1_000,
        )
        .unwrap();
    }
    detector.run_once(1_001).unwrap();
    let (a,) = <[Alert; 1]>::try_from(alerts_of(&*store, "forged-token"))
        .map(|[a]| (a,))
        .unwrap();
    assert_eq!((a.realm, a.count), (None, 5));
    assert_eq!(a.details["realm_claimed"], "ghost0");
    assert_eq!(inbox(&*store, &mail, "boss@keypost.test").len(), 1);
    let raised = store
        .search_audit(&AuditQuery {
            operation: Some("AlertRaised".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].realm, None, "in the provider's chain");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Alerts reach the enabled admins of their tenant, and the provider admins for high and
/// critical ones or when the tenant has no admin; never another tenant's admins.
#[test]
fn recipients_are_the_tenants_enabled_admins_and_the_providers_for_high() {
    let (dir, store, mail) = parts("recipients");
    world(&*store);
    let gone = account(&*store, "contoso", "gone@contoso.test", Role::TenantAdmin);
    store.set_account_disabled(&gone, true).unwrap();
    account(&*store, "contoso", "user@contoso.test", Role::User);
    let detector = Detector::new(store.clone(), mail, "k.test");
    let names = |realm: Option<&str>, severity| -> Vec<String> {
        let realm = realm.map(rid);
        detector
            .recipients(realm.as_ref(), severity)
            .unwrap()
            .into_iter()
            .map(|a| a.email)
            .collect()
    };
    assert_eq!(
        names(Some("contoso"), Severity::Medium),
        ["admin@contoso.test"]
    );
    assert_eq!(
        names(Some("contoso"), Severity::High),
        ["admin@contoso.test", "boss@keypost.test"]
    );
    assert_eq!(
        names(Some("consumers"), Severity::Low),
        ["boss@keypost.test"]
    );
    assert_eq!(names(None, Severity::Medium), ["boss@keypost.test"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Addresses of one IPv6 /64 are one source to the alerts too: rotating through them opens no
/// new alert.
#[test]
fn one_ipv6_64_is_one_source_of_alerts() {
    let (dir, store, mail) = parts("v6flood");
    world(&*store);
    let detector = Detector::new(store.clone(), mail.clone(), "k.test");
    let log = AuditLog::new(store.clone());
    for n in 0..5 {
        let ip = format!("2001:db8:5:6::{n:x}");
        log.record(
            refused(Some("contoso"), "UnknownKid", Some("k"), Some(&ip)),
            1_000,
        )
        .unwrap();
    }
    detector.run_once(1_001).unwrap();
    let forged = alerts_of(&*store, "forged-token");
    assert_eq!(forged.len(), 1, "{forged:#?}");
    assert_eq!(
        (forged[0].dedup_key.as_str(), forged[0].count),
        ("2001:db8:5:6::/64", 5)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
