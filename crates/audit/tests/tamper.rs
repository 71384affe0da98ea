//! Someone who can write the database — drop its triggers, rewrite records, relink the chain,
//! delete checkpoints — cannot have the signer bless the result, and `verify` finds it: the
//! signer's own record of what it signed lives beside the key-encryption key, checkpoints are
//! numbered and linked, and published checkpoints prove the log from outside.

// A test that cannot set up its bed fails, which is what a panic here does.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use audit::chain::{self, Evidence, Problem};
use audit::signed_heads::SignedHeads;
use audit::{AuditLog, Event, Operation};
use keys::{Custody, Kek, KeyPolicy};
use store::{Realm, RealmId, RealmKind, SqliteStore, Store};

const NOW: i64 = 1_800_000_000;

struct Bed {
    dir: PathBuf,
    store: Arc<dyn Store>,
    custody: Custody,
    heads: SignedHeads,
    log: AuditLog,
    realm: RealmId,
}

fn bed(tag: &str) -> Bed {
    let dir = std::env::temp_dir().join(format!("keypost-tamper-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("keypost.db")).unwrap());
    let realm = RealmId::new("contoso").unwrap();
    store
        .create_realm(&Realm {
            id: realm.clone(),
            kind: RealmKind::Tenant,
            display_name: "Contoso".into(),
            domains: vec!["contoso.test".into()],
            access_token_alg: "EdDSA".into(),
            created_at: NOW,
        })
        .unwrap();
    let custody = Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    );
    custody.ensure(&realm, NOW - 100).unwrap();
    Bed {
        heads: SignedHeads::beside(&dir.join("keypost.kek")),
        log: AuditLog::new(store.clone()),
        dir,
        store,
        custody,
        realm,
    }
}

impl Bed {
    fn activity(&self, n: usize) {
        for i in 0..n {
            let ev = Event::success(Operation::SignInSucceeded)
                .realm(&self.realm)
                .actor(format!("user{i}@contoso.test"));
            self.log.record(ev, NOW).unwrap();
        }
    }

    fn checkpoint(&self, at: i64) -> chain::Pass {
        chain::checkpoint(&*self.store, &self.custody, &self.heads, at).unwrap()
    }

    fn problems(&self, published: &[store::chain::Checkpoint]) -> Vec<Problem> {
        let evidence = Evidence {
            signed_heads: Some(&self.heads),
            published,
        };
        let reports =
            chain::verify(&*self.store, &self.custody, Some("contoso"), &evidence).unwrap();
        reports.into_iter().flat_map(|r| r.problems).collect()
    }

    /// The intruder's connection: the triggers dropped.
    fn intruder(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(self.dir.join("keypost.db")).unwrap();
        db.execute_batch(
            "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; \
             DROP TRIGGER audit_checkpoints_no_delete;",
        )
        .unwrap();
        db
    }

    /// Rewrites the first record of contoso's chain, relinks every record after it with the
    /// published algorithm, fixes the head, and deletes every checkpoint of the chain: the log
    /// looks as if it had always been this way.
    fn rewrite_and_relink(&self) {
        let db = self.intruder();
        db.execute(
            "UPDATE audit SET actor = 'nobody' WHERE chain = 'contoso' AND seq = 1",
            [],
        )
        .unwrap();
        db.execute("DELETE FROM audit_checkpoints WHERE chain = 'contoso'", [])
            .unwrap();
        drop(db);
        let mut prev = store::chain::GENESIS;
        let records = self
            .store
            .audit_chain_after_seq("contoso", 0, 10_000)
            .unwrap();
        let db = self.intruder_again();
        for r in &records {
            prev = store::chain::link(&prev, r.seq.unwrap(), &r.record, &r.details_text);
            db.execute(
                "UPDATE audit SET link = ? WHERE id = ?",
                rusqlite::params![prev.to_vec(), r.record.id],
            )
            .unwrap();
        }
        db.execute(
            "UPDATE audit_heads SET link = ? WHERE chain = 'contoso'",
            [prev.to_vec()],
        )
        .unwrap();
    }

    /// A connection once the triggers are gone already.
    fn intruder_again(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.join("keypost.db")).unwrap()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn checkpoints_are_numbered_and_each_names_the_one_before() {
    let b = bed("numbered");
    b.activity(3);
    let first = b.checkpoint(NOW + 1);
    b.activity(2);
    let second = b.checkpoint(NOW + 2);
    let (c1, c2) = (&first.made[0], &second.made[0]);
    assert_eq!((c1.number, c2.number), (1, 2));
    assert_eq!(c1.prev, Some(store::chain::GENESIS));
    assert_eq!(c2.prev, c1.digest());
    assert!(b.problems(&[]).is_empty());
    // Nothing new: nothing signed.
    assert!(b.checkpoint(NOW + 3).made.is_empty());
}

/// The attack of the security review: rewrite, relink, delete the chain's checkpoints. The
/// signer used to recompute from the start and sign a fresh checkpoint; now it refuses (and
/// audits the refusal, which the detection rules raise as critical), and verify says which
/// checkpoint it signed is gone.
#[test]
fn a_relinked_chain_without_its_checkpoints_is_refused_not_blessed() {
    let b = bed("relinked");
    b.activity(4);
    assert_eq!(b.checkpoint(NOW + 1).made.len(), 1);
    b.rewrite_and_relink();

    let pass = b.checkpoint(NOW + 2);
    assert!(
        pass.made.iter().all(|c| c.chain != "contoso"),
        "{:?}",
        pass.made
    );
    assert_eq!(pass.refused.len(), 1, "{:?}", pass.refused);
    assert_eq!(pass.refused[0].problem, "checkpoint_removed");
    assert!(b.store.checkpoints("contoso").unwrap().is_empty());
    let refused = b
        .store
        .search_audit(&store::AuditQuery {
            operation: Some("AuditChainRefused".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].details["problem"], "checkpoint_removed");

    let problems = b.problems(&[]);
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::SignedCheckpointMissing { number: 1, .. })),
        "{problems:?}"
    );
}

