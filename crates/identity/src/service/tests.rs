//! The authorization-code grant against a real (in-memory) store, key custody and signer: every
//! refusal is audited with its reason, including the one only the durable write can decide.

use std::sync::Arc;

use keys::{Custody, Kek, KeyPolicy};
use store::{AuditQuery, AuditRecord, SqliteStore};

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
    let alice = id
        .create_user(
            "alice@contoso.test",
            None,
            "a long enough password",
            Role::User,
            false,
            NOW,
        )
        .unwrap();
    let client = id
        .create_client(
            NewClient {
                realm: realm.clone(),
                client_id: ClientId::new("webapp").unwrap(),
                name: "webapp".into(),
                confidential: false,
                first_party: false,
                redirect_uris: vec![REDIRECT.into()],
                grant_types: vec![],
                id_token_alg: None,
            },
            NOW,
        )
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

const VERIFIER: &str = "a-pkce-verifier-of-at-least-forty-three-characters-0123456789";

impl Fx {
    /// A fresh code for alice, with an S256 challenge of [`VERIFIER`].
    fn code(&self) -> String {
        let session = self
            .id
            .new_session(&self.realm, &self.alice.id, NOW)
            .unwrap();
        let req = AuthRequest {
            realm: self.realm.clone(),
            client: self.client.clone(),
            redirect_uri: REDIRECT.into(),
            scope: "openid offline_access mail".into(),
            state: None,
            nonce: None,
            code_challenge: Some(B64.encode(sha256(VERIFIER.as_bytes()))),
            resource: vec![],
        };
        self.id.issue_code(&req, &session, NOW).unwrap()
    }

    fn exchange(
        &self,
        code: &str,
        redirect: &str,
        verifier: Option<&str>,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        let source = Source::default();
        self.id.grant_code(
            &self.realm,
            &self.client,
            code,
            Some(redirect),
            verifier,
            &source,
            now,
        )
    }

    fn refusals(&self) -> Vec<AuditRecord> {
        let query = AuditQuery {
            operation: Some("TokenRejected".into()),
            ..AuditQuery::default()
        };
        self.store.search_audit(&query).unwrap()
    }

    /// The reason of the one refusal recorded since `before` refusals, which must be an
    /// authorization code's, for alice when `for_alice`.
    fn refused_since(&self, before: usize, for_alice: bool) -> String {
        let all = self.refusals();
        assert_eq!(all.len(), before + 1, "one refusal recorded: {all:?}");
        let r = all.iter().max_by_key(|r| r.id).unwrap();
        assert_eq!(r.details["token_type"], "authorization_code");
        assert_eq!(r.client_id.as_deref(), Some("webapp"));
        let target = for_alice.then(|| self.alice.id.to_string());
        assert_eq!(r.target, target);
        r.details["reason"].as_str().unwrap().to_owned()
    }
}

#[test]
fn every_refused_code_is_audited_with_its_reason() {
    let f = fx();
    let expired = NOW + IdentityConfig::default().code_ttl;
    let cases: [(&str, Box<dyn Fn(&str) -> Result<Issue, OAuthError>>, bool); 5] = [
        (
            "CodeUnknown",
            Box::new(|_| f.exchange("no-such-code", REDIRECT, Some(VERIFIER), NOW)),
            false,
        ),
        (
            "CodeExpired",
            Box::new(|c| f.exchange(c, REDIRECT, Some(VERIFIER), expired)),
            true,
        ),
        (
            "RedirectUriMismatch",
            Box::new(|c| f.exchange(c, "https://evil.test/cb", Some(VERIFIER), NOW)),
            true,
        ),
        (
            "PkceFailed",
            Box::new(|c| f.exchange(c, REDIRECT, Some(&VERIFIER.replace('a', "b")), NOW)),
            true,
        ),
        (
            "PkceVerifierMissing",
            Box::new(|c| f.exchange(c, REDIRECT, None, NOW)),
            true,
        ),
    ];
    for (reason, exchange, for_alice) in cases {
        let before = f.refusals().len();
        let err = exchange(&f.code()).unwrap_err();
        assert_eq!(err.code, "invalid_grant", "{reason}");
        assert_eq!(f.refused_since(before, for_alice), reason);
    }
    // A good exchange records no refusal.
    let before = f.refusals().len();
    assert!(f.exchange(&f.code(), REDIRECT, Some(VERIFIER), NOW).is_ok());
    assert_eq!(f.refusals().len(), before);
}

/// A replay of the code revokes the family its first exchange issues into; when that lands
/// between the exchange's checks and its durable write, the write issues nothing, and the
/// refusal is audited like any other.
#[tokio::test]
async fn a_code_whose_family_is_revoked_before_the_write_issues_nothing() {
    let f = fx();
    let issue = f
        .exchange(&f.code(), REDIRECT, Some(VERIFIER), NOW)
        .unwrap();
    let family = issue.req.family.clone().unwrap();
    assert!(f.store.revoke_family(&family, NOW).unwrap());
    let before = f.refusals().len();

    let err = f.id.finish(issue).await.err().unwrap();
    assert_eq!(err.code, "invalid_grant");
    assert_eq!(f.refused_since(before, true), "TokenRevoked");
    let issued = AuditQuery {
        operation: Some("TokenIssued".into()),
        ..AuditQuery::default()
    };
    assert!(
        f.store.search_audit(&issued).unwrap().is_empty(),
        "nothing was issued"
    );
}
