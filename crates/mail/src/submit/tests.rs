use std::sync::{Arc, Mutex};

use audit::{AuditLog, Event};
use store::{
    Account, AccountId, AuditRecord, EmailQuery, FsBlobStore, QueryPage, Realm, RealmId, RealmKind,
    Role, SqliteStore, Store,
};

use super::*;

struct Fx {
    mail: Mail,
    store: Arc<dyn Store>,
    alice: Account,
    dir: std::path::PathBuf,
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn account(store: &dyn Store, id: &str, realm: &str, email: &str, disabled: bool) -> Account {
    let a = Account {
        id: AccountId::new(id).unwrap(),
        realm: RealmId::new(realm).unwrap(),
        email: email.into(),
        display_name: id.into(),
        password_hash: "x".into(),
        disabled,
        role: Role::User,
        created_at: 1,
        must_change_password: false,
        credential_epoch: 0,
    };
    store.create_account(&a).unwrap();
    a
}

/// alice and the disabled dora in contoso, bob and carol in fabrikam.
fn fx(name: &str) -> Fx {
    let dir = std::env::temp_dir().join(format!("keypost-submit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    for (realm, domain) in [("contoso", "contoso.test"), ("fabrikam", "fabrikam.test")] {
        store
            .create_realm(&Realm {
                id: RealmId::new(realm).unwrap(),
                kind: RealmKind::Tenant,
                display_name: realm.into(),
                domains: vec![domain.into()],
                access_token_alg: "EdDSA".into(),
                created_at: 1,
            })
            .unwrap();
    }
    let alice = account(&*store, "alice", "contoso", "alice@contoso.test", false);
    account(&*store, "dora", "contoso", "dora@contoso.test", true);
    account(&*store, "bob", "fabrikam", "bob@fabrikam.test", false);
    account(&*store, "carol", "fabrikam", "carol@fabrikam.test", false);
    let blobs = Arc::new(FsBlobStore::open(&dir.join("blobs")).unwrap());
    Fx {
        mail: Mail::new(store.clone(), blobs),
        store,
        alice,
        dir,
    }
}

/// The records a submission leaves, as the audit log would store them.
#[derive(Default)]
struct Log(Mutex<Vec<AuditRecord>>);

impl Recorder for Log {
    fn attribute(&self, event: Event) -> Event {
        event
            .realm(&RealmId::new("contoso").unwrap())
            .actor("alice@contoso.test")
            .jti("token-1")
    }
    fn record(&self, event: Event) {
        self.0.lock().unwrap().push(AuditLog::prepare(event, 7));
    }
}

impl Log {
    fn ops(&self) -> Vec<(String, String)> {
        let all = self.0.lock().unwrap();
        all.iter()
            .map(|r| (r.operation.clone(), r.result.clone()))
            .collect()
    }
    fn only(&self, op: &str) -> AuditRecord {
        let all = self.0.lock().unwrap();
        let mut it = all.iter().filter(|r| r.operation == op);
        let r = it.next().unwrap_or_else(|| panic!("no {op} in {all:?}"));
        assert!(it.next().is_none(), "one {op}");
        r.clone()
    }
}

impl Fx {
    /// Stores `raw` as one of alice's drafts.
    fn draft(&self, raw: &[u8]) -> EmailId {
        let drafts = self.mail.mailbox_by_role(&self.alice.id, "drafts").unwrap();
        self.mail
            .deliver(&self.alice.id, raw, &drafts.id, vec!["$draft".into()], 1)
            .unwrap()
            .id
    }

    fn send(
        &self,
        raw: &[u8],
        envelope: Option<Envelope>,
        log: &Log,
    ) -> Result<store::Submission, SubmitError> {
        let email = self.draft(raw);
        self.mail.submit(
            &Submission {
                account: &self.alice,
                identity: None,
                email,
                envelope,
                at: 100,
                via: "test",
            },
            log,
        )
    }

    /// The raw messages in an account's inbox.
    fn inbox(&self, id: &str) -> Vec<Vec<u8>> {
        let account = AccountId::new(id).unwrap();
        let (ids, _) = self
            .mail
            .query(&account, &EmailQuery::default(), QueryPage::ALL)
            .unwrap();
        let inbox = self.mail.mailbox_by_role(&account, "inbox").unwrap().id;
        self.mail
            .emails(&account, &ids)
            .unwrap()
            .into_iter()
            .filter(|(_, boxes)| boxes.contains(&inbox))
            .map(|(e, _)| self.mail.blob(&account, &e.blob_id).unwrap().unwrap().1)
            .collect()
    }
}

fn refusal(r: Result<store::Submission, SubmitError>) -> Refusal {
    match r {
        Err(SubmitError::Refused(r)) => r,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn bcc_reaches_its_recipients_but_no_recipient_sees_it() {
    let f = fx("bcc");
    let raw: &[u8] = b"From: Alice <alice@contoso.test>\r\nTo: bob@fabrikam.test\r\nBcc: Carol <carol@fabrikam.test>,\r\n\tsecret@example.org\r\nSubject: Plans\r\nbcC :also-secret@example.org\r\nX-Keep: bcc: stays\r\n\r\nBcc: this line is body text\r\n";
    let expected: &[u8] = b"From: Alice <alice@contoso.test>\r\nTo: bob@fabrikam.test\r\nSubject: Plans\r\nX-Keep: bcc: stays\r\n\r\nBcc: this line is body text\r\n";
    let log = Log::default();
    let sent = f.send(raw, None, &log).unwrap();
    assert_eq!(
        sent.rcpt_to,
        [
            "also-secret@example.org",
            "bob@fabrikam.test",
            "carol@fabrikam.test",
            "secret@example.org"
        ]
    );
    for who in ["bob", "carol"] {
        assert_eq!(
            f.inbox(who),
            [expected.to_vec()],
            "{who} gets the message, byte for byte, without its Bcc"
        );
    }
    // The sender's copy keeps its Bcc.
    let (mine, _) = f
        .mail
        .emails(&f.alice.id, std::slice::from_ref(&sent.email))
        .unwrap()
        .remove(0);
    assert_eq!(
        f.mail.blob(&f.alice.id, &mine.blob_id).unwrap().unwrap().1,
        raw
    );
    let yes: Vec<&str> = sent
        .delivery
        .iter()
        .filter(|d| d.delivered == "yes")
        .map(|d| d.rcpt.as_str())
        .collect();
    assert_eq!(yes, ["bob@fabrikam.test", "carol@fabrikam.test"]);
}

#[test]
fn every_from_and_sender_address_must_be_the_senders() {
    let f = fx("from");
    let body = "To: bob@fabrikam.test\r\nSubject: Wire the money\r\n\r\nNow.\r\n";
    let cases = [
        (
            "From: \"Contoso CEO\" <ceo@contoso.example>, <alice@contoso.test>\r\n",
            "ceo@contoso.example",
        ),
        (
            "From: <alice@contoso.test>,\r\n \"Contoso CEO\" <ceo@contoso.example>\r\n",
            "ceo@contoso.example",
        ),
        (
            "From: alice@contoso.test\r\nSender: ceo@contoso.example\r\n",
            "ceo@contoso.example",
        ),
        (
            "From: alice@contoso.test\r\nfrom: ceo@contoso.example\r\n",
            "ceo@contoso.example",
        ),
        (
            "FROM: ceo@contoso.example\r\nFrom: alice@contoso.test\r\n",
            "ceo@contoso.example",
        ),
        (
            "From: Board: ceo@contoso.example, alice@contoso.test;\r\n",
            "ceo@contoso.example",
        ),
        (
            "From: alice@contoso.test\r\nFr om: ceo@contoso.example\r\n",
            "ceo@contoso.example",
        ),
        ("From: alice@contoso.test, Contoso CEO\r\n", ""),
    ];
    for (from, foreign) in cases {
        let log = Log::default();
        let r = refusal(f.send(format!("{from}{body}").as_bytes(), None, &log));
        match &r {
            Refusal::ForbiddenFrom { addresses } => {
                assert_eq!(addresses, &[foreign.to_owned()], "{from:?}")
            }
            other => panic!("{from:?}: {other:?}"),
        }
    }
    let log = Log::default();
    let twice = "From: alice@contoso.test\r\nFrom: Alice <alice@contoso.test>\r\n";
    let r = refusal(f.send(format!("{twice}{body}").as_bytes(), None, &log));
    assert!(
        matches!(
            r,
            Refusal::InvalidEmail {
                property: "from",
                ..
            }
        ),
        "{r:?}"
    );
    let r = refusal(f.send(format!("Subject: no From\r\n{body}").as_bytes(), None, &log));
    assert!(
        matches!(
            r,
            Refusal::InvalidEmail {
                property: "from",
                ..
            }
        ),
        "{r:?}"
    );
    let r = refusal(f.send(
        format!("From: alice@contoso.test\r\n{body}").as_bytes(),
        Some(Envelope {
            mail_from: "ceo@contoso.example".into(),
            rcpt_to: vec!["bob@fabrikam.test".into()],
        }),
        &log,
    ));
    assert_eq!(r, Refusal::ForbiddenMailFrom);
    assert!(f.inbox("bob").is_empty(), "nothing refused was delivered");

    // Every address the sender's own, in any case, with a Sender: sent.
    let own = "From: Alice <ALICE@contoso.test>, Team: alice@contoso.test;\r\nSender: alice@contoso.test\r\n";
    f.send(format!("{own}{body}").as_bytes(), None, &log)
        .unwrap();
    assert_eq!(f.inbox("bob").len(), 1);
}

#[test]
fn a_refused_submission_is_audited_and_sends_nothing() {
    let f = fx("audit");
    let log = Log::default();
    let raw = b"From: \"Contoso CEO\" <ceo@contoso.example>, <alice@contoso.test>\r\nTo: bob@fabrikam.test\r\n\r\nx\r\n";
    refusal(f.send(raw, None, &log));
    assert_eq!(
        log.ops(),
        [("MailSubmissionRefused".to_owned(), "failure".to_owned())]
    );
    let r = log.only("MailSubmissionRefused");
    assert_eq!(r.details["reason"], "ForbiddenFrom");
    assert_eq!(
        r.details["addresses"],
        serde_json::json!(["ceo@contoso.example"])
    );
    assert_eq!(r.details["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        r.actor.as_deref(),
        Some("alice@contoso.test"),
        "attributed by the recorder"
    );
    assert_eq!(r.jti.as_deref(), Some("token-1"));

    // So is every other kind of refusal.
    let log = Log::default();
    let too_many: Vec<String> = (0..=MAX_RECIPIENTS)
        .map(|i| format!("r{i}@example.org"))
        .collect();
    let r = refusal(f.send(
        b"From: alice@contoso.test\r\n\r\nx\r\n",
        Some(Envelope {
            mail_from: "alice@contoso.test".into(),
            rcpt_to: too_many,
        }),
        &log,
    ));
    assert_eq!(
        r,
        Refusal::TooManyRecipients {
            max: MAX_RECIPIENTS
        }
    );
    assert_eq!(
        log.only("MailSubmissionRefused").details["reason"],
        "TooManyRecipients"
    );
    let log = Log::default();
    record_refusal(&log, &Refusal::UnknownIdentity, None);
    assert_eq!(
        log.only("MailSubmissionRefused").details["reason"],
        "UnknownIdentity"
    );
}

#[test]
fn whoever_has_no_account_gets_the_same_answer() {
    let f = fx("unknown");
    let log = Log::default();
    // nobody@ is in a Keypost domain, dora@ is disabled, someone@ is elsewhere.
    let raw = b"From: alice@contoso.test\r\nTo: bob@fabrikam.test, nobody@fabrikam.test, dora@contoso.test\r\nCc: someone@example.org\r\n\r\nx\r\n";
    let sent = f.send(raw, None, &log).unwrap();
    let status = |rcpt: &str| {
        let d = sent.delivery.iter().find(|d| d.rcpt == rcpt).unwrap();
        (d.smtp_reply.clone(), d.delivered.clone())
    };
    assert_eq!(status("bob@fabrikam.test").1, "yes");
    let remote = status("someone@example.org");
    assert_eq!(remote, (NOT_DELIVERED.to_owned(), "no".to_owned()));
    assert_eq!(status("nobody@fabrikam.test"), remote);
    assert_eq!(status("dora@contoso.test"), remote);
    let rec = f.store.list_submissions(&f.alice.id).unwrap();
    assert_eq!(rec.len(), 1, "recorded like any other submission");
    let sent_audit = log.only("MailSent");
    assert_eq!(
        sent_audit.details["undelivered"],
        serde_json::json!([
            "dora@contoso.test",
            "nobody@fabrikam.test",
            "someone@example.org"
        ])
    );
    assert!(f.inbox("dora").is_empty());

    // Recipients that are not addresses are refused for what they are, not for who they are.
    let log = Log::default();
    let r = refusal(f.send(
        b"From: alice@contoso.test\r\n\r\nx\r\n",
        Some(Envelope {
            mail_from: "alice@contoso.test".into(),
            rcpt_to: vec!["bob@fabrikam.test".into(), "not an address".into()],
        }),
        &log,
    ));
    assert_eq!(
        r,
        Refusal::InvalidRecipients {
            addresses: vec!["not an address".into()]
        }
    );
}

#[test]
fn a_header_section_readers_would_split_differently_is_refused() {
    let f = fx("barecr");
    let log = Log::default();
    let r = refusal(f.send(
        b"From: alice@contoso.test\r\nTo: bob@fabrikam.test\rBcc: carol@fabrikam.test\r\n\r\nx\r\n",
        None,
        &log,
    ));
    assert!(
        matches!(
            r,
            Refusal::InvalidEmail {
                property: "headers",
                ..
            }
        ),
        "{r:?}"
    );
    assert!(f.inbox("bob").is_empty() && f.inbox("carol").is_empty());
}
