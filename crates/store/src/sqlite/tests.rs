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

/// A public client with no grants of its own.
fn client(realm: &RealmId, id: &ClientId) -> Client {
    Client {
        realm: realm.clone(),
        client_id: id.clone(),
        name: id.to_string(),
        secret_hash: None,
        redirect_uris: vec![],
        grant_types: vec![],
        first_party: false,
        id_token_alg: None,
        created_at: 1,
        scopes: None,
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

/// Contoso's enabled account `u1`.
fn account_u1() -> Account {
    Account {
        id: AccountId::new("u1").unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        email: "u1@contoso.test".into(),
        display_name: "u".into(),
        password_hash: "x".into(),
        must_change_password: false,
        credential_epoch: 0,
        disabled: false,
        role: Role::User,
        created_at: 1,
    }
}

/// A store with realm contoso and its enabled account `u1`, the subject of [`entry`]'s rows
/// (a refresh token rotates only while its account is enabled).
fn store_with_u1() -> SqliteStore {
    let s = SqliteStore::in_memory().unwrap();
    s.create_realm(&realm("contoso", &[])).unwrap();
    s.create_account(&account_u1()).unwrap();
    s
}

/// Issues `new` rotating the refresh token `used` at `at`, and waits for the write's answer.
fn issue_rotating(s: &SqliteStore, new: LedgerEntry, used: &str, at: UnixTime) -> Result<Vec<i64>> {
    s.submit_issuance(&[new], &[], Some((&Jti::new(used).unwrap(), at)))
        .wait()
}

/// When the ledger row `jti` reads revoked (by itself or through its family).
fn revoked_at(s: &SqliteStore, jti: &str) -> Option<UnixTime> {
    s.get_token(&Jti::new(jti).unwrap())
        .unwrap()
        .unwrap()
        .revoked_at
}

/// A fresh directory for a test's database file, and the file's path in it.
fn temp_db(test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("keypost-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keypost.db");
    (dir, path)
}

#[test]
fn migrations_are_idempotent_and_versioned() {
    let (dir, path) = temp_db("store");
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

/// Records appended in several chains: each chain counts from 1 and every link follows
/// `chain::link` from the genesis.
#[test]
fn audit_records_are_linked_per_chain() {
    use crate::chain::{self, GENESIS};
    use crate::traits::AuditChainStore;
    let s = SqliteStore::in_memory().unwrap();
    let rec = |realm: Option<&str>, actor: &str| AuditRecord {
        id: 0,
        time: 7,
        realm: realm.map(|r| RealmId::new(r).unwrap()),
        actor: Some(actor.into()),
        operation: "SignInSucceeded".into(),
        target: None,
        result: "success".into(),
        source_ip: None,
        user_agent: None,
        client_id: None,
        jti: None,
        kid: None,
        details: serde_json::json!({"b": 1, "a": [true]}),
    };
    s.append_audit(&[
        rec(Some("contoso"), "a"),
        rec(None, "p"),
        rec(Some("contoso"), "b"),
    ])
    .unwrap();
    s.append_audit(&[rec(Some("fabrikam"), "c")]).unwrap();
    let all = s.audit_chain(None, 0, 100).unwrap();
    let seqs: Vec<(String, Option<u64>)> = all.iter().map(|r| (r.chain.clone(), r.seq)).collect();
    assert_eq!(
        seqs,
        [("contoso", 1), ("", 1), ("contoso", 2), ("fabrikam", 1)]
            .map(|(c, n)| (c.to_owned(), Some(n)))
    );
    let contoso = s.audit_chain(Some("contoso"), 0, 100).unwrap();
    let first = chain::link(&GENESIS, 1, &contoso[0].record, &contoso[0].details_text);
    let second = chain::link(&first, 2, &contoso[1].record, &contoso[1].details_text);
    assert_eq!(contoso[0].link.as_deref(), Some(&first[..]));
    assert_eq!(contoso[1].link.as_deref(), Some(&second[..]));
    let heads = s.audit_heads().unwrap();
    assert!(heads.contains(&("contoso".into(), 2, second)));
}

/// A database from before the chain gets its records linked by the migration, once; rows
/// written into the file by hand later are never linked by an ordinary open.
#[test]
fn the_chain_migration_links_earlier_records_once() {
    use crate::traits::AuditChainStore;
    let (dir, path) = temp_db("chain");
    {
        let c = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..AUDIT_CHAIN_MIGRATION - 1] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", AUDIT_CHAIN_MIGRATION - 1)
            .unwrap();
        for actor in ["a", "b"] {
            c.execute(
                "INSERT INTO audit(time, realm, actor, operation, result, details) \
                 VALUES (1, 'contoso', ?, 'SignInFailed', 'failure', '{}')",
                [actor],
            )
            .unwrap();
        }
    }
    let s = SqliteStore::open(&path).unwrap();
    let linked = s.audit_chain(Some("contoso"), 0, 10).unwrap();
    assert_eq!(
        linked.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    drop(s);
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("DROP TRIGGER audit_no_update;").unwrap();
        c.execute(
            "INSERT INTO audit(time, realm, actor, operation, result, details, chain) \
             VALUES (1, 'contoso', 'forged', 'SignInSucceeded', 'success', '{}', 'contoso')",
            [],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let rows = s.audit_chain(Some("contoso"), 0, 10).unwrap();
    assert_eq!(
        rows.last().unwrap().seq,
        None,
        "a hand-written row stays unlinked"
    );
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A family revoked the old way (its rows marked one by one) stays revoked after the move to
/// `revoked_families`: its unmarked rows read revoked, and nothing more is issued into it.
#[test]
fn the_family_migration_keeps_revoked_families_revoked() {
    let (dir, path) = temp_db("families");
    let families = MIGRATIONS
        .iter()
        .position(|m| m.contains("CREATE TABLE revoked_families"))
        .unwrap();
    {
        let c = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..families] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", families).unwrap();
        for (jti, kind, family, revoked) in [
            ("r1", "refresh", "f1", Some(7)),
            ("r2", "refresh", "f1", Some(8)),
            ("a1", "access", "f1", None),
            ("r3", "refresh", "f2", None),
            ("a2", "access", "f2", Some(9)),
        ] {
            c.execute(
                "INSERT INTO ledger(jti, realm, kind, subject, client_id, family_id, scope, \
                 audience, issued_at, expires_at, token_hash, revoked_at) \
                 VALUES (?, 'contoso', ?, 'u1', 'app', ?, 's', 'a', 1, 100, x'00', ?)",
                params![jti, kind, family, revoked],
            )
            .unwrap();
        }
    }
    let s = SqliteStore::open(&path).unwrap();
    let revoked_at = |jti: &str| revoked_at(&s, jti);
    assert_eq!(
        revoked_at("a1"),
        Some(7),
        "a family is revoked from its first revocation"
    );
    assert_eq!(
        revoked_at("r3"),
        None,
        "a revoked access token does not revoke its family"
    );
    assert!(matches!(
        s.record_tokens(&[entry("a3", TokenKind::Access, Some("f1"))]),
        Err(Error::FamilyRevoked(_))
    ));
    s.record_tokens(&[entry("a4", TokenKind::Access, Some("f2"))])
        .unwrap();
    drop(s);
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

/// Whatever the grant read before (possibly from memory, before another process's change),
/// the rotation's write refuses a refresh token that is no longer live: its family revoked,
/// its session ended, its account disabled. Nothing is written.
#[test]
fn a_rotation_refuses_a_token_no_longer_live() {
    let s = store_with_u1();
    let session = |id: &str, expires_at| Session {
        id: SessionId::new(id).unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        account: AccountId::new("u1").unwrap(),
        auth_time: 1,
        expires_at,
        revoked_at: None,
        credential_epoch: 0,
    };
    let mut rows = Vec::new();
    for (jti, family, sid) in [("r1", "f1", "s1"), ("r2", "f2", "s2"), ("r3", "f3", "s3")] {
        s.create_session(&session(sid, 100)).unwrap();
        let mut e = entry(jti, TokenKind::Refresh, Some(family));
        e.session_id = Some(SessionId::new(sid).unwrap());
        rows.push(e);
    }
    s.record_tokens(&rows).unwrap();
    let rotate = |new: &str, used: &str, family: &str| {
        issue_rotating(&s, entry(new, TokenKind::Refresh, Some(family)), used, 11)
    };
    s.revoke_family("f1", 5).unwrap();
    assert!(matches!(
        rotate("n1", "r1", "f1"),
        Err(Error::FamilyRevoked(_))
    ));
    s.revoke_session(&SessionId::new("s2").unwrap(), 5).unwrap();
    // (A new row outside any family: only the rotated token's own state refuses it.)
    let refused = issue_rotating(&s, entry("n2", TokenKind::Access, None), "r2", 11);
    assert!(
        matches!(refused, Err(Error::FamilyRevoked(_))),
        "{refused:?}"
    );
    s.set_account_disabled(&AccountId::new("u1").unwrap(), true)
        .unwrap();
    assert!(matches!(
        rotate("n3", "r3", "f3"),
        Err(Error::FamilyRevoked(_))
    ));
    for jti in ["n1", "n2", "n3"] {
        assert!(
            s.get_token(&Jti::new(jti).unwrap()).unwrap().is_none(),
            "{jti}"
        );
    }
    for jti in ["r2", "r3"] {
        let used = s
            .get_token(&Jti::new(jti).unwrap())
            .unwrap()
            .unwrap()
            .used_at;
        assert_eq!(used, None, "{jti} was not consumed");
    }
    s.set_account_disabled(&AccountId::new("u1").unwrap(), false)
        .unwrap();
    rotate("n3", "r3", "f3").unwrap();
}

#[test]
fn refresh_token_use_is_atomic() {
    let s = store_with_u1();
    s.record_tokens(&[
        entry("r1", TokenKind::Refresh, Some("f1")),
        entry("a1", TokenKind::Access, Some("f1")),
    ])
    .unwrap();
    let jti = Jti::new("r1").unwrap();
    let rotate = |new: &str, used: &str, at| {
        issue_rotating(&s, entry(new, TokenKind::Refresh, Some("f1")), used, at)
    };
    rotate("r2", "r1", 11).unwrap();
    assert_eq!(s.get_token(&jti).unwrap().unwrap().used_at, Some(11));
    assert!(
        matches!(rotate("r3", "r1", 12), Err(Error::Consumed(_))),
        "second use must be reported as reuse"
    );
    assert!(
        s.get_token(&Jti::new("r3").unwrap()).unwrap().is_none(),
        "a refused rotation issues nothing"
    );
    assert!(
        matches!(rotate("r4", "a1", 12), Err(Error::Consumed(_))),
        "access tokens are not refreshable"
    );
    assert!(s.revoke_family("f1", 13).unwrap());
    assert!(!s.revoke_family("f1", 14).unwrap(), "revoked once");
    for t in ["r1", "r2", "a1"] {
        let row = s.get_token(&Jti::new(t).unwrap()).unwrap().unwrap();
        assert_eq!(row.revoked_at, Some(13), "{t}");
    }
}

#[test]
fn nothing_is_issued_into_a_revoked_family() {
    let s = SqliteStore::in_memory().unwrap();
    s.record_tokens(&[
        entry("r1", TokenKind::Refresh, Some("f1")),
        entry("r9", TokenKind::Refresh, Some("f9")),
    ])
    .unwrap();
    // The reuse of r1 revokes the family while the rotation's new tokens wait for their
    // commit; they must not come out at all.
    s.revoke_family("f1", 13).unwrap();
    let late = s.record_tokens(&[
        entry("r2", TokenKind::Refresh, Some("f1")),
        entry("a2", TokenKind::Access, Some("f1")),
    ]);
    assert!(matches!(late, Err(Error::FamilyRevoked(f)) if f == "f1"));
    for jti in ["r2", "a2"] {
        assert!(
            s.get_token(&Jti::new(jti).unwrap()).unwrap().is_none(),
            "{jti}"
        );
    }
    // Revoking one refresh token (an operator's `sessions revoke`, RFC 7009) revokes its
    // family: its other tokens, and any issued into it later.
    s.record_tokens(&[entry("a9", TokenKind::Access, Some("f9"))])
        .unwrap();
    assert!(s.revoke_token(&Jti::new("r9").unwrap(), 15).unwrap());
    let a9 = s.get_token(&Jti::new("a9").unwrap()).unwrap().unwrap();
    assert_eq!(a9.revoked_at, Some(15));
    assert!(matches!(
        s.record_tokens(&[entry("a10", TokenKind::Access, Some("f9"))]),
        Err(Error::FamilyRevoked(_))
    ));
    // Revoking one access token does not poison its family's later tokens.
    s.record_tokens(&[entry("a3", TokenKind::Access, Some("f2"))])
        .unwrap();
    assert!(s.revoke_token(&Jti::new("a3").unwrap(), 14).unwrap());
    s.record_tokens(&[entry("a4", TokenKind::Access, Some("f2"))])
        .unwrap();
    let a4 = s.get_token(&Jti::new("a4").unwrap()).unwrap().unwrap();
    assert_eq!(a4.revoked_at, None);
}

/// `sessions revoke` reports what it newly stopped: a token already revoked by itself or
/// through its family is neither marked again nor counted, whichever scope is revoked.
#[test]
fn a_scope_revocation_counts_only_what_it_newly_revoked() {
    let realm = RealmId::new("contoso").unwrap();
    let scopes = [
        RevokeScope::Account(AccountId::new("u1").unwrap()),
        RevokeScope::Realm(realm.clone()),
        RevokeScope::Client(realm, ClientId::new("app").unwrap()),
    ];
    for scope in scopes {
        let s = SqliteStore::in_memory().unwrap();
        s.record_tokens(&[
            entry("r1", TokenKind::Refresh, Some("f1")),
            entry("a1", TokenKind::Access, Some("f1")),
            entry("a2", TokenKind::Access, None),
            entry("a3", TokenKind::Access, None),
        ])
        .unwrap();
        s.revoke_family("f1", 11).unwrap();
        s.revoke_token(&Jti::new("a3").unwrap(), 11).unwrap();
        assert_eq!(
            s.revoke_scope(&scope, 12).unwrap().1,
            1,
            "{scope:?}: a2 only"
        );
        assert_eq!(
            s.revoke_scope(&scope, 13).unwrap().1,
            0,
            "{scope:?}: nothing left"
        );
        let revoked_at = |jti: &str| revoked_at(&s, jti);
        assert_eq!(
            [revoked_at("a1"), revoked_at("a2"), revoked_at("a3")],
            [Some(11), Some(12), Some(11)],
            "{scope:?}"
        );
    }
}

/// Pruning takes what no token needs any more, found by the jti's time prefix: rows minted
/// before the cut that have expired, oldest first and at most `limit` at a time. A row minted
/// before the cut that still lives stays, as does anything minted after it; a revoked family
/// stays revoked, however long ago, and its surviving token with it.
#[test]
fn the_ledger_is_pruned_of_what_no_token_needs() {
    let s = store_with_u1();
    let row = |minted: i64, tag: &str, expires_at: i64, family: Option<&str>| {
        let mut jti = String::new();
        crate::push_jti_time_prefix(&mut jti, minted as u64 * 1000);
        jti.push_str(tag);
        LedgerEntry {
            jti: Jti::new(jti).unwrap(),
            issued_at: minted,
            expires_at,
            ..entry("unused", TokenKind::Access, family)
        }
    };
    let (a, b, live, late) = (
        row(100, "a", 200, None),
        row(101, "b", 201, Some("f1")),
        row(102, "c", 9_000, Some("f1")),
        row(900, "d", 950, None),
    );
    s.record_tokens(&[a.clone(), b.clone(), live.clone(), late.clone()])
        .unwrap();
    s.revoke_family("f1", 150).unwrap();

    // Cut at 500, at 1000: one row per call with a limit of 1, oldest first.
    assert_eq!(s.prune_ledger(500, 1_000, 1).unwrap(), 1);
    assert!(s.get_token(&a.jti).unwrap().is_none());
    assert!(s.get_token(&b.jti).unwrap().is_some());
    assert_eq!(s.prune_ledger(500, 1_000, 10).unwrap(), 1);
    assert_eq!(s.prune_ledger(500, 1_000, 10).unwrap(), 0);
    for kept in [&live, &late] {
        assert!(s.get_token(&kept.jti).unwrap().is_some(), "{}", kept.jti);
    }
    assert_eq!(revoked_at(&s, live.jti.as_str()), Some(150));
    assert!(matches!(
        s.record_tokens(&[row(1_000, "e", 2_000, Some("f1"))]),
        Err(Error::FamilyRevoked(f)) if f == "f1"
    ));
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
    // Reading a code does not use it up.
    assert_eq!(s.get_auth_code(&[7; 32]).unwrap(), Some(code.clone()));
    assert_eq!(s.get_auth_code(&[7; 32]).unwrap(), Some(code));
    assert!(s.consume_auth_code(&[7; 32], 5, "f1").unwrap());
    // The family is there from the moment the code is used: a replay finds it.
    let used = s.get_auth_code(&[7; 32]).unwrap().unwrap();
    assert_eq!(
        (used.used_at, used.family_id.as_deref()),
        (Some(5), Some("f1"))
    );
    assert!(!s.consume_auth_code(&[7; 32], 6, "f2").unwrap());
    assert_eq!(
        s.get_auth_code(&[7; 32])
            .unwrap()
            .unwrap()
            .family_id
            .as_deref(),
        Some("f1")
    );
    assert!(!s.consume_auth_code(&[8; 32], 6, "f3").unwrap());
    assert!(s.get_auth_code(&[8; 32]).unwrap().is_none());
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
    s.create_account(&account_u1()).unwrap();
    let sess = Session {
        id: SessionId::new("s1").unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        account: AccountId::new("u1").unwrap(),
        auth_time: 1,
        expires_at: 100,
        revoked_at: None,
        credential_epoch: 0,
    };
    s.create_session(&sess).unwrap();
    s.revoke_session(&sess.id, 2).unwrap();
    bumped("revoke_session");
    // Even with no session or token to end, a new password is a revocation.
    s.set_password_hash(&AccountId::new("u1").unwrap(), "y", false, 3)
        .unwrap();
    bumped("set_password_hash");
    s.set_account_disabled(&AccountId::new("u1").unwrap(), true)
        .unwrap();
    bumped("set_account_disabled");
    // No verb changes an account's profile yet; if one does, what the token endpoint
    // remembers of it (`AccountState`) must still be let go of.
    for change in [
        "display_name = 'v'",
        "email = 'v@contoso.test'",
        "role = 'tenant-admin'",
    ] {
        s.conn()
            .unwrap()
            .execute(&format!("UPDATE accounts SET {change} WHERE id = 'u1'"), [])
            .unwrap();
        bumped(change);
    }
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

    s.create_client(&client(&r, &app)).unwrap();
    s.create_account(&account_u1()).unwrap();
    let sid = SessionId::new("s1").unwrap();
    s.create_session(&Session {
        id: sid.clone(),
        realm: r.clone(),
        account: AccountId::new("u1").unwrap(),
        auth_time: 1,
        expires_at: 100,
        revoked_at: None,
        credential_epoch: 0,
    })
    .unwrap();
    let mut e = entry("t1", TokenKind::Access, None);
    e.session_id = Some(sid.clone());
    s.record_tokens(&[e.clone()]).unwrap();
    // Ended and disabled after the token was issued.
    s.revoke_session(&sid, 3).unwrap();
    s.set_account_disabled(&AccountId::new("u1").unwrap(), true)
        .unwrap();
    let v = s.ledger_view(&e.jti, &r, &app).unwrap();
    assert_eq!(v.entry, Some(e));
    assert!(v.client_known);
    assert_eq!(
        v.session,
        Some(SessionState {
            realm: r.clone(),
            revoked_at: Some(3),
            expires_at: 100,
            auth_time: 1,
        })
    );
    assert_eq!(
        v.account,
        Some(AccountState {
            realm: r,
            disabled: true,
            email: "u1@contoso.test".into(),
            display_name: "u".into(),
            role: Role::User,
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
                    // A duplicate in the same group fails alone, and the audit record written
                    // with it takes no place in the chain.
                    assert!(matches!(
                        s.record_issuance(
                            &[entry(&format!("t{t}-{i}"), TokenKind::Access, None)],
                            std::slice::from_ref(&rec)
                        ),
                        Err(Error::Conflict(_))
                    ));
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
    // The provider chain is whole: positions 1..=800 in append order, every link recomputes.
    use crate::chain::{self, GENESIS};
    use crate::traits::AuditChainStore;
    let rows = s.audit_chain(Some(""), 0, 10_000).unwrap();
    assert_eq!(rows.len(), 800);
    let mut prev = GENESIS;
    for (n, r) in rows.iter().enumerate() {
        assert_eq!(r.seq, Some(n as u64 + 1));
        prev = chain::link(&prev, n as u64 + 1, &r.record, &r.details_text);
        assert_eq!(r.link.as_deref(), Some(&prev[..]));
    }
    assert_eq!(s.audit_heads().unwrap(), vec![(String::new(), 800, prev)]);
    assert_eq!(s.count_audit(&AuditQuery::default()).unwrap(), 800);
}

#[test]
fn file_backed_readers_see_every_acknowledged_write() {
    let (dir, path) = temp_db("readers");
    let s = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
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

/// An account `u1` in realm contoso with an inbox.
fn mail_account(s: &SqliteStore) -> (AccountId, MailboxId) {
    s.create_realm(&realm("contoso", &[])).unwrap();
    let account = AccountId::new("u1").unwrap();
    s.create_account(&account_u1()).unwrap();
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
    (account, inbox)
}

fn test_email(account: &AccountId, i: usize, subject: &str, received_at: i64) -> EmailRecord {
    EmailRecord {
        id: EmailId::new(format!("e{i}")).unwrap(),
        account: account.clone(),
        blob_id: blob_id(format!("{i}").as_bytes()),
        thread_id: ThreadId::new(format!("t{i}")).unwrap(),
        message_id: None,
        subject: subject.into(),
        from: vec![],
        to: vec![],
        cc: vec![],
        sent_at: None,
        received_at,
        size: 10 + i as u64,
        preview: String::new(),
        has_attachment: false,
        keywords: vec![],
    }
}

#[test]
fn search_plans_agree_on_every_page() {
    use crate::{EmailCondition, EmailFilter, EmailQuery, EmailSort, QueryPage, SortKey};
    let s = SqliteStore::in_memory().unwrap();
    let (account, inbox) = mail_account(&s);
    // Enough matches for the arrival-order walk; arrival times repeat, so ties must break
    // the same way in both plans.
    for i in 0..3_500 {
        let subject = if i % 3 == 0 {
            format!("other {i}")
        } else {
            format!("budget {i}")
        };
        let e = test_email(&account, i, &subject, (i % 400) as i64);
        let text = crate::SearchText::default();
        s.insert_email(&e, std::slice::from_ref(&inbox), &[], &text)
            .unwrap();
    }
    for ascending in [false, true] {
        let q = EmailQuery {
            filter: EmailFilter::condition(EmailCondition {
                subject: Some("budget".into()),
                ..Default::default()
            }),
            sort: vec![EmailSort {
                key: SortKey::ReceivedAt,
                ascending,
            }],
            collapse_threads: false,
        };
        for position in [0, 777, 2_300] {
            let page = |count_total| QueryPage {
                position,
                limit: 50,
                count_total,
            };
            let (walked, _) = s.query_emails(&account, &q, page(false)).unwrap();
            let (driven, total) = s.query_emails(&account, &q, page(true)).unwrap();
            assert_eq!(total, Some(2_333));
            assert_eq!(walked, driven, "position {position}, ascending {ascending}");
            assert_eq!(walked.len(), if position == 2_300 { 33 } else { 50 });
        }
    }
}

#[test]
fn usage_follows_inserts_and_destroys() {
    let s = SqliteStore::in_memory().unwrap();
    let (account, inbox) = mail_account(&s);
    for i in 0..3 {
        let e = test_email(&account, i, "x", 1);
        s.insert_email(&e, std::slice::from_ref(&inbox), &[], &Default::default())
            .unwrap();
    }
    assert_eq!(s.mail_usage(&account).unwrap(), 10 + 11 + 12);
    s.destroy_email(&account, &EmailId::new("e1").unwrap())
        .unwrap();
    assert_eq!(s.mail_usage(&account).unwrap(), 10 + 12);
    s.destroy_email(&account, &EmailId::new("e1").unwrap()).ok();
    assert_eq!(
        s.mail_usage(&account).unwrap(),
        10 + 12,
        "a second destroy frees nothing"
    );
}

#[test]
fn email_changes_are_exact_across_concurrent_writers() {
    use std::sync::Arc;
    let s = Arc::new(SqliteStore::in_memory().unwrap());
    let (account, inbox) = mail_account(&s);
    let owner = account.clone();
    let email = move |i: usize| test_email(&owner, i, "", i as i64);
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

/// The generation counters and the realms and clients kept in memory: a change made through
/// the same store is seen by the next call, one made by another process (here another store
/// on the same file, as the CLI beside `serve`) once that process has closed its store.
#[test]
fn shared_counters_and_directory_follow_every_change() {
    let (dir, path) = temp_db("generations");
    let a = SqliteStore::open(&path).unwrap();
    let id = RealmId::new("contoso").unwrap();
    a.create_realm(&realm("contoso", &["contoso.test"]))
        .unwrap();
    let app = ClientId::new("app").unwrap();
    a.create_client(&client(&id, &app)).unwrap();
    a.record_tokens(&[
        entry("t1", TokenKind::Access, None),
        entry("t2", TokenKind::Access, None),
    ])
    .unwrap();

    // Through the same store: seen at once, though the shared copy is younger than the bound.
    let g = a.generations().unwrap();
    assert!(a.revoke_token(&Jti::new("t1").unwrap(), 12).unwrap());
    assert!(a.generations().unwrap().revocations > g.revocations);
    assert_eq!(a.get_realm(&id).unwrap().unwrap().access_token_alg, "EdDSA");
    a.set_access_token_alg(&id, "ES256").unwrap();
    assert_eq!(a.get_realm(&id).unwrap().unwrap().access_token_alg, "ES256");

    // Through another store: seen once that store is closed (which waits out the bound).
    assert!(!a.get_client(&id, &app).unwrap().unwrap().first_party);
    let g = a.generations().unwrap();
    let b = SqliteStore::open(&path).unwrap();
    assert!(b.revoke_token(&Jti::new("t2").unwrap(), 13).unwrap());
    b.set_access_token_alg(&id, "RS256").unwrap();
    b.conn()
        .unwrap()
        .execute(
            "UPDATE clients SET first_party = 1 WHERE client_id = 'app'",
            [],
        )
        .unwrap();
    drop(b);
    let seen = a.generations().unwrap();
    assert!(seen.revocations > g.revocations && seen.directory > g.directory);
    assert_eq!(a.get_realm(&id).unwrap().unwrap().access_token_alg, "RS256");
    assert!(a.get_client(&id, &app).unwrap().unwrap().first_party);
    drop(a);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A rotation the write refuses for a revocation made by another process (here another store
/// on the same file, still open) proves that revocation: this store's next generations read
/// sees it at once, not up to `GENERATIONS_STALE_AFTER` later.
#[test]
fn a_refused_rotation_shows_another_process_revocation_at_once() {
    let (dir, path) = temp_db("proved");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    a.create_realm(&realm("contoso", &[])).unwrap();
    a.create_account(&account_u1()).unwrap();
    a.record_tokens(&[entry("r1", TokenKind::Refresh, Some("f1"))])
        .unwrap();
    // From here to the last assertion takes a few milliseconds, well inside the 25 ms a
    // shared copy read now may be served for.
    let before = a.generations().unwrap();
    assert!(b.revoke_family("f1", 11).unwrap());
    let refused = issue_rotating(&a, entry("r2", TokenKind::Refresh, Some("f1")), "r1", 12);
    assert!(
        matches!(refused, Err(Error::FamilyRevoked(_))),
        "{refused:?}"
    );
    assert!(a.generations().unwrap().revocations > before.revocations);
    drop((a, b));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A write refused because one of its jtis is taken changes nothing, though the committer's
/// transaction has no savepoint: the rows it inserted before are gone, and the refresh token
/// it rotated is unused again.
#[test]
fn a_refused_issuance_leaves_no_trace() {
    let s = store_with_u1();
    s.record_tokens(&[
        entry("r1", TokenKind::Refresh, Some("f1")),
        entry("taken", TokenKind::Access, None),
    ])
    .unwrap();
    let refused = s
        .submit_issuance(
            &[
                entry("a2", TokenKind::Access, Some("f1")),
                entry("taken", TokenKind::Refresh, Some("f1")),
            ],
            &[],
            Some((&Jti::new("r1").unwrap(), 11)),
        )
        .wait();
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    assert!(s.get_token(&Jti::new("a2").unwrap()).unwrap().is_none());
    let r1 = Jti::new("r1").unwrap();
    assert_eq!(s.get_token(&r1).unwrap().unwrap().used_at, None);
    // So the refresh token still rotates, once.
    s.submit_issuance(
        &[entry("r2", TokenKind::Refresh, Some("f1"))],
        &[],
        Some((&r1, 12)),
    )
    .wait()
    .unwrap();
    assert_eq!(s.get_token(&r1).unwrap().unwrap().used_at, Some(12));
}

/// The caches in front of the store are only as good as the triggers that bump their
/// generations: a migration that rebuilt one of these tables would drop them silently.
#[test]
fn every_generation_trigger_is_in_place() {
    let s = SqliteStore::in_memory().unwrap();
    let conn = s.conn().unwrap();
    let mut present: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    present.sort();
    for t in [
        "ledger_revoked",
        "session_revoked",
        "account_disabled",
        "client_changed",
        "account_created",
        "account_deleted",
        "session_deleted",
        "realm_inserted",
        "realm_updated",
        "realm_deleted",
        "domain_inserted",
        "domain_updated",
        "domain_deleted",
        "client_inserted",
        "client_updated",
        "client_deleted",
    ] {
        assert!(
            present.iter().any(|p| p == t),
            "trigger {t} is missing: {present:?}"
        );
    }
}

/// A sign-in session of `u1` at `epoch`, live until 100.
fn session_u1(id: &str, epoch: u64) -> Session {
    Session {
        id: SessionId::new(id).unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        account: AccountId::new("u1").unwrap(),
        auth_time: 1,
        expires_at: 100,
        revoked_at: None,
        credential_epoch: epoch,
    }
}

/// An access token of `u1` under the sign-in session `sid`.
fn entry_under(jti: &str, sid: &str) -> LedgerEntry {
    let mut e = entry(jti, TokenKind::Access, None);
    e.session_id = Some(SessionId::new(sid).unwrap());
    e
}

/// A password reset ends everything of the account in its own transaction, and a sign-in
/// that checked the old password before it — whose session or tokens reach the store after —
/// gets nothing: the writes themselves compare the credential epoch.
#[test]
fn a_sign_in_from_before_a_password_reset_gets_no_session_and_no_tokens() {
    let s = store_with_u1();
    let u1 = AccountId::new("u1").unwrap();
    let before = s.get_account(&u1).unwrap().unwrap();
    assert_eq!(before.credential_epoch, 0);
    s.create_session(&session_u1("s1", before.credential_epoch))
        .unwrap();
    s.record_tokens(&[entry_under("t1", "s1")]).unwrap();

    let change = s.set_password_hash(&u1, "new", false, 5).unwrap();
    assert_eq!((change.epoch, change.sessions, change.tokens), (1, 1, 1));
    assert_eq!(s.get_account(&u1).unwrap().unwrap().credential_epoch, 1);
    assert_eq!(
        s.get_token(&Jti::new("t1").unwrap())
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(5)
    );

    // The racing sign-in: it checked the old password (epoch 0) and writes now.
    let late = s.create_session(&session_u1("s2", before.credential_epoch));
    assert!(
        matches!(late, Err(Error::CredentialsChanged(_))),
        "{late:?}"
    );
    assert!(
        s.get_session(&SessionId::new("s2").unwrap())
            .unwrap()
            .is_none()
    );
    // Its tokens, under the session it had created before the reset, are not written.
    let late = s.record_tokens(&[entry_under("t2", "s1")]);
    assert!(
        matches!(late, Err(Error::CredentialsChanged(_))),
        "{late:?}"
    );
    assert!(s.get_token(&Jti::new("t2").unwrap()).unwrap().is_none());

    // The new password's sign-ins work.
    s.create_session(&session_u1("s3", 1)).unwrap();
    s.record_tokens(&[entry_under("t3", "s3")]).unwrap();
}

/// Disabling an account moves its epoch on too: nothing is issued under the sessions of
/// before, even once the account is enabled again.
#[test]
fn disabling_an_account_ends_what_its_sessions_may_issue() {
    let s = store_with_u1();
    let u1 = AccountId::new("u1").unwrap();
    s.create_session(&session_u1("s1", 0)).unwrap();
    s.set_account_disabled(&u1, true).unwrap();
    let refused = s.create_session(&session_u1("s2", 1));
    assert!(
        matches!(refused, Err(Error::CredentialsChanged(_))),
        "{refused:?}"
    );
    s.set_account_disabled(&u1, false).unwrap();
    let refused = s.record_tokens(&[entry_under("t1", "s1")]);
    assert!(
        matches!(refused, Err(Error::CredentialsChanged(_))),
        "{refused:?}"
    );
    let epoch = s.get_account(&u1).unwrap().unwrap().credential_epoch;
    s.create_session(&session_u1("s3", epoch)).unwrap();
    s.record_tokens(&[entry_under("t2", "s3")]).unwrap();
}

fn new_alert(realm: Option<&str>, key: &str, at: UnixTime, kids: &[&str]) -> Alert {
    Alert {
        id: 0,
        realm: realm.map(|r| RealmId::new(r).unwrap()),
        rule: "forged-token".into(),
        severity: Severity::Critical,
        title: "t".into(),
        dedup_key: key.into(),
        first_seen: at,
        last_seen: at,
        count: 1,
        evidence: vec![at],
        details: serde_json::json!({"kids": kids, "iss": format!("first {at}")}),
        status: AlertStatus::Open,
        status_by: None,
    }
}

/// A repeat counts on the open alert while it keeps coming (within the window of its last
/// sighting), merging its lists bounded; after a quiet window, or once resolved, it is new.
#[test]
fn alert_repeats_count_within_the_window_and_merge_their_lists() {
    let s = SqliteStore::in_memory().unwrap();
    let (id, new) = s
        .raise_alert(&new_alert(Some("contoso"), "ip", 100, &["a"]), 60)
        .unwrap();
    assert!(new);
    for n in 0..30 {
        let kid = format!("k{n}");
        let (again, new) = s
            .raise_alert(&new_alert(Some("contoso"), "ip", 100 + n, &[&kid, "a"]), 60)
            .unwrap();
        assert_eq!((again, new), (id, false));
    }
    let a = s.get_alert(id).unwrap().unwrap();
    assert_eq!((a.count, a.first_seen, a.last_seen), (31, 100, 129));
    let kids = a.details["kids"].as_array().unwrap();
    assert_eq!(kids.len(), ALERT_DETAIL_VALUES);
    assert_eq!(
        (&kids[0], &kids[1]),
        (&serde_json::json!("a"), &serde_json::json!("k0"))
    );
    assert_eq!(a.details["iss"], "first 100", "the first sighting's");
    // Another realm or key is another alert; so is the same after a quiet window.
    assert!(
        s.raise_alert(&new_alert(None, "ip", 130, &[]), 60)
            .unwrap()
            .1
    );
    assert!(
        s.raise_alert(&new_alert(Some("contoso"), "ip2", 130, &[]), 60)
            .unwrap()
            .1
    );
    assert!(
        s.raise_alert(&new_alert(Some("contoso"), "ip", 190, &[]), 60)
            .unwrap()
            .1
    );
}

#[test]
fn alert_mail_is_claimed_under_a_cap_and_held_alerts_summarized_once() {
    let s = SqliteStore::in_memory().unwrap();
    let ids: Vec<i64> = (0..5)
        .map(|n| {
            s.raise_alert(&new_alert(Some("contoso"), &format!("{n}"), 10, &[]), 0)
                .unwrap()
                .0
        })
        .collect();
    let other = s.raise_alert(&new_alert(None, "x", 10, &[]), 0).unwrap().0;
    let mailed: Vec<bool> = ids
        .iter()
        .map(|id| s.claim_alert_mail(*id, 0, 2, 10).unwrap())
        .collect();
    assert_eq!(mailed, [true, true, false, false, false]);
    assert!(
        s.claim_alert_mail(other, 0, 2, 10).unwrap(),
        "the provider's own cap"
    );
    // A new hour: counted from its start.
    let late = s
        .raise_alert(&new_alert(Some("contoso"), "late", 3_700, &[]), 0)
        .unwrap()
        .0;
    assert!(s.claim_alert_mail(late, 3_600, 2, 3_700).unwrap());
    assert!(
        s.held_alerts(10, 100).unwrap().is_empty(),
        "held before 10: none"
    );
    let held: Vec<i64> = s
        .held_alerts(3_600, 100)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(held, ids[2..]);
    s.set_alerts_summarized(&held).unwrap();
    assert!(s.held_alerts(i64::MAX, 100).unwrap().is_empty());
    assert!(s.claim_alert_mail(999, 0, 2, 10).is_err(), "no such alert");
}

#[test]
fn deferred_alert_deliveries_are_queued_behind_the_cursor() {
    let s = SqliteStore::in_memory().unwrap();
    let ids: Vec<i64> = (0..4)
        .map(|n| {
            s.raise_alert(&new_alert(None, &format!("{n}"), 10, &[]), 0)
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(
        s.alerts_after(ids[0], 2)
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect::<Vec<_>>(),
        ids[1..3]
    );
    s.defer_alert_delivery("webhook", ids[2], 100, "HTTP 422")
        .unwrap();
    assert_eq!(s.cursor("webhook").unwrap(), ids[2], "moved past it");
    s.set_cursor("webhook", ids[3]).unwrap();
    s.defer_alert_delivery("webhook", ids[1], 50, "HTTP 413")
        .unwrap();
    assert_eq!(s.cursor("webhook").unwrap(), ids[3], "never moved back");
    assert!(s.due_alert_retries("webhook", 49, 10).unwrap().is_empty());
    let due = |now| -> Vec<(i64, u32)> {
        s.due_alert_retries("webhook", now, 10)
            .unwrap()
            .into_iter()
            .map(|(a, n)| (a.id, n))
            .collect()
    };
    assert_eq!(due(100), [(ids[1], 1), (ids[2], 1)]);
    s.defer_alert_delivery("webhook", ids[2], 200, "HTTP 422")
        .unwrap();
    assert_eq!(due(100), [(ids[1], 1)]);
    assert_eq!(due(200), [(ids[1], 1), (ids[2], 2)]);
    assert!(
        s.due_alert_retries("syslog", 200, 10).unwrap().is_empty(),
        "per consumer"
    );
    s.alert_retry_done("webhook", ids[1]).unwrap();
    assert_eq!(due(200), [(ids[2], 2)]);
}

#[test]
fn live_accounts_with_a_role_are_found_by_role_and_realm() {
    let s = SqliteStore::in_memory().unwrap();
    for r in ["contoso", "fabrikam"] {
        s.create_realm(&realm(r, &[&format!("{r}.test")])).unwrap();
    }
    let make = |id: &str, realm: &str, role: Role, disabled: bool| {
        s.create_account(&Account {
            id: AccountId::new(id).unwrap(),
            realm: RealmId::new(realm).unwrap(),
            email: format!("{id}@{realm}.test"),
            display_name: id.into(),
            password_hash: "x".into(),
            must_change_password: false,
            credential_epoch: 0,
            disabled,
            role,
            created_at: 1,
        })
        .unwrap();
    };
    make("b-admin", "contoso", Role::TenantAdmin, false);
    make("a-admin", "contoso", Role::TenantAdmin, false);
    make("gone", "contoso", Role::TenantAdmin, true);
    make("user", "contoso", Role::User, false);
    make("f-admin", "fabrikam", Role::TenantAdmin, false);
    make("boss", "fabrikam", Role::ProviderAdmin, false);
    let emails = |role, realm: Option<&str>, limit| -> Vec<String> {
        let realm = realm.map(|r| RealmId::new(r).unwrap());
        s.live_accounts_with_role(role, realm.as_ref(), limit)
            .unwrap()
            .into_iter()
            .map(|a| a.email)
            .collect()
    };
    assert_eq!(
        emails(Role::TenantAdmin, Some("contoso"), 10),
        ["a-admin@contoso.test", "b-admin@contoso.test"]
    );
    assert_eq!(
        emails(Role::TenantAdmin, Some("contoso"), 1),
        ["a-admin@contoso.test"]
    );
    assert_eq!(emails(Role::TenantAdmin, None, 10).len(), 3);
    assert_eq!(
        emails(Role::ProviderAdmin, None, 10),
        ["boss@fabrikam.test"]
    );
}

/// A detector's pass is written with its cursor move, and only if no other detector moved
/// the cursor since the pass read it: a batch is counted once, whoever runs it.
#[test]
fn a_batch_of_alerts_is_raised_once_with_its_cursor() {
    let s = SqliteStore::in_memory().unwrap();
    let batch = [
        new_alert(Some("contoso"), "ip", 10, &["a"]),
        new_alert(Some("contoso"), "ip2", 10, &[]),
    ];
    let raised = s
        .raise_alerts(&batch, 60, "detector", 0, 7)
        .unwrap()
        .unwrap();
    assert_eq!(
        raised.iter().map(|(_, new)| *new).collect::<Vec<_>>(),
        [true, true]
    );
    assert_eq!(s.cursor("detector").unwrap(), 7);
    // The same batch, by a second detector that read the cursor before the first moved it.
    assert_eq!(s.raise_alerts(&batch, 60, "detector", 0, 7).unwrap(), None);
    let a = s.get_alert(raised[0].0).unwrap().unwrap();
    assert_eq!(
        (a.count, s.cursor("detector").unwrap()),
        (1, 7),
        "nothing written"
    );
    let again = s
        .raise_alerts(&batch[..1], 60, "detector", 7, 9)
        .unwrap()
        .unwrap();
    assert_eq!(again, [(raised[0].0, false)]);
    assert_eq!(s.get_alert(raised[0].0).unwrap().unwrap().count, 2);
}
