use std::sync::Arc;

use store::{Account, AccountId, FsBlobStore, Realm, RealmId, RealmKind, Role, SqliteStore, Store};

use super::*;

struct Fx {
    mail: Mail,
    account: AccountId,
    dir: std::path::PathBuf,
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fx(name: &str) -> Fx {
    let dir = std::env::temp_dir().join(format!("keypost-mail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let realm = RealmId::new("contoso").unwrap();
    store
        .create_realm(&Realm {
            id: realm.clone(),
            kind: RealmKind::Tenant,
            display_name: "c".into(),
            domains: vec![],
            access_token_alg: "EdDSA".into(),
            created_at: 1,
        })
        .unwrap();
    let account = AccountId::new("alice").unwrap();
    store
        .create_account(&Account {
            id: account.clone(),
            realm,
            email: "alice@contoso.test".into(),
            display_name: "Alice".into(),
            password_hash: "x".into(),
            disabled: false,
            role: Role::User,
            created_at: 1,
            must_change_password: false,
            credential_epoch: 0,
        })
        .unwrap();
    let blobs = Arc::new(FsBlobStore::open(&dir.join("blobs")).unwrap());
    Fx {
        mail: Mail::new(store, blobs),
        account,
        dir,
    }
}

const FIRST: &[u8] = b"From: Bob <bob@fabrikam.test>\r\nTo: alice@contoso.test\r\nSubject: Lunch?\r\nMessage-ID: <1@fabrikam.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nShall we   meet at noon?\r\n";
const REPLY: &[u8] = b"From: alice@contoso.test\r\nTo: Bob <bob@fabrikam.test>\r\nSubject: Re: Lunch?\r\nMessage-ID: <2@contoso.test>\r\nIn-Reply-To: <1@fabrikam.test>\r\nReferences: <1@fabrikam.test>\r\n\r\nYes.\r\n";
const OTHER: &[u8] = b"From: carol@keypost.test\r\nSubject: Unrelated\r\nMessage-ID: <3@keypost.test>\r\n\r\nHello\r\n";

#[test]
fn default_mailboxes_have_their_roles_once() {
    let f = fx("roles");
    let first = f.mail.mailboxes(&f.account).unwrap();
    let roles: Vec<_> = first.iter().filter_map(|m| m.role.clone()).collect();
    assert_eq!(
        roles,
        ["inbox", "drafts", "sent", "archive", "junk", "trash"]
    );
    assert_eq!(f.mail.mailboxes(&f.account).unwrap(), first, "idempotent");
}

#[test]
fn delivery_parses_threads_and_deduplicates() {
    let f = fx("deliver");
    let inbox = f.mail.mailbox_by_role(&f.account, "inbox").unwrap();
    let a = f
        .mail
        .deliver(&f.account, FIRST, &inbox.id, vec![], 100)
        .unwrap();
    let b = f
        .mail
        .deliver(&f.account, REPLY, &inbox.id, vec!["$seen".into()], 101)
        .unwrap();
    let c = f
        .mail
        .deliver(&f.account, OTHER, &inbox.id, vec![], 102)
        .unwrap();
    assert_eq!(
        a.thread_id, b.thread_id,
        "a reply joins its parent's thread"
    );
    assert_ne!(a.thread_id, c.thread_id);
    let again = f
        .mail
        .deliver(&f.account, FIRST, &inbox.id, vec![], 103)
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.id, a.id);
    assert_eq!(f.mail.count(&f.account, Some(&inbox.id)).unwrap(), 3);

    let e = f.mail.email(&a.id).unwrap().unwrap();
    assert_eq!(e.subject, "Lunch?");
    assert_eq!(e.from[0].email, "bob@fabrikam.test");
    assert_eq!(e.from[0].name.as_deref(), Some("Bob"));
    assert_eq!(e.message_id.as_deref(), Some("1@fabrikam.test"));
    assert_eq!(e.preview, "Shall we meet at noon?");
    assert_eq!(e.sent_at, Some(1_795_428_000));
    assert_eq!(f.mail.email(&b.id).unwrap().unwrap().keywords, ["$seen"]);
}

#[test]
fn a_reply_arriving_first_is_threaded_with_its_parent() {
    let f = fx("order");
    let inbox = f.mail.mailbox_by_role(&f.account, "inbox").unwrap();
    let reply = f
        .mail
        .deliver(&f.account, REPLY, &inbox.id, vec![], 1)
        .unwrap();
    let parent = f
        .mail
        .deliver(&f.account, FIRST, &inbox.id, vec![], 2)
        .unwrap();
    assert_eq!(reply.thread_id, parent.thread_id);
}

#[test]
fn garbage_is_refused_and_nothing_is_stored() {
    let f = fx("garbage");
    let inbox = f.mail.mailbox_by_role(&f.account, "inbox").unwrap();
    assert!(matches!(
        f.mail.deliver(&f.account, b"", &inbox.id, vec![], 1),
        Err(Error::NotAMessage(_))
    ));
    assert!(matches!(
        f.mail.deliver(
            &f.account,
            FIRST,
            &MailboxId::new("nope").unwrap(),
            vec![],
            1
        ),
        Err(Error::NoMailbox(_))
    ));
    assert_eq!(f.mail.count(&f.account, None).unwrap(), 0);
}

#[test]
fn mbox_splitting_unquotes_from_lines() {
    let mbox = b"From bob@x Mon Nov 23 10:00:00 2026\nSubject: a\n\nline\n>From the start\n>>From deeper\n\nFrom carol@x Mon Nov 23 11:00:00 2026\nSubject: b\n\nbody\n";
    let msgs = crate::import::split_mbox(mbox);
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        msgs[0],
        b"Subject: a\n\nline\nFrom the start\n>From deeper\n"
    );
    assert_eq!(msgs[1], b"Subject: b\n\nbody\n");
}

#[test]
fn imports_eml_maildir_and_mbox_idempotently() {
    let f = fx("import");
    let inbox = f.mail.mailbox_by_role(&f.account, "inbox").unwrap();
    let eml = f.dir.join("one.eml");
    std::fs::write(&eml, FIRST).unwrap();
    let r = f.mail.import(&f.account, &eml, &inbox.id, 5).unwrap();
    assert_eq!(
        (r.source, r.imported, r.duplicates),
        (Some(ImportSource::Eml), 1, 0)
    );

    let md = f.dir.join("Maildir");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(d)).unwrap();
    }
    std::fs::write(md.join("cur/1.host:2,FS"), REPLY).unwrap();
    std::fs::write(md.join("new/2.host"), OTHER).unwrap();
    std::fs::write(md.join("cur/3.host:2,S"), FIRST).unwrap(); // already imported above
    let r = f.mail.import(&f.account, &md, &inbox.id, 5).unwrap();
    assert_eq!(
        (r.source, r.imported, r.duplicates),
        (Some(ImportSource::Maildir), 2, 1)
    );

    let mbox = f.dir.join("archive.mbox");
    let mut data = b"From MAILER-DAEMON Mon Nov 23 10:00:00 2026\n".to_vec();
    data.extend_from_slice(b"Subject: from mbox\nMessage-ID: <9@x>\n\n>From here\n\n");
    data.extend_from_slice(b"From MAILER-DAEMON Mon Nov 23 10:00:00 2026\n\n");
    std::fs::write(&mbox, &data).unwrap();
    let r = f.mail.import(&f.account, &mbox, &inbox.id, 5).unwrap();
    assert_eq!((r.source, r.imported), (Some(ImportSource::Mbox), 1));
    assert_eq!(
        r.failed.len(),
        1,
        "the header-less second message is reported: {:?}",
        r.failed
    );
    let again = f.mail.import(&f.account, &mbox, &inbox.id, 5).unwrap();
    assert_eq!((again.imported, again.duplicates), (0, 1));
    assert_eq!(f.mail.count(&f.account, None).unwrap(), 4);
}

