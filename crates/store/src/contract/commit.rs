//! The group-commit contract of [`LedgerStore::submit_issuance`] and [`AuditStore::submit_audit`]:
//! a write is durable and visible when its [`Completion`] answers, writes that share a commit
//! keep their own answers, and a write refused for its own reason changes nothing.

use super::*;

/// A write refused because one of its jtis is taken changes nothing, though the committer's
/// transaction has no savepoint: the rows it inserted before are gone, and the refresh token
/// it rotated is unused again.
pub fn a_refused_issuance_leaves_no_trace(new: &NewStore) {
    let s = store_with_u1(new);
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

pub fn concurrent_writes_share_commits_and_keep_their_own_results(new: &NewStore) {
    let s = new();
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

/// An audit record of the provider chain by `actor`.
fn provider_record(actor: &str) -> AuditRecord {
    AuditRecord {
        id: 0,
        time: 1,
        realm: None,
        actor: Some(actor.into()),
        operation: "X".into(),
        target: None,
        result: "success".into(),
        source_ip: None,
        user_agent: None,
        client_id: None,
        jti: None,
        kid: None,
        details: serde_json::json!({}),
    }
}

/// Writes queued before any is waited for (which a backend may put in one commit) each get
/// their own answer: the one refused (a jti taken) leaves neither its tokens nor its audit
/// record, and the others are all there, their records contiguous in the chain.
pub fn queued_writes_answer_each_for_itself(new: &NewStore) {
    let s = store_with_u1(new);
    s.record_tokens(&[entry("taken", TokenKind::Access, None)])
        .unwrap();
    let first = s.submit_issuance(
        &[entry("q1", TokenKind::Access, None)],
        &[provider_record("first")],
        None,
    );
    let refused = s.submit_issuance(
        &[
            entry("q2", TokenKind::Access, None),
            entry("taken", TokenKind::Access, None),
        ],
        &[provider_record("refused")],
        None,
    );
    let plain = s.submit_audit(&[provider_record("plain"), provider_record("plain")]);
    let last = s.submit_issuance(
        &[entry("q3", TokenKind::Access, None)],
        &[provider_record("last")],
        None,
    );
    first.wait().unwrap();
    let refused = refused.wait();
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    let ids = plain.wait().unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1], "ids in the order given");
    last.wait().unwrap();

    for (jti, present) in [("q1", true), ("q2", false), ("q3", true)] {
        assert_eq!(
            s.get_token(&Jti::new(jti).unwrap()).unwrap().is_some(),
            present,
            "{jti}"
        );
    }
    let rows = s.audit_chain(Some(""), 0, 100).unwrap();
    let mut actors: Vec<&str> = rows
        .iter()
        .map(|r| r.record.actor.as_deref().unwrap())
        .collect();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4].map(Some),
        "no gap where the refused record would have been"
    );
    actors.sort_unstable();
    assert_eq!(actors, ["first", "last", "plain", "plain"]);
    let found = s
        .search_audit(&AuditQuery {
            actor: Some("plain".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
}

/// A write whose completion answered is seen by every read that starts after, from any thread:
/// the tokens by their jti and in the validator's view, the audit records by query.
pub fn an_answered_write_is_seen_by_every_later_read(new: &NewStore) {
    let s = new();
    let realm = RealmId::new("contoso").unwrap();
    let app = ClientId::new("app").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, realm, app) = (s.clone(), realm.clone(), app.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let jti = Jti::new(format!("v{t}-{i}")).unwrap();
                    let actor = format!("v{t}-{i}");
                    s.submit_issuance(
                        &[entry(jti.as_str(), TokenKind::Access, None)],
                        &[provider_record(&actor)],
                        None,
                    )
                    .wait()
                    .unwrap();
                    assert!(s.get_token(&jti).unwrap().is_some());
                    assert!(s.ledger_view(&jti, &realm, &app).unwrap().entry.is_some());
                    let q = AuditQuery {
                        actor: Some(actor),
                        ..Default::default()
                    };
                    assert_eq!(s.count_audit(&q).unwrap(), 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
