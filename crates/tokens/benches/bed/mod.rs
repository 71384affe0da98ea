//! The test bed the validation benchmarks share: a file-backed store with one realm, client
//! and account, key custody, a minter, and per algorithm a freshly minted access token.

use std::path::PathBuf;
use std::sync::Arc;

use keys::{Algorithm, Custody, Kek, KeyPolicy, KeyPurpose, VerifyingKey};
use store::{
    Account, AccountId, Client, ClientId, Realm, RealmId, RealmKind, Role, SqliteStore, Store,
};
use tokens::{Expectation, MintRequest, Minter, issuer_for};

// The allocator `keypost serve` runs with (crates/keypost/src/main.rs), so what a benchmark
// allocates costs what it costs in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub(crate) const URL: &str = "https://keypost.test";

fn now() -> i64 {
    store::clock::now()
}

/// Rounds of a paired benchmark: `ROUNDS` from the environment, or `default`.
pub(crate) fn rounds(default: usize) -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

pub(crate) struct Bed {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) custody: Custody,
    pub(crate) minter: Minter,
    pub(crate) realm: RealmId,
    pub(crate) user: AccountId,
    pub(crate) issuer: String,
    pub(crate) aud: String,
    pub(crate) t: i64,
    dir: PathBuf,
}

/// One minted token and what its raw verification needs.
pub(crate) struct Case {
    pub(crate) token: String,
    pub(crate) jti: store::Jti,
    pub(crate) key: Arc<VerifyingKey>,
    pub(crate) input: String,
    pub(crate) sig: Vec<u8>,
}

impl Bed {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("keypost-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A file-backed database, as in production (WAL, synchronous=FULL).
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("bench.db")).unwrap());
        let t = now();
        let realm = RealmId::new("contoso").unwrap();
        store
            .create_realm(&Realm {
                id: realm.clone(),
                kind: RealmKind::Tenant,
                display_name: "c".into(),
                domains: vec![],
                access_token_alg: "EdDSA".into(),
                created_at: t,
            })
            .unwrap();
        store
            .create_client(&Client {
                realm: realm.clone(),
                client_id: ClientId::new("app").unwrap(),
                name: "app".into(),
                secret_hash: None,
                redirect_uris: vec![],
                grant_types: vec![],
                first_party: false,
                id_token_alg: None,
                created_at: t,
                scopes: None,
            })
            .unwrap();
        let user = AccountId::new("u1").unwrap();
        store
            .create_account(&Account {
                id: user.clone(),
                realm: realm.clone(),
                email: "a@c.test".into(),
                display_name: "a".into(),
                password_hash: "x".into(),
                must_change_password: false,
                credential_epoch: 0,
                disabled: false,
                role: Role::User,
                created_at: t,
            })
            .unwrap();
        let custody = Custody::new(
            store.clone(),
            Arc::new(Kek::generate().unwrap()),
            KeyPolicy::default(),
        );
        let minter = Minter::new(Arc::new(custody.signer()), store.clone(), URL);
        let issuer = issuer_for(URL, &realm);
        let aud = format!("{URL}/mail");

        Bed {
            store,
            custody,
            minter,
            realm,
            user,
            issuer,
            aud,
            t,
            dir,
        }
    }

    /// The bed's temporary directory (removed when the bed is dropped).
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// What a mail resource of the realm expects.
    pub(crate) fn expect(&self) -> Expectation<'_> {
        Expectation {
            realm: &self.realm,
            issuer: &self.issuer,
            audience: &self.aud,
            max_lifetime: 600,
            leeway: 30,
            required_scope: Some("mail"),
        }
    }

    /// What a `client_credentials`-like grant mints: one EdDSA access token.
    pub(crate) fn request(&self) -> MintRequest {
        MintRequest {
            realm: self.realm.clone(),
            access_alg: Algorithm::EdDSA,
            subject: self.user.to_string(),
            client_id: ClientId::new("app").unwrap(),
            scope: "mail".into(),
            audience: vec![self.aud.clone()],
            session: None,
            access_ttl: 600,
            id_token: None,
            refresh: None,
            family: None,
            rotates: None,
        }
    }

    /// Makes `alg` the realm's access-token algorithm and mints a token with it.
    pub(crate) fn mint(&self, alg: Algorithm) -> Case {
        let (store, custody, minter, realm, user, aud, t) = (
            &self.store,
            &self.custody,
            &self.minter,
            &self.realm,
            &self.user,
            &self.aud,
            self.t,
        );
        store.set_access_token_alg(realm, alg.as_str()).unwrap();
        custody
            .generate(realm, KeyPurpose::AccessToken, alg, t, t)
            .unwrap();
        let issued = minter
            .mint(
                &MintRequest {
                    realm: realm.clone(),
                    access_alg: alg,
                    subject: user.to_string(),
                    client_id: ClientId::new("app").unwrap(),
                    scope: "mail".into(),
                    audience: vec![aud.clone()],
                    session: None,
                    access_ttl: 600,
                    id_token: None,
                    refresh: None,
                    family: None,
                    rotates: None,
                },
                t,
            )
            .unwrap();
        let token = issued.access_token;
        let keys = custody.verifying_keys().unwrap();
        let key = keys.in_realm(realm, issued.kid.as_str()).unwrap().clone();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        let input = input.to_owned();
        Case {
            token,
            jti: issued.access_jti,
            key,
            input,
            sig,
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What `keypost signer` answers with: `custody`'s keys, every payload held to the realm's
/// policy (its cost is part of what the signer-process benches measure).
pub(crate) fn signer_service(custody: &Custody) -> keys::SignerService {
    keys::SignerService {
        signer: Arc::new(custody.signer()),
        check: tokens::payload_check(
            URL,
            tokens::SigningPolicy {
                access_ttl: 600,
                id_ttl: 600,
                leeway: 30,
            },
        ),
        on_refused: Arc::new(|_: &keys::Refusal| {}),
    }
}