#[test]
fn vacation_replies_follow_rfc_3834() {
    let f = fx("vacation");
    let me = "alice@contoso.test";
    let v = store::Vacation {
        enabled: true,
        from_date: Some(100),
        to_date: Some(200),
        subject: None,
        text_body: Some("Away".into()),
        html_body: None,
    };
    f.mail.set_vacation(&f.account, &v).unwrap();
    let reply = |sender: &str, raw: &[u8], now: i64| {
        f.mail
            .vacation_reply(&f.account, me, "Alice", sender, raw, now)
            .unwrap()
    };
    assert!(
        reply("bob@fabrikam.test", FIRST, 50).is_none(),
        "before fromDate"
    );
    assert!(
        reply("bob@fabrikam.test", FIRST, 250).is_none(),
        "after toDate"
    );
    let bulk =
        b"From: news@list.test\r\nSubject: Weekly\r\nList-Id: <weekly.list.test>\r\n\r\nHi\r\n";
    assert!(
        reply("news@list.test", bulk, 150).is_none(),
        "mailing lists get no reply"
    );
    let auto = b"From: bot@x.test\r\nSubject: Re\r\nAuto-Submitted: auto-replied\r\n\r\nHi\r\n";
    assert!(
        reply("bot@x.test", auto, 150).is_none(),
        "never answer an automatic reply"
    );
    assert!(reply(me, FIRST, 150).is_none(), "never to ourselves");
    let first = reply("bob@fabrikam.test", FIRST, 150).expect("a reply is due");
    let text = String::from_utf8(first).unwrap();
    assert!(
        text.contains("Auto-Submitted: auto-replied")
            && text.contains("Subject: Auto: Lunch?")
            && text.contains("In-Reply-To: <1@fabrikam.test>")
    );
    assert!(
        reply("bob@fabrikam.test", FIRST, 160).is_none(),
        "once per sender per period"
    );
    assert!(
        reply("carol@keypost.test", FIRST, 160).is_some(),
        "other senders get theirs"
    );
}

