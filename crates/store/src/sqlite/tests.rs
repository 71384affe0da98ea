//! Tests of the SQLite backend: the store contract suite ([`crate::contract`]) run against it,
//! and what only SQLite has (migrations, triggers reached by raw SQL, WAL, the reader pools,
//! several processes on one database file).

use rusqlite::params;

use super::migrations::{AUDIT_CHAIN_MIGRATION, MIGRATIONS};
use super::*;
use crate::contract::{
    account_u1, client, entry, failed_sign_in, issue_rotating, realm, revoked_at,
};
use crate::ids::{ClientId, Jti, RealmId};

/// The store contract, against an in-memory database.
mod contract {
    use std::sync::Arc;

    use crate::{SqliteStore, Store};

    crate::store_contract_tests!(|| -> Arc<dyn Store> {
        Arc::new(SqliteStore::in_memory().unwrap())
    });
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

/// The triggers refuse to change or remove an audit record even to a writer that goes around
/// the store's API.
#[test]
fn audit_is_append_only_even_through_sql() {
    let s = SqliteStore::in_memory().unwrap();
    let rec = failed_sign_in();
    let ids = s.append_audit(&[rec.clone(), rec]).unwrap();
    let conn = s.conn().unwrap();
    assert!(
        conn.execute("UPDATE audit SET result = 'success'", [])
            .is_err()
    );
    assert!(conn.execute("DELETE FROM audit", []).is_err());
    drop(conn);
    let q = AuditQuery {
        actor: Some("a@contoso.test".into()),
        ..Default::default()
    };
    let found = s.search_audit(&q).unwrap();
    assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert!(found.iter().all(|r| r.result == "failure"));
}

/// No verb changes an account's profile yet; if one does, what the token endpoint remembers of
/// it (`AccountState`) must still be let go of: the triggers bump the revocation generation.
#[test]
fn account_profile_changes_bump_the_revocation_generation() {
    let s = SqliteStore::in_memory().unwrap();
    s.create_realm(&realm("contoso", &[])).unwrap();
    s.create_account(&account_u1()).unwrap();
    let mut last = s.generations().unwrap().revocations;
    for change in [
        "display_name = 'v'",
        "email = 'v@contoso.test'",
        "role = 'tenant-admin'",
    ] {
        s.conn()
            .unwrap()
            .execute(&format!("UPDATE accounts SET {change} WHERE id = 'u1'"), [])
            .unwrap();
        let now = s.generations().unwrap().revocations;
        assert!(
            now > last,
            "{change} did not bump the revocation generation"
        );
        last = now;
    }
}
