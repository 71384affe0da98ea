//! Custody with keys held in SoftHSM2 (Debian package `softhsm2`): every algorithm is made
//! inside the token and signs there, the signer keeps its realm policy for HSM keys, nothing is
//! sealed in the key table, and revoking a key destroys it in the token.
//!
//! SoftHSM2 finds its token directory through `SOFTHSM2_CONF`, read when the library is
//! loaded. Each test runs itself again as a child process with its own configuration, so tests
//! never share a token or touch the system's. Without SoftHSM2 installed the tests are skipped
//! with a message, unless `KEYPOST_REQUIRE_SOFTHSM` is set (as `scripts/test` does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use keys::{Algorithm, Custody, Hsm, HsmConfig, HsmRealms, Kek, KeyPolicy, KeyPurpose, RealmId};
use store::{KeyOrigin, Realm, RealmKind, SqliteStore, Store};

const T0: i64 = 1_700_000_000;
const PIN: &str = "4321";
const CHILD: &str = "KEYPOST_SOFTHSM_CHILD";

fn module() -> Option<PathBuf> {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// In the parent: makes a token in a fresh directory and runs `name` again as a child that
/// sees it. Returns `None` there. In the child: returns the module path.
fn in_own_token(name: &str) -> Option<PathBuf> {
    if std::env::var_os(CHILD).is_some() {
        return module();
    }
    let Some(module) = module() else {
        assert!(
            std::env::var_os("KEYPOST_REQUIRE_SOFTHSM").is_none(),
            "SoftHSM2 is required (KEYPOST_REQUIRE_SOFTHSM) but not installed"
        );
        eprintln!("skipping {name}: SoftHSM2 is not installed (apt-get install softhsm2)");
        return None;
    };
    let _ = module;
    let dir = tempdir(name);
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .unwrap();
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "keypost",
            "--so-pin",
            "9999",
            "--pin",
            PIN,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util runs");
    assert!(init.status.success(), "init token: {init:?}");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && out.contains("1 passed"),
        "child run of {name} failed:\n{out}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    None
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keypost-softhsm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn realm(s: &str) -> RealmId {
    RealmId::new(s).unwrap()
}

/// A store with `consumers` (software keys) and `contoso` (HSM keys), and custody over both.
fn setup(module: &Path) -> (Arc<dyn Store>, Custody, Arc<Hsm>) {
    setup_at(module, None)
}

/// [`setup`], with the store in the file `db` if given (in memory otherwise).
fn setup_at(module: &Path, db: Option<&Path>) -> (Arc<dyn Store>, Custody, Arc<Hsm>) {
    let store: Arc<dyn Store> = Arc::new(match db {
        Some(path) => SqliteStore::open(path).unwrap(),
        None => SqliteStore::in_memory().unwrap(),
    });
    for (id, kind) in [
        ("consumers", RealmKind::Consumer),
        ("contoso", RealmKind::Tenant),
    ] {
        store
            .create_realm(&Realm {
                id: realm(id),
                kind,
                display_name: id.into(),
                domains: vec![],
                access_token_alg: "EdDSA".into(),
                created_at: T0,
            })
            .unwrap();
    }
    let hsm = Arc::new(
        Hsm::open(&HsmConfig {
            module: module.to_path_buf(),
            token: "keypost".into(),
            pin: PIN.to_string().into(),
            realms: HsmRealms::Only(vec![realm("contoso")]),
        })
        .unwrap(),
    );
    let custody = Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    )
    .with_hsm(hsm.clone());
    (store, custody, hsm)
}

#[test]
fn every_algorithm_is_made_and_signs_inside_the_token() {
    let Some(module) = in_own_token("every_algorithm_is_made_and_signs_inside_the_token") else {
        return;
    };
    let (store, custody, _hsm) = setup(&module);
    let contoso = realm("contoso");
    let signer = custody.signer();
    for alg in [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::PS256,
    ] {
        let kid = custody
            .generate(&contoso, KeyPurpose::AccessToken, alg, T0, T0)
            .unwrap();
        let record = store.get_key(&kid).unwrap().unwrap();
        assert_eq!(record.origin, KeyOrigin::Hsm);
        assert!(
            record.sealed.is_empty(),
            "no private key material in the key table"
        );

        let sig = signer
            .sign(
                &contoso,
                KeyPurpose::AccessToken,
                &kid,
                b"header.claims",
                T0,
            )
            .unwrap();
        let keys = custody.verifying_keys().unwrap();
        let vk = keys.in_realm(&contoso, kid.as_str()).unwrap();
        assert_eq!(vk.alg(), alg);
        assert!(
            vk.verify(b"header.claims", &sig.0),
            "{alg} signature verifies"
        );
        assert!(!vk.verify(b"header.claimz", &sig.0));
    }
}

#[test]
fn hsm_keys_keep_the_realm_policy_and_other_realms_stay_in_software() {
    let Some(module) =
        in_own_token("hsm_keys_keep_the_realm_policy_and_other_realms_stay_in_software")
    else {
        return;
    };
    let (store, custody, hsm) = setup(&module);
    let (contoso, consumers) = (realm("contoso"), realm("consumers"));
    custody.ensure(&contoso, T0).unwrap();
    custody.ensure(&consumers, T0).unwrap();
    for k in store.list_keys(None).unwrap() {
        let expected = if k.realm == contoso && k.purpose != KeyPurpose::Audit {
            KeyOrigin::Hsm
        } else {
            // Audit keys are proven by unsealing them, so they are never HSM-held.
            KeyOrigin::Generated
        };
        assert_eq!(k.origin, expected, "{} {}", k.realm, k.purpose);
    }

    let signer = custody.signer();
    let kid = signer
        .current(&contoso, KeyPurpose::AccessToken, Algorithm::EdDSA, T0)
        .unwrap()
        .kid;
    assert!(matches!(
        signer.sign(&consumers, KeyPurpose::AccessToken, &kid, b"x", T0),
        Err(keys::Error::Refused("key is bound to another realm"))
    ));
    assert!(matches!(
        signer.sign(&contoso, KeyPurpose::IdToken, &kid, b"x", T0),
        Err(keys::Error::Refused("key is for another purpose"))
    ));

    // Rewrap has nothing to do for HSM keys and leaves them working.
    custody.rewrap(&Kek::generate().unwrap()).unwrap();
    assert!(
        signer
            .sign(&contoso, KeyPurpose::AccessToken, &kid, b"x", T0)
            .is_ok()
    );

    // Revoking destroys the key in the token: it is refused by policy and gone from the HSM.
    assert!(hsm.contains(&kid).unwrap());
    custody.revoke(&kid, T0 + 1).unwrap().unwrap();
    assert!(matches!(
        signer.sign(&contoso, KeyPurpose::AccessToken, &kid, b"x", T0 + 1),
        Err(keys::Error::Refused("key is revoked"))
    ));
    assert!(
        !hsm.contains(&kid).unwrap(),
        "revoked key destroyed in the token"
    );
    let replacement = signer
        .current(&contoso, KeyPurpose::AccessToken, Algorithm::EdDSA, T0 + 1)
        .unwrap()
        .kid;
    assert_eq!(
        store.get_key(&replacement).unwrap().unwrap().origin,
        KeyOrigin::Hsm
    );
}

#[test]
fn an_hsm_key_row_moved_to_another_realm_does_not_move_the_key() {
    let Some(module) = in_own_token("an_hsm_key_row_moved_to_another_realm_does_not_move_the_key")
    else {
        return;
    };
    // A file-backed store, so the test can edit the key table as an intruder with write
    // access to the database would.
    let dir = tempdir("moved-row");
    let db = dir.join("keypost.db");
    let (_, custody, _hsm) = setup_at(&module, Some(&db));
    let contoso = realm("contoso");
    let kid = custody
        .generate(&contoso, KeyPurpose::AccessToken, Algorithm::EdDSA, T0, T0)
        .unwrap();
    assert!(
        custody
            .signer()
            .sign(&contoso, KeyPurpose::AccessToken, &kid, b"x", T0)
            .is_ok()
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE keys SET realm = 'consumers' WHERE kid = ?",
        [kid.as_str()],
    )
    .unwrap();
    // The token object still says contoso: the signer will not use it for consumers.
    assert!(matches!(
        custody
            .signer()
            .sign(&realm("consumers"), KeyPurpose::AccessToken, &kid, b"x", T0),
        Err(keys::Error::Refused("key is not loaded"))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_key_revoked_without_the_hsm_is_destroyed_by_the_next_purge() {
    let Some(module) = in_own_token("a_key_revoked_without_the_hsm_is_destroyed_by_the_next_purge")
    else {
        return;
    };
    let (store, custody, hsm) = setup(&module);
    let contoso = realm("contoso");
    let kid = custody
        .generate(&contoso, KeyPurpose::AccessToken, Algorithm::EdDSA, T0, T0)
        .unwrap();
    // Revoked by a process without [hsm] (the web process's admin API, say): only the row.
    store.revoke_key(&kid, T0 + 1).unwrap();
    assert!(hsm.contains(&kid).unwrap());
    assert_eq!(custody.purge_revoked_hsm_keys().unwrap(), 1);
    assert!(!hsm.contains(&kid).unwrap());
    assert_eq!(custody.purge_revoked_hsm_keys().unwrap(), 0, "idempotent");
}

/// A token that forgets this process's login (a token reset, a reconnected device, another
/// part of the process logging out — PKCS#11 login state belongs to the whole application)
/// costs the next signature a new session and login, not every signature until a restart.
#[test]
fn a_lost_hsm_login_is_restored_on_the_next_signature() {
    let Some(module) = in_own_token("a_lost_hsm_login_is_restored_on_the_next_signature") else {
        return;
    };
    signs_after_losing_the_login(&module, |_| {});
}

/// The same loss, met first by a reload of the signer's key table (any key made anywhere
/// bumps the key generation): the reload logs in again rather than leaving every HSM key out.
#[test]
fn a_lost_hsm_login_does_not_unload_hsm_keys_when_the_key_table_reloads() {
    let Some(module) =
        in_own_token("a_lost_hsm_login_does_not_unload_hsm_keys_when_the_key_table_reloads")
    else {
        return;
    };
    signs_after_losing_the_login(&module, |custody| {
        // A software key for another realm: the key generation moves, the table reloads.
        let consumers = realm("consumers");
        custody
            .generate(
                &consumers,
                KeyPurpose::AccessToken,
                Algorithm::EdDSA,
                T0,
                T0,
            )
            .unwrap();
    });
}

/// Signs with an HSM key of `contoso`, logs the process out, runs `meanwhile`, and signs
/// again: the second signature must come and verify.
fn signs_after_losing_the_login(module: &Path, meanwhile: impl FnOnce(&Custody)) {
    let (_store, custody, _hsm) = setup(module);
    let contoso = realm("contoso");
    let kid = custody
        .generate(&contoso, KeyPurpose::AccessToken, Algorithm::EdDSA, T0, T0)
        .unwrap();
    let signer = custody.signer();
    let sign = |message: &[u8]| signer.sign(&contoso, KeyPurpose::AccessToken, &kid, message, T0);
    sign(b"before").unwrap();

    log_the_process_out(module);
    meanwhile(&custody);

    let sig = sign(b"after").expect("signing after the login was lost");
    let keys = custody.verifying_keys().unwrap();
    let vk = keys.in_realm(&contoso, kid.as_str()).unwrap();
    assert!(vk.verify(b"after", &sig.0));
}

/// Logs this process out of the token from a session of its own: PKCS#11 login state belongs
/// to the whole application, so every session of the custody loses it too.
fn log_the_process_out(module: &Path) {
    other_session(module).logout().unwrap();
}

/// A session of this process with the token, besides the custody's own (logged in, as the
/// process is).
fn other_session(module: &Path) -> cryptoki::session::Session {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    let ctx = Pkcs11::new(module).unwrap();
    // Already initialised by the custody's own handle: the same library, the same process.
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx.get_slots_with_token().unwrap()[0];
    ctx.open_rw_session(slot).unwrap()
}

/// The binding holds on the way back too: a key relabelled for another realm while the
/// signer's login was gone is not found again after the new login, and signs nothing.
#[test]
fn a_key_relabelled_meanwhile_is_not_used_after_a_new_login() {
    let Some(module) = in_own_token("a_key_relabelled_meanwhile_is_not_used_after_a_new_login")
    else {
        return;
    };
    use cryptoki::object::{Attribute, ObjectClass};
    let (_store, custody, _hsm) = setup(&module);
    let contoso = realm("contoso");
    let kid = custody
        .generate(&contoso, KeyPurpose::AccessToken, Algorithm::EdDSA, T0, T0)
        .unwrap();
    let signer = custody.signer();
    let sign = |message: &[u8]| signer.sign(&contoso, KeyPurpose::AccessToken, &kid, message, T0);
    sign(b"before").unwrap();

    let other = other_session(&module);
    let key = other
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(kid.as_str().as_bytes().to_vec()),
        ])
        .unwrap()[0];
    other
        .update_attributes(
            key,
            &[Attribute::Label(b"keypost|consumers|moved".to_vec())],
        )
        .unwrap();
    other.logout().unwrap();

    let refused = sign(b"after");
    assert!(matches!(refused, Err(keys::Error::Hsm(_))), "{refused:?}");
}
