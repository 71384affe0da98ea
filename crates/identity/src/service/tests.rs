//! The authorization-code grant against a real (in-memory) store, key custody and signer: every
//! refusal is audited with its reason, including the one only the durable write can decide.

use std::sync::Arc;

use keys::{Custody, Kek, KeyPolicy};
use store::{AuditQuery, AuditRecord, SqliteStore};

use super::directory::check_redirect_uri;
use super::*;

const NOW: UnixTime = 1_800_000_000;
const REDIRECT: &str = "https://app.contoso.test/cb";

struct Fx {
    id: Arc<Identity>,
    store: Arc<dyn Store>,
    realm: RealmId,
    client: Client,
    alice: Account,
}

fn fx() -> Fx {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let custody = Arc::new(Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    ));
    let signer = Arc::new(custody.signer());
    let id = Arc::new(Identity::new(
        store.clone(),
        custody,
        signer,
        IdentityConfig::default(),
    ));
    let realm = id
        .create_tenant(
            "contoso",
            None,
            &["contoso.test".into()],
            Algorithm::EdDSA,
            NOW,
        )
        .unwrap()
        .id;
    let alice = user(&id, "alice@contoso.test");
    let client = id
        .create_client(public_client(&realm, "webapp"), NOW)
        .unwrap()
        .client;
    Fx {
        id,
        store,
        realm,
        client,
        alice,
    }
}

/// A user of the tenant with the password "a long enough password".
fn user(id: &Identity, email: &str) -> Account {
    let password = "a long enough password";
    id.create_user(email, None, password, Role::User, false, NOW)
        .unwrap()
}

/// A public client of `realm` that may use the code grant, redirecting to [`REDIRECT`].
fn public_client(realm: &RealmId, id: &str) -> NewClient {
    NewClient {
        realm: realm.clone(),
        client_id: ClientId::new(id).unwrap(),
        name: id.into(),
        confidential: false,
        first_party: false,
        redirect_uris: vec![REDIRECT.into()],
        grant_types: vec![],
        id_token_alg: None,
        scopes: Some(vec!["openid offline_access mail".into()]),
    }
}

const VERIFIER: &str = "a-pkce-verifier-of-at-least-forty-three-characters-0123456789";

impl Fx {
    /// A fresh code for alice in a session of its own, with an S256 challenge of
    /// [`VERIFIER`] unless `pkce` is false.
    fn code_with(&self, pkce: bool) -> (String, SessionId) {
        let (session, _cookie) = self.id.new_session(&self.realm, &self.alice, NOW).unwrap();
        let req = AuthRequest {
            realm: self.realm.clone(),
            client: self.client.clone(),
            redirect_uri: REDIRECT.into(),
            scope: "openid offline_access mail".into(),
            state: None,
            nonce: None,
            code_challenge: pkce.then(|| B64.encode(sha256(VERIFIER.as_bytes()))),
            resource: vec![],
        };
        (self.id.issue_code(&req, &session, NOW).unwrap(), session.id)
    }

    fn code(&self) -> String {
        self.code_with(true).0
    }

    /// Exchanges `code` at `realm`'s token endpoint as `client`.
    fn exchange_at(
        &self,
        realm: &RealmId,
        client: &Client,
        code: &str,
        verifier: Option<&str>,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        let source = Source::default();
        let redirect = Some(REDIRECT);
        self.id
            .grant_code(realm, client, code, redirect, verifier, &source, now)
    }

    fn exchange(&self, code: &str, verifier: Option<&str>) -> Result<Issue, OAuthError> {
        self.exchange_at(&self.realm, &self.client, code, verifier, NOW)
    }

    fn refusals(&self) -> Vec<AuditRecord> {
        let query = AuditQuery {
            operation: Some("TokenRejected".into()),
            ..AuditQuery::default()
        };
        self.store.search_audit(&query).unwrap()
    }