/// Removing the newest records together with the checkpoint that covered them (the chain
/// then ends earlier, consistently relinked as it always was) is found the same way.
#[test]
fn the_newest_checkpoint_removed_with_its_records_is_found() {
    let b = bed("newest");
    b.activity(2);
    b.checkpoint(NOW + 1);
    b.activity(2);
    b.checkpoint(NOW + 2);
    let db = b.intruder();
    db.execute_batch(
        "DELETE FROM audit WHERE chain = 'contoso' AND seq > 2; \
         DELETE FROM audit_checkpoints WHERE chain = 'contoso' AND number = 2; \
         UPDATE audit_heads SET seq = 2, link = (SELECT link FROM audit WHERE chain = 'contoso' AND seq = 2) \
             WHERE chain = 'contoso';",
    )
    .unwrap();
    let problems = b.problems(&[]);
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::SignedCheckpointMissing { number: 2, .. })),
        "{problems:?}"
    );
    let pass = b.checkpoint(NOW + 3);
    assert_eq!(pass.refused.len(), 1, "{:?}", pass.refused);
}

/// A checkpoint deleted from the middle shows as a gap in the numbering, even to a verifier
/// without the signer's record.
#[test]
fn a_checkpoint_deleted_from_the_middle_leaves_a_gap() {
    let b = bed("gap");
    for i in 0..3 {
        b.activity(1);
        b.checkpoint(NOW + 1 + i);
    }
    b.intruder()
        .execute(
            "DELETE FROM audit_checkpoints WHERE chain = 'contoso' AND number = 2",
            [],
        )
        .unwrap();
    let reports =
        chain::verify(&*b.store, &b.custody, Some("contoso"), &Evidence::default()).unwrap();
    assert_eq!(
        reports[0].problems,
        vec![Problem::CheckpointsMissing {
            from_number: 2,
            to_number: 2
        }]
    );
}

/// What was published is proof from outside: even an intruder who also reset the signer's
/// record (so the signer starts over on the rewritten log) is caught by a mirror's copy.
#[test]
fn a_mirror_of_the_published_checkpoints_proves_the_rewrite() {
    let b = bed("mirror");
    b.activity(3);
    b.checkpoint(NOW + 1);
    let page = audit::published::page("contoso", &b.store.checkpoints("contoso").unwrap(), false);
    let (mirror, _) = audit::published::from_json(&page).unwrap();
    assert!(
        b.problems(&mirror).is_empty(),
        "the intact log agrees with its mirror"
    );

    b.rewrite_and_relink();
    std::fs::remove_file(b.heads.path()).unwrap();
    // With its record gone the signer trusts what it finds, as on a first start...
    let pass = b.checkpoint(NOW + 2);
    assert_eq!(pass.made.len(), 1);
    // ...and the mirror shows the log is not the one that was published.
    let problems = b.problems(&mirror);
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::PublishedMismatch { number: 1 })),
        "{problems:?}"
    );
    // A forged entry in a mirror proves nothing either way.
    let mut forged = mirror.clone();
    forged[0].signature[0] ^= 1;
    assert!(
        b.problems(&forged)
            .iter()
            .any(|p| matches!(p, Problem::PublishedBadSignature { number: 1, .. }))
    );
}

