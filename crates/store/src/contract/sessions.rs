//! Sign-in sessions, authorization codes, credential epochs.

use super::*;

pub fn auth_codes_are_consumed_once(new: &NewStore) {
    let s = new();
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

/// A password reset ends everything of the account in its own transaction, and a sign-in
/// that checked the old password before it — whose session or tokens reach the store after —
/// gets nothing: the writes themselves compare the credential epoch.
pub fn a_sign_in_from_before_a_password_reset_gets_no_session_and_no_tokens(new: &NewStore) {
    let s = store_with_u1(new);
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

/// While an account is disabled nothing is created or issued for it, whatever a sign-in read
/// before; enabled again, it is as it was (cutting its sessions off for good is a revocation:
/// `revoke_scope`, or a new password).
pub fn a_disabled_account_gets_no_session_and_no_tokens(new: &NewStore) {
    let s = store_with_u1(new);
    let u1 = AccountId::new("u1").unwrap();
    s.create_session(&session_u1("s1", 0)).unwrap();
    s.set_account_disabled(&u1, true).unwrap();
    let refused = s.create_session(&session_u1("s2", 0));
    assert!(
        matches!(refused, Err(Error::CredentialsChanged(_))),
        "{refused:?}"
    );
    let refused = s.record_tokens(&[entry_under("t1", "s1")]);
    assert!(
        matches!(refused, Err(Error::CredentialsChanged(_))),
        "{refused:?}"
    );
    assert!(s.get_token(&Jti::new("t1").unwrap()).unwrap().is_none());
    s.set_account_disabled(&u1, false).unwrap();
    assert_eq!(s.get_account(&u1).unwrap().unwrap().credential_epoch, 0);
    s.record_tokens(&[entry_under("t2", "s1")]).unwrap();
}