/// A day after `T0`, uploads of the default policy have expired.
const T0: i64 = 1_000_000;
const DAY: i64 = 24 * 3600;

impl Fx {
    fn blob_file(&self, blob: &BlobId) -> std::path::PathBuf {
        let (dir, file) = blob.as_str().split_at(2);
        self.dir.join("blobs").join(dir).join(file)
    }

    fn second_account(&self) -> AccountId {
        let bob = AccountId::new("bob").unwrap();
        self.mail
            .store
            .create_account(&Account {
                id: bob.clone(),
                realm: RealmId::new("contoso").unwrap(),
                email: "bob@contoso.test".into(),
                display_name: "Bob".into(),
                password_hash: "x".into(),
                disabled: false,
                role: Role::User,
                created_at: 1,
                must_change_password: false,
                credential_epoch: 0,
            })
            .unwrap();
        bob
    }
}

#[test]
fn uploads_count_against_the_quota_and_the_oldest_make_room() {
    let f = fx("upload-quota");
    let a = &f.account;
    f.mail
        .set_quota(a, store::QuotaSetting::Limit(FIRST.len() as u64 + 1000))
        .unwrap();
    let inbox = f.mail.mailbox_by_role(a, "inbox").unwrap().id;
    f.mail.deliver(a, FIRST, &inbox, vec![], T0).unwrap();
    // 1000 bytes left: the uploads pending count against them.
    let first = f.mail.upload(a, &[b'1'; 600], "x/y", T0).unwrap();
    assert_eq!(f.mail.pending_upload_bytes(a).unwrap(), 600);
    let second = f.mail.upload(a, &[b'2'; 600], "x/y", T0 + 1).unwrap();
    assert!(
        f.mail.uploaded(a, &first).unwrap().is_none(),
        "the oldest upload made room (RFC 8620 §6.1)"
    );
    assert!(!f.blob_file(&first).exists(), "and its file went");
    assert_eq!(f.mail.uploaded(a, &second).unwrap().unwrap(), [b'2'; 600]);
    match f.mail.upload(a, &[b'3'; 1001], "x/y", T0 + 2) {
        Err(Error::OverQuota { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        f.mail.uploaded(a, &second).unwrap().is_some(),
        "a refused upload forgets nothing"
    );
    // The same bytes again take no more room.
    assert_eq!(
        f.mail.upload(a, &[b'2'; 600], "x/y", T0 + 3).unwrap(),
        second
    );
    assert_eq!(f.mail.pending_upload_bytes(a).unwrap(), 600);
}

#[test]
fn pending_uploads_are_bounded_per_account() {
    let f = fx("upload-pending");
    let mail = f.mail.clone().with_upload_policy(UploadPolicy {
        ttl: DAY,
        pending_bytes: 1000,
    });
    let a = &f.account;
    let blobs: Vec<BlobId> = (0..3u8)
        .map(|i| mail.upload(a, &[i; 400], "x/y", T0 + i64::from(i)).unwrap())
        .collect();
    assert!(mail.uploaded(a, &blobs[0]).unwrap().is_none());
    assert!(mail.uploaded(a, &blobs[1]).unwrap().is_some());
    assert!(mail.uploaded(a, &blobs[2]).unwrap().is_some());
    assert_eq!(mail.pending_upload_bytes(a).unwrap(), 800);
    match mail.upload(a, &[9; 1001], "x/y", T0) {
        Err(Error::NotAMessage(why)) => assert!(why.contains("1000-byte limit"), "{why}"),
        other => panic!("{other:?}"),
    }
    // An upload the account imported is no longer pending.
    let inbox = mail.mailbox_by_role(a, "inbox").unwrap().id;
    let raw = mail.upload(a, OTHER, "message/rfc822", T0 + 5).unwrap();
    mail.deliver(a, OTHER, &inbox, vec![], T0 + 5).unwrap();
    assert!(mail.uploaded(a, &raw).unwrap().is_some());
    assert_eq!(mail.pending_upload_bytes(a).unwrap(), 800);
}

#[test]
fn uploads_expire_and_their_files_go_unless_something_else_is_stored_as_them() {
    let f = fx("upload-expiry");
    let (a, bob) = (&f.account, f.second_account());
    let lone = f
        .mail
        .upload(a, b"only an upload", "text/plain", T0)
        .unwrap();
    // The same bytes uploaded by two accounts, and a message that is also an email.
    let shared = f.mail.upload(a, b"shared", "text/plain", T0).unwrap();
    f.mail
        .upload(&bob, b"shared", "text/plain", T0 + DAY)
        .unwrap();
    let imported = f.mail.upload(a, FIRST, "message/rfc822", T0).unwrap();
    let inbox = f.mail.mailbox_by_role(&bob, "inbox").unwrap().id;
    f.mail.deliver(&bob, FIRST, &inbox, vec![], T0).unwrap();
    // Uploaded again late: kept a day from then.
    let again = f.mail.upload(a, b"again", "text/plain", T0).unwrap();
    f.mail
        .upload(a, b"again", "text/plain", T0 + DAY - 10)
        .unwrap();

    assert_eq!(f.mail.expire_uploads(T0 + DAY - 1).unwrap(), (0, 0));
    assert!(f.mail.uploaded(a, &lone).unwrap().is_some(), "kept a day");
    assert_eq!(f.mail.expire_uploads(T0 + DAY + 1).unwrap(), (3, 1));
    for gone in [&lone, &shared, &imported] {
        assert!(f.mail.uploaded(a, gone).unwrap().is_none());
    }
    assert!(!f.blob_file(&lone).exists());
    assert_eq!(f.mail.uploaded(&bob, &shared).unwrap().unwrap(), b"shared");
    assert_eq!(f.mail.blob(&bob, &imported).unwrap().unwrap().1, FIRST);
    assert!(f.mail.uploaded(a, &again).unwrap().is_some());
    assert_eq!(f.mail.expire_uploads(T0 + 2 * DAY + 1).unwrap(), (2, 2));
    assert!(!f.blob_file(&shared).exists() && !f.blob_file(&again).exists());
    assert_eq!(f.mail.blob(&bob, &imported).unwrap().unwrap().1, FIRST);
}

/// A blob store whose file vanishes once right after it is stored, as when the expiry of an
/// upload of the same bytes removes it between a writer's `put` and its commit.
struct Vanishing {
    inner: FsBlobStore,
    armed: std::sync::atomic::AtomicBool,
}

impl store::BlobStore for Vanishing {
    fn put(&self, bytes: &[u8]) -> store::Result<BlobId> {
        let id = self.inner.put(bytes)?;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.inner.remove_unused(&id, &|| Ok(false))?;
        }
        Ok(id)
    }
    fn get(&self, id: &BlobId) -> store::Result<Option<Vec<u8>>> {
        self.inner.get(id)
    }
    fn remove_unused(
        &self,
        id: &BlobId,
        in_use: &dyn Fn() -> store::Result<bool>,
    ) -> store::Result<bool> {
        self.inner.remove_unused(id, in_use)
    }
}

#[test]
fn a_blob_removed_before_the_commit_that_refers_to_it_is_stored_again() {
    let f = fx("vanishing");
    let vanishing = Arc::new(Vanishing {
        inner: FsBlobStore::open(&f.dir.join("blobs")).unwrap(),
        armed: true.into(),
    });
    let mail = Mail::new(f.mail.store.clone(), vanishing.clone());
    let a = &f.account;
    let inbox = mail.mailbox_by_role(a, "inbox").unwrap().id;
    let d = mail.deliver(a, FIRST, &inbox, vec![], T0).unwrap();
    assert_eq!(mail.blob(a, &d.blob_id).unwrap().unwrap().1, FIRST);
    vanishing
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let up = mail.upload(a, b"attachment", "text/plain", T0).unwrap();
    assert_eq!(mail.uploaded(a, &up).unwrap().unwrap(), b"attachment");
}
