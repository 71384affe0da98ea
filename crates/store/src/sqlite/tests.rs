use super::*;
use crate::{EmailId, MailboxId, ThreadId, blob_id};

fn realm(id: &str, domains: &[&str]) -> Realm {
    Realm {
        id: RealmId::new(id).unwrap(),
        kind: RealmKind::Tenant,
        display_name: id.to_owned(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        access_token_alg: "EdDSA".into(),
        created_at: 1,
    }
}

fn entry(jti: &str, kind: TokenKind, family: Option<&str>) -> LedgerEntry {
    LedgerEntry {
        jti: Jti::new(jti).unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        kind,
        subject: "u1".into(),
        client_id: ClientId::new("app").unwrap(),
        kid: None,
        session_id: None,
        family_id: family.map(str::to_owned),
        scope: "openid".into(),
        audience: "mail".into(),
        issued_at: 10,
        expires_at: 20,
        token_hash: vec![1; 32],
        revoked_at: None,
        used_at: None,
    }
}

#[test]
fn migrations_are_idempotent_and_versioned() {
    let dir = std::env::temp_dir().join(format!("keypost-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.db");
    let _ = std::fs::remove_file(&path);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap() as usize, MIGRATIONS.len());
    drop(s);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap() as usize, MIGRATIONS.len());
    let mode: String = s
        .conn()
        .unwrap()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn domains_belong_to_one_realm() {
    let s = SqliteStore::in_memory().unwrap();
    s.create_realm(&realm("contoso", &["contoso.test"]))
        .unwrap();
    assert!(matches!(
        s.create_realm(&realm("fabrikam", &["contoso.test"])),
        Err(Error::Conflict(_))
    ));
    // The failed create left nothing behind.
    assert!(
        s.get_realm(&RealmId::new("fabrikam").unwrap())
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.realm_for_domain("contoso.test")
            .unwrap()
            .unwrap()
            .as_str(),
        "contoso"
    );
}

#[test]
fn refresh_token_use_is_atomic() {
    let s = SqliteStore::in_memory().unwrap();
    s.record_tokens(&[
        entry("r1", TokenKind::Refresh, Some("f1")),
        entry("a1", TokenKind::Access, Some("f1")),
    ])
    .unwrap();
    let jti = Jti::new("r1").unwrap();
    assert!(s.mark_refresh_used(&jti, 11).unwrap());
    assert!(
        !s.mark_refresh_used(&jti, 12).unwrap(),
        "second use must be reported as reuse"
    );
    assert!(
        !s.mark_refresh_used(&Jti::new("a1").unwrap(), 12).unwrap(),
        "access tokens are not refreshable"
    );
    assert_eq!(s.revoke_family("f1", 13).unwrap(), 2);
    assert_eq!(s.get_token(&jti).unwrap().unwrap().revoked_at, Some(13));
}

#[test]
fn duplicate_jti_is_refused() {
    let s = SqliteStore::in_memory().unwrap();
    s.record_tokens(&[entry("x", TokenKind::Access, None)])
        .unwrap();
    assert!(matches!(
        s.record_tokens(&[entry("x", TokenKind::Access, None)]),
        Err(Error::Conflict(_))
    ));
}

#[test]
fn auth_codes_are_consumed_once() {
    let s = SqliteStore::in_memory().unwrap();
    let code = AuthCode {
        code_hash: vec![7; 32],
        realm: RealmId::new("contoso").unwrap(),
        client_id: ClientId::new("app").unwrap(),
        account: AccountId::new("u1").unwrap(),
        session_id: SessionId::new("s1").unwrap(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        scope: "openid".into(),
        nonce: None,
        code_challenge: Some("abc".into()),
        resource: vec![],
        created_at: 1,
        expires_at: 100,
        used_at: None,
        family_id: None,
    };
    s.create_auth_code(&code).unwrap();
    let first = s.consume_auth_code(&[7; 32], 5).unwrap().unwrap();
    assert_eq!(first.used_at, None);
    let second = s.consume_auth_code(&[7; 32], 6).unwrap().unwrap();
    assert_eq!(second.used_at, Some(5));
    assert!(s.consume_auth_code(&[8; 32], 6).unwrap().is_none());
}

#[test]
fn audit_is_append_only_even_through_sql() {
    let s = SqliteStore::in_memory().unwrap();
    let rec = AuditRecord {
        id: 0,
        time: 5,
        realm: Some(RealmId::new("contoso").unwrap()),
        actor: Some("a@contoso.test".into()),
        operation: "SignInFailed".into(),
        target: None,
        result: "failure".into(),
        source_ip: Some("127.0.0.1".into()),
        user_agent: None,
        client_id: None,
        jti: None,
        kid: None,
        details: serde_json::json!({"reason": "bad password"}),
    };
    let ids = s.append_audit(&[rec.clone(), rec.clone()]).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[1] > ids[0]);
    let conn = s.conn().unwrap();
    assert!(
        conn.execute("UPDATE audit SET result = 'success'", [])
            .is_err()
    );
    assert!(conn.execute("DELETE FROM audit", []).is_err());
    drop(conn);
    let q = AuditQuery {
        actor: Some("a@contoso.test".into()),
        since: Some(5),
        ..Default::default()
    };
    assert_eq!(s.count_audit(&q).unwrap(), 2);
    let found = s
        .search_audit(&AuditQuery {
            after_id: Some(ids[0]),
            ..q
        })
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].details["reason"], "bad password");
}