    /// The refusals recorded since there were `before`: each an authorization code's.
    fn refused_since(&self, before: usize) -> Vec<AuditRecord> {
        let all = self.refusals();
        let new = all[before..].to_vec();
        for r in &new {
            assert_eq!(r.details["token_type"], "authorization_code", "{r:?}");
        }
        new
    }

    /// The one refusal recorded since `before`: alice's code refused at contoso's endpoint;
    /// the presenting client and the reason.
    fn refused(&self, before: usize) -> (String, String) {
        let new = self.refused_since(before);
        let [r] = new.as_slice() else {
            panic!("one refusal expected: {new:?}")
        };
        assert_eq!(r.realm.as_ref(), Some(&self.realm));
        assert_eq!(r.target.as_deref(), Some(self.alice.id.as_str()));
        let client = r.client_id.clone().unwrap();
        (client, r.details["reason"].as_str().unwrap().to_owned())
    }

    /// [`Self::refused`] where webapp presented the code: the reason.
    fn refused_reason(&self, before: usize) -> String {
        let (client, reason) = self.refused(before);
        assert_eq!(client, "webapp");
        reason
    }

    /// Another public client, `other`, of `realm`.
    fn other_client(&self, realm: &RealmId) -> Client {
        let new = public_client(realm, "other");
        self.id.create_client(new, NOW).unwrap().client
    }
}

/// Each refusal after the code is found names alice (the code's account) and its reason.
#[test]
fn every_refused_code_is_audited_with_its_reason() {
    let f = fx();
    let other = f.other_client(&f.realm);
    let expired = NOW + IdentityConfig::default().code_ttl;
    let wrong = VERIFIER.replace('a', "b");
    type Exchange<'a> = Box<dyn Fn(&str) -> Result<Issue, OAuthError> + 'a>;
    let cases: Vec<(&str, Exchange<'_>)> = vec![
        (
            "CodeExpired",
            Box::new(|c| f.exchange_at(&f.realm, &f.client, c, Some(VERIFIER), expired)),
        ),
        (
            "CodeClientMismatch",
            Box::new(|c| f.exchange_at(&f.realm, &other, c, Some(VERIFIER), NOW)),
        ),
        (
            "RedirectUriMismatch",
            Box::new(|c| {
                let source = Source::default();
                let redirect = Some("https://evil.test/cb");
                f.id.grant_code(
                    &f.realm,
                    &f.client,
                    c,
                    redirect,
                    Some(VERIFIER),
                    &source,
                    NOW,
                )
            }),
        ),
        ("PkceFailed", Box::new(|c| f.exchange(c, Some(&wrong)))),
        ("PkceVerifierMissing", Box::new(|c| f.exchange(c, None))),
    ];
    for (reason, exchange) in cases {
        let before = f.refusals().len();
        let err = exchange(&f.code()).unwrap_err();
        assert_eq!(err.code, "invalid_grant", "{reason}");
        let presenter = if reason == "CodeClientMismatch" {
            "other"
        } else {
            "webapp"
        };
        assert_eq!(f.refused(before), (presenter.to_owned(), reason.to_owned()));
    }
    // A verifier for a code that had no challenge: a downgrade.
    let before = f.refusals().len();
    assert!(f.exchange(&f.code_with(false).0, Some(VERIFIER)).is_err());
    assert_eq!(f.refused_reason(before), "PkceDowngrade");
    // The session signed out, or the account disabled, after the code was issued.
    let (code, session) = f.code_with(true);
    f.store.revoke_session(&session, NOW).unwrap();
    let before = f.refusals().len();
    assert!(f.exchange(&code, Some(VERIFIER)).is_err());
    assert_eq!(f.refused_reason(before), "SessionRevoked");
    let code = f.code();
    f.id.disable_user("alice@contoso.test", NOW).unwrap();
    let before = f.refusals().len();
    assert!(f.exchange(&code, Some(VERIFIER)).is_err());
    assert_eq!(f.refused_reason(before), "AccountDisabled");
    // A made-up code names nobody.
    let before = f.refusals().len();
    assert!(f.exchange("no-such-code", Some(VERIFIER)).is_err());
    let [r] = f.refused_since(before).try_into().unwrap();
    assert_eq!(
        (r.details["reason"].as_str(), r.target),
        (Some("CodeUnknown"), None)
    );
}

