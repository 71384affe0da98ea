//! The store contract: what every backend behind [`Store`] promises, as tests written against
//! the traits alone. A backend runs the whole suite with [`store_contract_tests!`](crate::store_contract_tests),
//! which generates one `#[test]` per contract test, named after it:
//!
//! ```ignore
//! mod contract {
//!     store::store_contract_tests!(|| -> std::sync::Arc<dyn store::Store> {
//!         std::sync::Arc::new(MyStore::for_tests())
//!     });
//! }
//! ```
//!
//! Each contract test takes a [`NewStore`]: it makes a fresh, empty store on every call, so a
//! test can have several (one per case) and share one between threads. The SQLite backend runs
//! the suite in `sqlite/tests.rs`; what only SQLite has (migrations, triggers, WAL, its reader
//! pools, several processes on one file) is tested there, beside it.
//!
//! The module is compiled for this crate's tests and, for a backend in another crate, with the
//! `contract-tests` feature (as a dev-dependency: `store = { ..., features = ["contract-tests"] }`).
//! It is test code: it panics on any failure, which is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::*;

pub mod alerts;
pub mod audit;
pub mod commit;
pub mod directory;
pub mod keys;
pub mod ledger;
pub mod mail;
pub mod sessions;

/// Makes a fresh, empty store of the backend under test.
pub type NewStore = dyn Fn() -> Arc<dyn Store>;

/// Generates one `#[test]` per contract test, each calling it with the store constructor
/// `$new` (an expression usable as `&$new: &NewStore`, such as a closure). Every contract test
/// is listed here: a test not listed is a test no backend runs.
#[macro_export]
macro_rules! store_contract_tests {
    ($new:expr) => {
        $crate::store_contract_tests!(@each $new;
            alerts::alert_repeats_count_within_the_window_and_merge_their_lists,
            alerts::alert_mail_is_claimed_under_a_cap_and_held_alerts_summarized_once,
            alerts::deferred_alert_deliveries_are_queued_behind_the_cursor,
            alerts::a_batch_of_alerts_is_raised_once_with_its_cursor,
            audit::audit_records_are_linked_per_chain,
            audit::audit_records_are_appended_in_order_and_found_by_query,
            commit::a_refused_issuance_leaves_no_trace,
            commit::concurrent_writes_share_commits_and_keep_their_own_results,
            commit::queued_writes_answer_each_for_itself,
            commit::an_answered_write_is_seen_by_every_later_read,
            directory::domains_belong_to_one_realm,
            directory::a_directory_change_is_seen_by_the_next_read,
            directory::live_accounts_with_a_role_are_found_by_role_and_realm,
            keys::key_changes_bump_the_generation,
            ledger::a_rotation_refuses_a_token_no_longer_live,
            ledger::refresh_token_use_is_atomic,
            ledger::nothing_is_issued_into_a_revoked_family,
            ledger::a_scope_revocation_counts_only_what_it_newly_revoked,
            ledger::the_ledger_is_pruned_of_what_no_token_needs,
            ledger::duplicate_jti_is_refused,
            ledger::revocations_bump_the_revocation_generation,
            ledger::ledger_view_joins_session_account_and_client,
            mail::search_plans_agree_on_every_page,
            mail::usage_follows_inserts_and_destroys,
            mail::email_changes_are_exact_across_concurrent_writers,
            sessions::auth_codes_are_consumed_once,
            sessions::a_sign_in_from_before_a_password_reset_gets_no_session_and_no_tokens,
            sessions::a_disabled_account_gets_no_session_and_no_tokens,
        );
    };
    (@each $new:expr; $($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::contract::$module::$test(&$new)
            }
        )*

        #[test]
        fn the_suite_runs_every_contract_test() {
            $crate::contract::assert_all_listed(&[
                $(concat!(stringify!($module), "::", stringify!($test))),*
            ]);
        }
    };
}

/// The contract modules' sources, to find their tests by.
const SOURCES: &[(&str, &str)] = &[
    ("alerts", include_str!("alerts.rs")),
    ("audit", include_str!("audit.rs")),
    ("commit", include_str!("commit.rs")),
    ("directory", include_str!("directory.rs")),
    ("keys", include_str!("keys.rs")),
    ("ledger", include_str!("ledger.rs")),
    ("mail", include_str!("mail.rs")),
    ("sessions", include_str!("sessions.rs")),
];

/// Panics unless `listed` (`module::test`) is exactly the contract tests, every
/// `pub fn NAME(new: &NewStore)` of the contract modules: a test left out of
/// [`store_contract_tests!`](crate::store_contract_tests) would silently run for no backend.
pub fn assert_all_listed(listed: &[&str]) {
    let mut defined: Vec<String> = SOURCES
        .iter()
        .flat_map(|(module, source)| {
            source.lines().filter_map(move |l| {
                let name = l
                    .strip_prefix("pub fn ")?
                    .strip_suffix("(new: &NewStore) {")?;
                Some(format!("{module}::{name}"))
            })
        })
        .collect();
    defined.sort();
    let mut listed: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        listed, defined,
        "store_contract_tests! must list every contract test"
    );
}

/// A failed sign-in of `a@contoso.test` from 127.0.0.1 at time 5.
pub fn failed_sign_in() -> AuditRecord {
    AuditRecord {
        id: 0,
        time: 5,
        realm: Some(RealmId::new("contoso").unwrap()),
        actor: Some("a@contoso.test".into()),
        operation: "SignInFailed".into(),
        target: None,
        result: "failure".into(),
        source_ip: Some("127.0.0.1".into()),
        user_agent: None,
        client_id: None,
        jti: None,
        kid: None,
        details: serde_json::json!({"reason": "bad password"}),
    }
}