#[test]
fn key_changes_bump_the_generation() {
    let s = SqliteStore::in_memory().unwrap();
    s.create_realm(&realm("contoso", &[])).unwrap();
    let g0 = s.key_generation().unwrap();
    let k = KeyRecord {
        kid: Kid::new("k1").unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        purpose: KeyPurpose::AccessToken,
        alg: "EdDSA".into(),
        public_jwk: "{}".into(),
        sealed: vec![0; 8],
        origin: KeyOrigin::Generated,
        created_at: 1,
        activates_at: 1,
        expires_at: 100,
        revoked_at: None,
    };
    s.insert_key(&k).unwrap();
    let g1 = s.key_generation().unwrap();
    assert!(g1 > g0);
    assert!(s.revoke_key(&k.kid, 5).unwrap());
    assert!(!s.revoke_key(&k.kid, 6).unwrap());
    assert!(s.key_generation().unwrap() > g1);
}

#[test]
fn revocations_bump_the_revocation_generation() {
    let s = SqliteStore::in_memory().unwrap();
    s.create_realm(&realm("contoso", &[])).unwrap();
    let mut last = s.generations().unwrap().revocations;
    let mut bumped = |what: &str| {
        let now = s.generations().unwrap().revocations;
        assert!(now > last, "{what} did not bump the revocation generation");
        last = now;
    };
    s.record_tokens(&[entry("t1", TokenKind::Access, Some("f"))])
        .unwrap();
    s.revoke_token(&Jti::new("t1").unwrap(), 1).unwrap();
    bumped("revoke_token");
    s.record_tokens(&[entry("t2", TokenKind::Access, Some("f2"))])
        .unwrap();
    s.revoke_family("f2", 1).unwrap();
    bumped("revoke_family");
    let sess = Session {
        id: SessionId::new("s1").unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        account: AccountId::new("u1").unwrap(),
        auth_time: 1,
        expires_at: 100,
        revoked_at: None,
    };
    s.create_session(&sess).unwrap();
    s.revoke_session(&sess.id, 2).unwrap();
    bumped("revoke_session");
    s.create_account(&Account {
        id: AccountId::new("u1").unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        email: "u1@contoso.test".into(),
        display_name: "u".into(),
        password_hash: "x".into(),
        must_change_password: false,
        disabled: false,
        role: Role::User,
        created_at: 1,
    })
    .unwrap();
    s.set_account_disabled(&AccountId::new("u1").unwrap(), true)
        .unwrap();
    bumped("set_account_disabled");
}

#[test]
fn ledger_view_joins_session_account_and_client() {
    let s = SqliteStore::in_memory().unwrap();
    let r = RealmId::new("contoso").unwrap();
    s.create_realm(&realm("contoso", &[])).unwrap();
    let app = ClientId::new("app").unwrap();
    let none = s.ledger_view(&Jti::new("nope").unwrap(), &r, &app).unwrap();
    assert!(
        none.entry.is_none()
            && !none.client_known
            && none.session.is_none()
            && none.account.is_none()
    );

    s.create_client(&Client {
        realm: r.clone(),
        client_id: app.clone(),
        name: "app".into(),
        secret_hash: None,
        redirect_uris: vec![],
        grant_types: vec![],
        first_party: false,
        id_token_alg: None,
        created_at: 1,
    })
    .unwrap();
    s.create_account(&Account {
        id: AccountId::new("u1").unwrap(),
        realm: r.clone(),
        email: "u1@contoso.test".into(),
        display_name: "u".into(),
        password_hash: "x".into(),
        must_change_password: false,
        disabled: true,
        role: Role::User,
        created_at: 1,
    })
    .unwrap();
    s.create_session(&Session {
        id: SessionId::new("s1").unwrap(),
        realm: r.clone(),
        account: AccountId::new("u1").unwrap(),
        auth_time: 1,
        expires_at: 100,
        revoked_at: Some(3),
    })
    .unwrap();
    let mut e = entry("t1", TokenKind::Access, None);
    e.session_id = Some(SessionId::new("s1").unwrap());
    s.record_tokens(&[e.clone()]).unwrap();
    let v = s.ledger_view(&e.jti, &r, &app).unwrap();
    assert_eq!(v.entry, Some(e));
    assert!(v.client_known);
    assert_eq!(v.session.unwrap().revoked_at, Some(3));
    assert_eq!(
        v.account,
        Some(AccountState {
            realm: r,
            disabled: true
        })
    );
}