/// A pass whose record could not be written (a crash between the two writes) is adopted:
/// the next pass finds the checkpoint extending the recorded one.
#[test]
fn a_checkpoint_the_record_missed_is_adopted_when_it_extends_it() {
    let b = bed("adopt");
    b.activity(1);
    b.checkpoint(NOW + 1);
    let saved = std::fs::read(b.heads.path()).unwrap();
    b.activity(1);
    b.checkpoint(NOW + 2);
    std::fs::write(b.heads.path(), saved).unwrap();
    b.activity(1);
    let pass = b.checkpoint(NOW + 3);
    assert!(pass.refused.is_empty(), "{:?}", pass.refused);
    assert_eq!(pass.made[0].number, 3);
}

/// A chain deleted whole — records, head and checkpoints — is missed by nobody who looks:
/// the signer remembers signing it and refuses (audited), and verify names it.
#[test]
fn a_chain_deleted_whole_is_found() {
    let b = bed("whole");
    b.activity(3);
    b.checkpoint(NOW + 1);
    let db = b.intruder();
    db.execute_batch(
        "DELETE FROM audit WHERE chain = 'contoso'; \
         DELETE FROM audit_heads WHERE chain = 'contoso'; \
         DELETE FROM audit_checkpoints WHERE chain = 'contoso';",
    )
    .unwrap();
    let pass = b.checkpoint(NOW + 2);
    assert!(
        pass.refused
            .iter()
            .any(|r| r.chain == "contoso" && r.problem == "chain_removed"),
        "{:?}",
        pass.refused
    );
    let problems = b.problems(&[]);
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::SignedCheckpointMissing { number: 1, .. })),
        "{problems:?}"
    );
}

/// Retention never expires records on the word of a checkpoint row nobody signed: an intruder
/// who backdates and relinks a chain and plants a checkpoint of its head gets no tombstone,
/// and the records stay.
#[test]
fn retention_is_not_steered_by_a_planted_checkpoint() {
    let b = bed("retention");
    b.activity(4);
    b.checkpoint(NOW + 1);
    b.activity(2);
    // Backdate everything, relink from the genesis, and plant a checkpoint at the head.
    b.intruder()
        .execute("UPDATE audit SET time = 0 WHERE chain = 'contoso'", [])
        .unwrap();
    let mut prev = store::chain::GENESIS;
    let records = b.store.audit_chain_after_seq("contoso", 0, 10_000).unwrap();
    let db = b.intruder_again();
    for r in &records {
        prev = store::chain::link(&prev, r.seq.unwrap(), &r.record, &r.details_text);
        db.execute(
            "UPDATE audit SET link = ? WHERE id = ?",
            rusqlite::params![prev.to_vec(), r.record.id],
        )
        .unwrap();
    }
    let head = records.last().unwrap().seq.unwrap();
    db.execute(
        "UPDATE audit_heads SET link = ? WHERE chain = 'contoso'",
        [prev.to_vec()],
    )
    .unwrap();
    db.execute(
        "INSERT INTO audit_checkpoints(chain, seq, link, time, kid, signature, number, prev) \
         VALUES ('contoso', ?, ?, ?, 'planted', x'00', 2, x'00')",
        rusqlite::params![head as i64, prev.to_vec(), NOW + 2],
    )
    .unwrap();
    let made = chain::expire(&*b.store, &b.custody, &b.heads, NOW, NOW + 3).unwrap();
    assert!(made.iter().all(|t| t.chain != "contoso"), "{made:?}");
    assert_eq!(
        b.store
            .audit_chain_after_seq("contoso", 0, 10_000)
            .unwrap()
            .len(),
        records.len(),
        "no record of the chain expired"
    );
    // Without the signer's record, the planted row still vouches for nothing.
    std::fs::remove_file(b.heads.path()).unwrap();
    let made = chain::expire(&*b.store, &b.custody, &b.heads, NOW, NOW + 4).unwrap();
    assert!(made.iter().all(|t| t.chain != "contoso"), "{made:?}");
}