pub fn realm(id: &str, domains: &[&str]) -> Realm {
    Realm {
        id: RealmId::new(id).unwrap(),
        kind: RealmKind::Tenant,
        display_name: id.to_owned(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        access_token_alg: "EdDSA".into(),
        created_at: 1,
    }
}

/// A public client with no grants of its own.
pub fn client(realm: &RealmId, id: &ClientId) -> Client {
    Client {
        realm: realm.clone(),
        client_id: id.clone(),
        name: id.to_string(),
        secret_hash: None,
        redirect_uris: vec![],
        grant_types: vec![],
        first_party: false,
        id_token_alg: None,
        created_at: 1,
        scopes: None,
    }
}

pub fn entry(jti: &str, kind: TokenKind, family: Option<&str>) -> LedgerEntry {
    LedgerEntry {
        jti: Jti::new(jti).unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        kind,
        subject: "u1".into(),
        client_id: ClientId::new("app").unwrap(),
        kid: None,
        session_id: None,
        family_id: family.map(str::to_owned),
        scope: "openid".into(),
        audience: "mail".into(),
        issued_at: 10,
        expires_at: 20,
        token_hash: vec![1; 32],
        revoked_at: None,
        used_at: None,
    }
}

/// Contoso's enabled account `u1`.
pub fn account_u1() -> Account {
    Account {
        id: AccountId::new("u1").unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        email: "u1@contoso.test".into(),
        display_name: "u".into(),
        password_hash: "x".into(),
        must_change_password: false,
        credential_epoch: 0,
        disabled: false,
        role: Role::User,
        created_at: 1,
    }
}

/// A store with realm contoso and its enabled account `u1`, the subject of [`entry`]'s rows
/// (a refresh token rotates only while its account is enabled).
pub fn store_with_u1(new: &NewStore) -> Arc<dyn Store> {
    let s = new();
    s.create_realm(&realm("contoso", &[])).unwrap();
    s.create_account(&account_u1()).unwrap();
    s
}

/// Issues `new` rotating the refresh token `used` at `at`, and waits for the write's answer.
pub fn issue_rotating(
    s: &dyn Store,
    new: LedgerEntry,
    used: &str,
    at: UnixTime,
) -> Result<Vec<i64>> {
    s.submit_issuance(&[new], &[], Some((&Jti::new(used).unwrap(), at)))
        .wait()
}

/// When the ledger row `jti` reads revoked (by itself or through its family).
pub fn revoked_at(s: &dyn Store, jti: &str) -> Option<UnixTime> {
    s.get_token(&Jti::new(jti).unwrap())
        .unwrap()
        .unwrap()
        .revoked_at
}

/// A sign-in session of `u1` at `epoch`, live until 100.
pub fn session_u1(id: &str, epoch: u64) -> Session {
    Session {
        id: SessionId::new(id).unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        account: AccountId::new("u1").unwrap(),
        auth_time: 1,
        expires_at: 100,
        revoked_at: None,
        credential_epoch: epoch,
    }
}

/// An access token of `u1` under the sign-in session `sid`.
pub fn entry_under(jti: &str, sid: &str) -> LedgerEntry {
    let mut e = entry(jti, TokenKind::Access, None);
    e.session_id = Some(SessionId::new(sid).unwrap());
    e
}

pub fn new_alert(realm: Option<&str>, key: &str, at: UnixTime, kids: &[&str]) -> Alert {
    Alert {
        id: 0,
        realm: realm.map(|r| RealmId::new(r).unwrap()),
        rule: "forged-token".into(),
        severity: Severity::Critical,
        title: "t".into(),
        dedup_key: key.into(),
        first_seen: at,
        last_seen: at,
        count: 1,
        evidence: vec![at],
        details: serde_json::json!({"kids": kids, "iss": format!("first {at}")}),
        status: AlertStatus::Open,
        status_by: None,
    }
}

/// An account `u1` in realm contoso with an inbox.
pub fn mail_account(s: &dyn Store) -> (AccountId, MailboxId) {
    s.create_realm(&realm("contoso", &[])).unwrap();
    let account = AccountId::new("u1").unwrap();
    s.create_account(&account_u1()).unwrap();
    let inbox = MailboxId::new("m-inbox").unwrap();
    s.create_mailboxes(&[Mailbox {
        id: inbox.clone(),
        account: account.clone(),
        name: "Inbox".into(),
        role: Some("inbox".into()),
        parent: None,
        sort_order: 0,
    }])
    .unwrap();
    (account, inbox)
}

pub fn test_email(account: &AccountId, i: usize, subject: &str, received_at: i64) -> EmailRecord {
    EmailRecord {
        id: EmailId::new(format!("e{i}")).unwrap(),
        account: account.clone(),
        blob_id: blob_id(format!("{i}").as_bytes()),
        thread_id: ThreadId::new(format!("t{i}")).unwrap(),
        message_id: None,
        subject: subject.into(),
        from: vec![],
        to: vec![],
        cc: vec![],
        sent_at: None,
        received_at,
        size: 10 + i as u64,
        preview: String::new(),
        has_attachment: false,
        keywords: vec![],
    }
}
