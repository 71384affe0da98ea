//! The audit log: append order, per-realm hash chains, queries.

use super::*;

/// Records appended in several chains: each chain counts from 1 and every link follows
/// `chain::link` from the genesis.
pub fn audit_records_are_linked_per_chain(new: &NewStore) {
    use crate::chain::{self, GENESIS};
    let s = new();
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

/// Appended records get increasing ids in the order given, and queries find them (`after_id`
/// pages past what was seen). The trait has no update or delete; that a backend refuses them
/// below the API too is the backend's own test (SQLite: `audit_is_append_only_even_through_sql`).
pub fn audit_records_are_appended_in_order_and_found_by_query(new: &NewStore) {
    let s = new();
    let rec = failed_sign_in();
    let ids = s.append_audit(&[rec.clone(), rec.clone()]).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[1] > ids[0]);
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