/// A code presented at another tenant's endpoint is, there, an unknown code naming nobody; the
/// tenant whose user it was is told. A replay there still revokes what the code issued.
#[test]
fn another_realms_code_names_nobody_there() {
    let f = fx();
    let fabrikam =
        f.id.create_tenant(
            "fabrikam",
            None,
            &["fabrikam.test".into()],
            Algorithm::EdDSA,
            NOW,
        )
        .unwrap()
        .id;
    let theirs = f.other_client(&fabrikam);
    let code = f.code();
    let before = f.refusals().len();
    let err = f
        .exchange_at(&fabrikam, &theirs, &code, Some(VERIFIER), NOW)
        .unwrap_err();
    assert_eq!(err.code, "invalid_grant");
    let new = f.refused_since(before);
    let at = |realm: &RealmId| {
        new.iter()
            .find(|r| r.realm.as_ref() == Some(realm))
            .unwrap()
    };
    let there = at(&fabrikam);
    assert_eq!(
        (there.details["reason"].as_str(), &there.target),
        (Some("CodeUnknown"), &None)
    );
    let home = at(&f.realm);
    assert_eq!(home.details["reason"], "CodeRealmMismatch");
    assert_eq!(home.target.as_deref(), Some(f.alice.id.as_str()));
    assert_eq!(new.len(), 2);
    let replays = || {
        let query = AuditQuery {
            operation: Some("AuthCodeReused".into()),
            ..AuditQuery::default()
        };
        f.store.search_audit(&query).unwrap()
    };
    assert!(replays().is_empty());
    // The code is not spent by whoever presented a copy elsewhere: its own client's exchange
    // still works.
    assert!(f.exchange(&code, Some(VERIFIER)).is_ok());
    assert!(replays().is_empty());

    // A code already exchanged and replayed at another tenant's endpoint revokes what it
    // issued all the same, recorded at home.
    let code = f.code();
    let issue = f.exchange(&code, Some(VERIFIER)).unwrap();
    let family = issue.req.family.clone().unwrap();
    let before = f.refusals().len();
    assert!(
        f.exchange_at(&fabrikam, &theirs, &code, Some(VERIFIER), NOW)
            .is_err()
    );
    let [there] = f.refused_since(before).try_into().unwrap();
    assert_eq!(there.realm.as_ref(), Some(&fabrikam));
    assert_eq!(
        (there.details["reason"].as_str(), there.target),
        (Some("CodeUnknown"), None)
    );
    assert!(
        !f.store.revoke_family(&family, NOW).unwrap(),
        "revoked already"
    );
    let last = replays().pop().unwrap();
    assert_eq!(last.realm.as_ref(), Some(&f.realm));
    assert_eq!(last.client_id.as_deref(), Some("webapp"));
    assert_eq!(last.details["presented_elsewhere"], true);
}

/// A replay of the code revokes the family its first exchange issues into; when that lands
/// between the exchange's checks and its durable write, the write issues nothing, and the
/// refusal is audited like any other.
#[tokio::test]
async fn a_code_whose_family_is_revoked_before_the_write_issues_nothing() {
    let f = fx();
    let issue = f.exchange(&f.code(), Some(VERIFIER)).unwrap();
    let family = issue.req.family.clone().unwrap();
    assert!(f.store.revoke_family(&family, NOW).unwrap());
    let before = f.refusals().len();

    let err = f.id.finish(issue).await.err().unwrap();
    assert_eq!(err.code, "invalid_grant");
    assert_eq!(f.refused_reason(before), "TokenRevoked");
    let issued = AuditQuery {
        operation: Some("TokenIssued".into()),
        ..AuditQuery::default()
    };
    assert!(
        f.store.search_audit(&issued).unwrap().is_empty(),
        "nothing was issued"
    );
}

