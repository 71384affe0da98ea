//! The issuance ledger: rotation, families, revocation, pruning, the validator's view.

use super::*;

/// Whatever the grant read before (possibly from memory, before another process's change),
/// the rotation's write refuses a refresh token that is no longer live: its family revoked,
/// its session ended, its account disabled. Nothing is written.
pub fn a_rotation_refuses_a_token_no_longer_live(new: &NewStore) {
    let s = store_with_u1(new);
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
        issue_rotating(&*s, entry(new, TokenKind::Refresh, Some(family)), used, 11)
    };
    s.revoke_family("f1", 5).unwrap();
    assert!(matches!(
        rotate("n1", "r1", "f1"),
        Err(Error::FamilyRevoked(_))
    ));
    s.revoke_session(&SessionId::new("s2").unwrap(), 5).unwrap();
    // (A new row outside any family: only the rotated token's own state refuses it.)
    let refused = issue_rotating(&*s, entry("n2", TokenKind::Access, None), "r2", 11);
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

pub fn refresh_token_use_is_atomic(new: &NewStore) {
    let s = store_with_u1(new);
    s.record_tokens(&[
        entry("r1", TokenKind::Refresh, Some("f1")),
        entry("a1", TokenKind::Access, Some("f1")),
    ])
    .unwrap();
    let jti = Jti::new("r1").unwrap();
    let rotate = |new: &str, used: &str, at| {
        issue_rotating(&*s, entry(new, TokenKind::Refresh, Some("f1")), used, at)
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

pub fn nothing_is_issued_into_a_revoked_family(new: &NewStore) {
    let s = new();
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
pub fn a_scope_revocation_counts_only_what_it_newly_revoked(new: &NewStore) {
    let realm = RealmId::new("contoso").unwrap();
    let scopes = [
        RevokeScope::Account(AccountId::new("u1").unwrap()),
        RevokeScope::Realm(realm.clone()),
        RevokeScope::Client(realm, ClientId::new("app").unwrap()),
    ];
    for scope in scopes {
        let s = new();
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
        let revoked_at = |jti: &str| revoked_at(&*s, jti);
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
pub fn the_ledger_is_pruned_of_what_no_token_needs(new: &NewStore) {
    let s = store_with_u1(new);
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
    assert_eq!(revoked_at(&*s, live.jti.as_str()), Some(150));
    assert!(matches!(
        s.record_tokens(&[row(1_000, "e", 2_000, Some("f1"))]),
        Err(Error::FamilyRevoked(f)) if f == "f1"
    ));
}

pub fn duplicate_jti_is_refused(new: &NewStore) {
    let s = new();
    s.record_tokens(&[entry("x", TokenKind::Access, None)])
        .unwrap();
    assert!(matches!(
        s.record_tokens(&[entry("x", TokenKind::Access, None)]),
        Err(Error::Conflict(_))
    ));
}

/// Everything that can end a token already issued bumps the revocation generation, seen by the
/// next [`LedgerStore::generations`] read of the same store.
pub fn revocations_bump_the_revocation_generation(new: &NewStore) {
    let s = new();
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
}

pub fn ledger_view_joins_session_account_and_client(new: &NewStore) {
    let s = new();
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