#[test]
fn concurrent_writes_share_commits_and_keep_their_own_results() {
    let s = std::sync::Arc::new(SqliteStore::in_memory().unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    s.record_tokens(&[entry(&format!("t{t}-{i}"), TokenKind::Access, None)])
                        .unwrap();
                    // A duplicate in the same group fails alone.
                    assert!(matches!(
                        s.record_tokens(&[entry(&format!("t{t}-{i}"), TokenKind::Access, None)]),
                        Err(Error::Conflict(_))
                    ));
                    let rec = AuditRecord {
                        id: 0,
                        time: i,
                        realm: None,
                        actor: Some(format!("t{t}")),
                        operation: "X".into(),
                        target: None,
                        result: "success".into(),
                        source_ip: None,
                        user_agent: None,
                        client_id: None,
                        jti: None,
                        kid: None,
                        details: serde_json::json!({}),
                    };
                    assert_eq!(s.append_audit(&[rec.clone(), rec]).unwrap().len(), 2);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..8 {
        for i in 0..50 {
            assert!(
                s.get_token(&Jti::new(format!("t{t}-{i}")).unwrap())
                    .unwrap()
                    .is_some()
            );
        }
    }
    assert_eq!(s.count_audit(&AuditQuery::default()).unwrap(), 800);
}

#[test]
fn file_backed_readers_see_every_acknowledged_write() {
    let dir = std::env::temp_dir().join(format!("keypost-readers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = std::sync::Arc::new(SqliteStore::open(&dir.join("r.db")).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let jti = format!("r{t}-{i}");
                    s.record_tokens(&[entry(&jti, TokenKind::Access, None)])
                        .unwrap();
                    // Acknowledged means visible to every reader from now on.
                    assert!(s.get_token(&Jti::new(jti).unwrap()).unwrap().is_some());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn email_changes_are_exact_across_concurrent_writers() {
    use std::sync::Arc;
    let s = Arc::new(SqliteStore::in_memory().unwrap());
    s.create_realm(&realm("contoso", &[])).unwrap();
    let realm = RealmId::new("contoso").unwrap();
    let account = AccountId::new("u1").unwrap();
    s.create_account(&Account {
        id: account.clone(),
        realm,
        email: "u1@contoso.test".into(),
        display_name: "u".into(),
        password_hash: "x".into(),
        must_change_password: false,
        disabled: false,
        role: Role::User,
        created_at: 1,
    })
    .unwrap();
    let inbox = MailboxId::new("m-inbox").unwrap();
    s.create_mailboxes(&[Mailbox {
        id: inbox.clone(),
        account: account.clone(),
        name: "Inbox".into(),
        role: Some("inbox".into()),
        parent: None,
        sort_order: 0,
    }])
    .unwrap();
    let owner = account.clone();
    let email = move |i: usize| EmailRecord {
        id: EmailId::new(format!("e{i}")).unwrap(),
        account: owner.clone(),
        blob_id: blob_id(format!("{i}").as_bytes()),
        thread_id: ThreadId::new(format!("t{i}")).unwrap(),
        message_id: None,
        subject: String::new(),
        from: vec![],
        to: vec![],
        cc: vec![],
        sent_at: None,
        received_at: i as i64,
        size: 1,
        preview: String::new(),
        has_attachment: false,
        keywords: vec![],
    };
    for i in 0..20 {
        s.insert_email(
            &email(i),
            std::slice::from_ref(&inbox),
            &[],
            &Default::default(),
        )
        .unwrap();
    }
    let base = s.mail_modseq(&account).unwrap();
    // Four writers at once: new mail, keyword updates, destroys.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, inbox, email) = (s.clone(), inbox.clone(), email.clone());
            let account = account.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let n = t * 5 + i;
                    match t {
                        0 => {
                            s.insert_email(
                                &email(100 + n),
                                std::slice::from_ref(&inbox),
                                &[],
                                &Default::default(),
                            )
                            .unwrap();
                        }
                        1 | 2 => {
                            s.update_email(
                                &account,
                                &EmailId::new(format!("e{n}")).unwrap(),
                                Some(&["$seen".into()]),
                                None,
                            )
                            .unwrap();
                        }
                        _ => {
                            s.destroy_email(&account, &EmailId::new(format!("e{n}")).unwrap())
                                .unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = s.email_changes(&account, base, 1000).unwrap().unwrap();
    assert!(!c.has_more);
    assert_eq!(c.created.len(), 5);
    assert_eq!(c.updated.len(), 10);
    assert_eq!(c.destroyed.len(), 5);
    assert_eq!(c.new_modseq, s.mail_modseq(&account).unwrap());
    // Paging through the same window in small steps sees every change exactly once.
    let (mut since, mut seen) = (base, Vec::new());
    loop {
        let page = s.email_changes(&account, since, 3).unwrap().unwrap();
        seen.extend(
            page.created
                .iter()
                .chain(&page.updated)
                .chain(&page.destroyed)
                .cloned(),
        );
        since = page.new_modseq;
        if !page.has_more {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
    assert!(
        s.email_changes(&account, c.new_modseq + 1, 10)
            .unwrap()
            .is_none(),
        "a future state"
    );
}