/// The session id is public — every token minted under the session carries it as `sid` — so
/// it must not work as the browser's cookie; only the cookie's secret, whose SHA-256 the id
/// is, finds the session, for single sign-on and for signing out.
#[test]
fn a_sessions_id_is_not_its_cookie() {
    let f = fx();
    let (session, cookie) = f.id.new_session(&f.realm, &f.alice, NOW).unwrap();
    assert_ne!(cookie.value(), session.id.as_str());
    assert_eq!(
        session.id.as_str(),
        B64.encode(sha256(cookie.value().as_bytes()))
    );
    let found = f.id.live_session(&f.realm, cookie.value(), NOW);
    assert_eq!(found.map(|(s, _)| s.id), Some(session.id.clone()));
    assert!(
        f.id.live_session(&f.realm, session.id.as_str(), NOW)
            .is_none(),
        "the id (a token's sid) replayed as the cookie signs nobody in"
    );
    let source = Source::default();
    let out =
        f.id.logout(
            &f.realm,
            Some(session.id.as_str()),
            None,
            true,
            &source,
            NOW,
        )
        .unwrap();
    assert_eq!(out.outcome, LogoutOutcome::NothingToEnd);
    assert!(
        f.id.live_session(&f.realm, cookie.value(), NOW).is_some(),
        "nor signs anyone out"
    );
    let out =
        f.id.logout(&f.realm, Some(cookie.value()), None, true, &source, NOW)
            .unwrap();
    assert_eq!(out.outcome, LogoutOutcome::Ended);
    assert!(f.id.live_session(&f.realm, cookie.value(), NOW).is_none());
}

/// Plain http is only for this machine, by exact host: a URI that merely starts like a
/// loopback one names some other host.
#[test]
fn only_loopback_hosts_may_take_plain_http_redirects() {
    for ok in [
        "https://app.contoso.test/cb",
        "http://127.0.0.1/cb",
        "http://127.0.0.1:8123/cb?x=1",
        "http://localhost:9/cb",
        "http://localhost",
        "http://[::1]:8080/cb",
        "http://[::1]/cb",
    ] {
        assert!(check_redirect_uri(ok).is_ok(), "{ok}");
    }
    for bad in [
        "http://localhost.evil.example/cb",
        "http://127.0.0.1.evil.example/cb",
        "http://localhost@evil.example/cb",
        "http://127.0.0.1:80@evil.example/cb",
        "http://[::1].evil.example/cb",
        "http://localhost:/cb",
        "http://localhost:8o/cb",
        "http://app.contoso.test/cb",
        "https://app.contoso.test/cb#frag",
    ] {
        assert!(check_redirect_uri(bad).is_err(), "{bad}");
    }
}

/// Sign-ins of one account sent at once, `password` each, from addresses of their own: how
/// many succeeded, and the fixture.
fn sign_in_at_once(f: &Fx, password: &'static str, n: usize) -> usize {
    let start = Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (id, realm, start) = (f.id.clone(), f.realm.clone(), start.clone());
            std::thread::spawn(move || {
                // Each from its own address of one /64: one source, whose limit applies.
                let source = Source {
                    ip: Some(format!("2001:db8:7:7::{i}")),
                    ..Source::default()
                };
                let client = ClientId::new("webapp").unwrap();
                start.wait();
                id.sign_in(
                    &realm,
                    "alice@contoso.test",
                    password,
                    &client,
                    &source,
                    NOW,
                )
                .is_ok()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| usize::from(t.join().unwrap()))
        .sum()
}

/// The right password sent many times at once (a client retrying, tabs restoring) is let
/// through in turn, not counted as guessing.
#[test]
fn the_right_password_sent_at_once_is_delayed_not_refused() {
    let f = fx();
    let n = 3 * f.id.config().max_failures_per_account as usize;
    assert_eq!(sign_in_at_once(&f, "a long enough password", n), n);
}

/// Guesses sent at once cannot all pass the throttle on a count read before any of them was
/// recorded as a failure: no more get their password checked than one after another would.
#[test]
fn guesses_sent_at_once_are_throttled_like_guesses_in_turn() {
    let f = fx();
    let max = f.id.config().max_failures_per_account;
    let guesses = 12;
    assert_eq!(sign_in_at_once(&f, "not alice's password", guesses), 0);
    let count = |op: &str| {
        let query = AuditQuery {
            operation: Some(op.into()),
            ..AuditQuery::default()
        };
        f.store.search_audit(&query).unwrap().len() as u64
    };
    assert!(
        count("SignInFailed") <= max,
        "{} checked",
        count("SignInFailed")
    );
    assert_eq!(
        count("SignInFailed") + count("SignInThrottled"),
        guesses as u64
    );
}

/// A client that is not first-party gets who the user is (and refresh tokens) unless it was
/// registered for more: it cannot ask its way into a user's mail. First-party clients, and
/// clients registered with the scope, can.
#[test]
fn a_client_gets_only_the_scopes_it_was_registered_for() {
    let f = fx();
    let register = |id: &str, scopes: Option<Vec<String>>, first_party: bool| {
        let new = NewClient {
            scopes,
            first_party,
            ..public_client(&f.realm, id)
        };
        f.id.create_client(new, NOW).unwrap().client
    };
    let plain = register("signin-app", None, false);
    assert_eq!(
        plain.scopes.as_deref(),
        Some(&THIRD_PARTY_SCOPES.map(String::from)[..])
    );
    assert_eq!(
        register("own-app", None, true).scopes,
        None,
        "first-party: any"
    );
    register(
        "mail-app",
        Some(vec!["openid".into(), "email mail".into()]),
        false,
    );

    let ask = |client: &str, scope: &str| {
        let params = AuthorizeParams {
            client_id: Some(client.into()),
            redirect_uri: Some(REDIRECT.into()),
            response_type: Some("code".into()),
            scope: Some(scope.into()),
            code_challenge: Some(B64.encode(sha256(VERIFIER.as_bytes()))),
            code_challenge_method: Some("S256".into()),
            ..Default::default()
        };
        match f.id.check_authorize(&f.realm, &params) {
            Ok(req) => Ok(req.scope),
            Err(AuthorizeError::Redirect { error, .. }) => Err(error),
            Err(AuthorizeError::Page(p)) => panic!("{p}"),
        }
    };
    assert_eq!(
        ask("signin-app", "openid email offline_access"),
        Ok("openid email offline_access".into())
    );
    assert_eq!(ask("signin-app", "openid mail"), Err("invalid_scope"));
    assert_eq!(ask("signin-app", "openid audit"), Err("invalid_scope"));
    assert_eq!(ask("mail-app", "openid mail"), Ok("openid mail".into()));
    assert_eq!(
        ask("mail-app", "openid offline_access"),
        Err("invalid_scope")
    );
    assert_eq!(
        ask("own-app", "openid mail audit"),
        Ok("openid mail audit".into())
    );

    // Asking for nothing gets the default, as far as the client is registered for it.
    assert_eq!(ask("signin-app", ""), Ok("openid profile email".into()));
    assert_eq!(ask("own-app", ""), Ok("openid profile email mail".into()));
    // A backend acting as itself must be registered for what it may read.
    let backend = |scopes| NewClient {
        confidential: true,
        redirect_uris: vec![],
        grant_types: vec!["client_credentials".into()],
        scopes,
        ..public_client(&f.realm, "backend")
    };
    assert!(f.id.create_client(backend(None), NOW).is_err());
    assert!(
        f.id.create_client(backend(Some(vec!["mail".into()])), NOW)
            .is_ok()
    );

    let unknown = NewClient {
        scopes: Some(vec!["openid everything".into()]),
        ..public_client(&f.realm, "greedy")
    };
    let err = f.id.create_client(unknown, NOW).unwrap_err();
    assert!(err.to_string().contains("everything"), "{err}");
}

/// A confirmed sign-out ends the browser's session and, when the ID token hint names another
/// session of the same user (one the browser signed in to before a fresh sign-in replaced its
/// cookie), that one too — never another user's.
#[tokio::test]
async fn signing_out_ends_the_browsers_session_and_the_hinted_one_of_the_same_user() {
    let f = fx();
    let (code, first) = f.code_with(true);
    let issue = f.exchange(&code, Some(VERIFIER)).unwrap();
    let tokens = f.id.finish(issue).await.unwrap();
    let id_token = tokens.id_token.unwrap();
    let (second, cookie) = f.id.new_session(&f.realm, &f.alice, NOW).unwrap();
    let bob = user(&f.id, "bob@contoso.test");
    let (bobs, bobs_cookie) = f.id.new_session(&f.realm, &bob, NOW).unwrap();
    let source = Source::default();

    // Bob's browser presenting alice's ID token ends bob's session only.
    let hint = Some(id_token.as_str());
    let out =
        f.id.logout(
            &f.realm,
            Some(bobs_cookie.value()),
            hint,
            true,
            &source,
            NOW,
        )
        .unwrap();
    assert_eq!(out.outcome, LogoutOutcome::Ended);
    let revoked = |id: &SessionId| {
        f.store
            .get_session(id)
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    };
    assert!(revoked(&bobs.id) && !revoked(&first) && !revoked(&second.id));

    let out =
        f.id.logout(&f.realm, Some(cookie.value()), hint, true, &source, NOW)
            .unwrap();
    assert_eq!(out.outcome, LogoutOutcome::Ended);
    assert!(revoked(&first) && revoked(&second.id));
}

/// A sign-in that checked the old password just before a reset cannot start a session after
/// it: the session carries the credential epoch its sign-in saw, and the store compares it.
#[test]
fn a_sign_in_racing_a_password_reset_gets_no_session() {
    let f = fx();
    let source = Source::default();
    let checked =
        f.id.sign_in(
            &f.realm,
            &f.alice.email,
            "a long enough password",
            &f.client.client_id,
            &source,
            NOW,
        )
        .unwrap();
    f.id.set_password(&f.alice.email, "another long password", false, NOW)
        .unwrap();
    let late = f.id.new_session(&f.realm, &checked, NOW);
    assert!(
        matches!(late, Err(Error::Store(store::Error::CredentialsChanged(_)))),
        "{late:?}"
    );
    let refusal = OAuthError::from(late.unwrap_err());
    assert_eq!(refusal.code, "invalid_grant");
    // The new password's sign-in gets one.
    let fresh = f.store.get_account(&f.alice.id).unwrap().unwrap();
    f.id.new_session(&f.realm, &fresh, NOW).unwrap();
}

/// Whoever holds a copy of a code cannot burn it for its client: a failed client or PKCE
/// check leaves it good for the exchange it was issued for.
#[test]
fn a_failed_check_does_not_use_the_code_up() {
    let f = fx();
    let code = f.code();
    let other = f.other_client(&f.realm);
    assert!(
        f.exchange_at(&f.realm, &other, &code, Some(VERIFIER), NOW)
            .is_err()
    );
    let wrong = "a-wrong-pkce-verifier-of-at-least-forty-three-characters-000000";
    assert!(f.exchange(&code, Some(wrong)).is_err());
    assert!(f.exchange(&code, None).is_err());
    assert!(f.exchange(&code, Some(VERIFIER)).is_ok());
    // Once exchanged, a second exchange is a replay.
    assert!(f.exchange(&code, Some(VERIFIER)).is_err());
}

/// The family a code starts is recorded when the code is used up, in the same write: a
/// replay right after (before any token is minted) revokes it, and nothing is then issued
/// into it.
#[tokio::test]
async fn a_replay_right_after_the_exchange_revokes_its_family() {
    let f = fx();
    let code = f.code();
    let issue = f.exchange(&code, Some(VERIFIER)).unwrap();
    let family = issue.req.family.clone().unwrap();
    assert!(f.exchange(&code, Some(VERIFIER)).is_err());
    let revoked: bool = f
        .store
        .revoke_family(&family, NOW)
        .map(|newly| !newly)
        .unwrap();
    assert!(revoked, "the replay had revoked the family already");
    assert!(
        f.id.finish(issue).await.is_err(),
        "nothing is issued into a revoked family"
    );
}

/// An account's failure limit applies per source network (an IPv6 /64 is one source), with a
/// delay that doubles past it: whoever guesses cannot lock the owner out, and cannot escape the
/// limit by walking the addresses of their /64.
#[test]
fn failures_from_one_network_slow_it_down_and_never_lock_the_owner_out() {
    let f = fx();
    let from = |ip: &str| Source {
        ip: Some(ip.to_owned()),
        user_agent: None,
    };
    let try_at = |ip: &str, pw: &str, now: UnixTime| {
        f.id.sign_in(
            &f.realm,
            &f.alice.email,
            pw,
            &f.client.client_id,
            &from(ip),
            now,
        )
    };
    let limit = IdentityConfig::default().max_failures_per_account;
    for i in 0..limit {
        let e = try_at(&format!("2001:db8:1:2::{i}"), "wrong", NOW).unwrap_err();
        assert_eq!(e.description, "invalid username or password");
    }
    // Another address of the same /64: the same source, over its limit now.
    let e = try_at("2001:db8:1:2:ffff::1", "a long enough password", NOW).unwrap_err();
    assert!(
        e.description.contains("try again in 1 s"),
        "{}",
        e.description
    );
    // The owner, elsewhere, is not locked out.
    try_at("2001:db8:9::1", "a long enough password", NOW).unwrap();
    try_at("192.0.2.1", "a long enough password", NOW).unwrap();
    // After the delay, one more guess from the guessing network; the next waits twice as long.
    assert_eq!(
        try_at("2001:db8:1:2::1", "wrong", NOW + 1)
            .unwrap_err()
            .description,
        "invalid username or password"
    );
    let e = try_at("2001:db8:1:2::1", "wrong", NOW + 1).unwrap_err();
    assert!(
        e.description.contains("try again in 2 s"),
        "{}",
        e.description
    );
    // Throttled attempts are recorded with the network they count for.
    let throttled = f
        .store
        .search_audit(&AuditQuery {
            operation: Some("SignInThrottled".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(
        throttled
            .iter()
            .all(|r| r.details["source_network"] == "2001:db8:1:2::/64")
    );
}

/// Guesses spread over many networks meet the account's own limit, but only networks the
/// account never signed in from are slowed by it.
#[test]
fn guesses_from_many_networks_slow_down_only_unfamiliar_ones() {
    let f = fx();
    let home = Source {
        ip: Some("198.51.100.7".into()),
        user_agent: None,
    };
    let try_from = |source: &Source, pw: &str| {
        f.id.sign_in(
            &f.realm,
            &f.alice.email,
            pw,
            &f.client.client_id,
            source,
            NOW,
        )
    };
    try_from(&home, "a long enough password").unwrap();
    let wide = IdentityConfig::default().max_failures_per_account * ACCOUNT_WIDE_FACTOR;
    for i in 0..wide {
        let guesser = Source {
            ip: Some(format!("203.0.113.{i}")),
            user_agent: None,
        };
        assert!(try_from(&guesser, "wrong").is_err());
    }
    let fresh = Source {
        ip: Some("192.0.2.200".into()),
        user_agent: None,
    };
    let e = try_from(&fresh, "a long enough password").unwrap_err();
    assert!(e.description.contains("try again in"), "{}", e.description);
    try_from(&home, "a long enough password").unwrap();
}
