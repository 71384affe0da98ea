//! The storage traits. One per subject so a crate asks only for what it uses; [`Store`] is the
//! union the binary wires up. A PostgreSQL backend implements the same traits and passes the
//! same tests: the contract suite (`store::contract`, run with `store::store_contract_tests!`;
//! compiled for tests and with the `contract-tests` feature).
//!
//! # The group-commit contract
//!
//! The writes that issue tokens and append audit records ([`LedgerStore::submit_issuance`],
//! [`AuditStore::submit_audit`]) are queued and answered by a [`Completion`](crate::Completion),
//! so that a backend may commit many of them together (one fsync for a batch). Every backend
//! promises:
//!
//! - **Durable before the answer.** A completion answers `Ok` only once the write is
//!   committed durably (it survives a crash from then on) and visible to every read, of any
//!   thread, that starts after the answer; its ids are those of the audit records, in the
//!   order given. Nothing may be handed out (a token, a response) before the answer.
//! - **One batch may share a commit; each write keeps its own answer.** Writes queued
//!   together may go to disk in one transaction, but each is answered for itself, and each is
//!   atomic: all of its rows or none.
//! - **A write refused for its own reason changes nothing.** A write refused because of its
//!   own content or the state it depends on (a jti taken, a refresh token used or no longer
//!   live, a revoked family, changed credentials) leaves no row behind, consumes nothing it
//!   would have consumed, and takes no place in an audit chain; the other writes of its batch
//!   commit as if it had not been queued. A failure of the backend itself may fail the whole
//!   batch, each completion answering the error; it never answers `Ok` for a write that did
//!   not commit.
//! - **No waiter hangs.** A completion whose write is abandoned (the backend shut down)
//!   answers with an error.
//!
//! `commit::*` of the contract suite checks what the API can show of this.

use crate::Result;
use crate::ids::{
    AccountId, BlobId, ClientId, EmailId, IdentityId, Jti, Kid, MailboxId, RealmId, SessionId,
    SubmissionId, ThreadId,
};
use crate::model::*;
use crate::{EmailQuery, QueryPage};

/// Realms and their mail domains.
pub trait RealmStore: Send + Sync {
    /// Creates a realm; `Conflict` if the id or one of its domains is taken.
    fn create_realm(&self, realm: &Realm) -> Result<()>;
    /// A realm by id.
    fn get_realm(&self, id: &RealmId) -> Result<Option<Realm>>;
    /// All realms, consumer realm first.
    fn list_realms(&self) -> Result<Vec<Realm>>;
    /// The realm that owns a (lowercase) mail domain.
    fn realm_for_domain(&self, domain: &str) -> Result<Option<RealmId>>;
    /// Changes a realm's access-token algorithm.
    fn set_access_token_alg(&self, id: &RealmId, alg: &str) -> Result<()>;
}

/// Accounts.
pub trait AccountStore: Send + Sync {
    /// Creates an account; `Conflict` if the email is taken.
    fn create_account(&self, account: &Account) -> Result<()>;
    /// An account by subject id. Like [`LedgerStore::get_token`], called on async tasks.
    fn get_account(&self, id: &AccountId) -> Result<Option<Account>>;
    /// An account by (lowercased) email.
    fn find_account_by_email(&self, email: &str) -> Result<Option<Account>>;
    /// Accounts, optionally of one realm, ordered by email.
    fn list_accounts(&self, realm: Option<&RealmId>) -> Result<Vec<Account>>;
    /// Enables or disables an account. While it is disabled, no session is created and no
    /// token issued for it — decided by those writes themselves, so a sign-in that checked the
    /// account just before gets nothing — and its tokens do not validate; enabled again, its
    /// sessions and tokens are as they were (a revocation is what ends them for good).
    fn set_account_disabled(&self, id: &AccountId, disabled: bool) -> Result<()>;
    /// Replaces an account's password hash (and whether it must be changed at the next
    /// sign-in) and, in the same transaction, moves its credential epoch on and ends every
    /// session and token of the account: whoever held the old password (often the reason for
    /// the reset) holds nothing after this returns, and a sign-in that checked the old
    /// password can no longer create a session ([`SessionStore::create_session`]) or have
    /// tokens issued ([`LedgerStore::submit_issuance`]).
    fn set_password_hash(
        &self,
        id: &AccountId,
        hash: &str,
        must_change: bool,
        at: UnixTime,
    ) -> Result<CredentialChange>;
    /// Number of accounts with a role.
    fn count_accounts_with_role(&self, role: Role) -> Result<u64>;
    /// The enabled accounts with `role`, of one realm (or any), ordered by email, at most
    /// `limit`: whom an alert goes to, found without reading every account of the platform.
    fn live_accounts_with_role(
        &self,
        role: Role,
        realm: Option<&RealmId>,
        limit: u32,
    ) -> Result<Vec<Account>>;
}

/// OAuth clients.
pub trait ClientStore: Send + Sync {
    /// Registers a client; `Conflict` if the id is taken in that realm.
    fn create_client(&self, client: &Client) -> Result<()>;
    /// A client by realm and id.
    fn get_client(&self, realm: &RealmId, id: &ClientId) -> Result<Option<Client>>;
    /// A realm's clients.
    fn list_clients(&self, realm: &RealmId) -> Result<Vec<Client>>;
}

/// Signing keys.
pub trait KeyStore: Send + Sync {
    /// Stores a new key; `Conflict` if the kid exists (in any realm).
    fn insert_key(&self, key: &KeyRecord) -> Result<()>;
    /// A key by kid, whatever its realm.
    fn get_key(&self, kid: &Kid) -> Result<Option<KeyRecord>>;
    /// Keys, optionally of one realm, in the order they were inserted. Key states depend on
    /// this order: of two keys activating in the same second, the later insertion wins.
    fn list_keys(&self, realm: Option<&RealmId>) -> Result<Vec<KeyRecord>>;
    /// Marks a key revoked; `false` if it was revoked already.
    fn revoke_key(&self, kid: &Kid, at: UnixTime) -> Result<bool>;
    /// Replaces a key's sealed private half (re-wrapping under a new key-encryption key).
    fn replace_sealed(&self, kid: &Kid, sealed: &[u8]) -> Result<()>;
    /// A counter bumped by every key change, so caches know when to reload.
    fn key_generation(&self) -> Result<i64>;
}

/// How old the generation counters ([`LedgerStore::generations`]) may be, part of the contract
/// every backend honours: a change committed through a store is seen by every `generations`
/// call on that store that starts after the write returned; one committed by another process
/// (the CLI, the signer, another node) by every call that starts this long after it committed;
/// and a store that wrote waits this long before it closes, so that a revoking command has
/// taken effect everywhere when it returns. Reading the counters may cost as much as the rest
/// of a cached validation, so a backend may share one read between calls for this long.
pub const GENERATIONS_STALE_AFTER: std::time::Duration = std::time::Duration::from_millis(25);

/// The issuance ledger.
pub trait LedgerStore: Send + Sync {
    /// Durably records minted tokens. Must be on disk when this returns.
    fn record_tokens(&self, entries: &[LedgerEntry]) -> Result<()> {
        self.record_issuance(entries, &[])
    }
    /// Durably records minted tokens together with their audit records, atomically (one
    /// transaction). Must be on disk when this returns.
    fn record_issuance(&self, entries: &[LedgerEntry], audit: &[AuditRecord]) -> Result<()> {
        self.submit_issuance(entries, audit, None)
            .wait()
            .map(|_| ())
    }
    /// Queues minted tokens and their audit records for one atomic durable write; the
    /// completion answers once they are on disk (or failed). The tokens must not be handed
    /// out before it answers. The write may share a commit with others and is answered for
    /// itself, as the group-commit contract (module docs) says.
    ///
    /// `rotates` names the refresh token these tokens replace (and when): the same
    /// transaction marks it used, so a refresh costs one durable write. If it was used before
    /// (or is not a refresh token) nothing is written and the completion answers
    /// [`Error::Consumed`](crate::Error::Consumed): the caller is looking at a reuse. Tokens of
    /// a refresh family revoked before the write are not written either, nor are those of a
    /// rotation whose token is no longer live — revoked, its session ended, its account
    /// disabled ([`Error::FamilyRevoked`](crate::Error::FamilyRevoked)): the write decides,
    /// whatever the caller read before. Tokens issued under a sign-in session are written only
    /// while that session is live and its account enabled and at the session's credential
    /// epoch ([`Error::CredentialsChanged`](crate::Error::CredentialsChanged) otherwise).
    fn submit_issuance(
        &self,
        entries: &[LedgerEntry],
        audit: &[AuditRecord],
        rotates: Option<(&Jti, UnixTime)>,
    ) -> crate::Completion;
    /// A ledger entry by jti; its `revoked_at` is the token's own revocation or, failing
    /// that, its family's. Point lookups like this one and [`LedgerStore::ledger_view`] are
    /// made on async tasks (the token endpoint's refresh grant): a backend must answer them
    /// without waiting behind long queries (SQLite: the lookup readers).
    fn get_token(&self, jti: &Jti) -> Result<Option<LedgerEntry>>;
    /// Revokes one token; `false` if unknown or already revoked by itself (a token revoked
    /// only through its family is marked too).
    fn revoke_token(&self, jti: &Jti, at: UnixTime) -> Result<bool>;
    /// Revokes every token of a refresh family, those yet to be issued included (issuing
    /// into it fails from then on); `false` if it was revoked already.
    fn revoke_family(&self, family_id: &str, at: UnixTime) -> Result<bool>;
    /// Deletes at most `limit` ledger rows of tokens minted before `minted_before` that expired
    /// before `expired_before`, oldest first (found by their jti's time prefix,
    /// [`crate::push_jti_time_prefix`]: no index beyond the key); returns how many went.
    /// Family revocations are kept: a family's tokens are not marked one by one, and a token
    /// minted to live longer than today's configuration says would otherwise come back.
    fn prune_ledger(
        &self,
        minted_before: UnixTime,
        expired_before: UnixTime,
        limit: u32,
    ) -> Result<u64>;
    /// Revokes, in one transaction, every live session and unexpired token `scope` covers;
    /// returns how many sessions and tokens it newly revoked (a token already revoked through
    /// its family is not counted).
    fn revoke_scope(&self, scope: &RevokeScope, at: UnixTime) -> Result<(u64, u64)>;
    /// The key and revocation generation counters, read together. The revocation counter is
    /// bumped by anything that can invalidate a token already issued (a revoked token, family
    /// or session, a disabled account), so a validator's cache of verified tokens is fresh
    /// exactly while the counters are unchanged. The values may be up to
    /// [`GENERATIONS_STALE_AFTER`] old for changes made by another process; a change
    /// committed through this store is seen by every call that starts after the write
    /// returned.
    fn generations(&self) -> Result<Generations>;
    /// Everything the validator (and the refresh grant) needs about a jti, in one read: its
    /// ledger row (revoked as in [`LedgerStore::get_token`]), its session, its subject's
    /// account, and whether `client` is registered in `realm`.
    fn ledger_view(&self, jti: &Jti, realm: &RealmId, client: &ClientId) -> Result<LedgerView>;
}

/// Sign-in sessions and authorization codes.
pub trait SessionStore: Send + Sync {
    /// Creates a session, if its account is enabled and still at the session's
    /// `credential_epoch` when the write commits; otherwise
    /// [`Error::CredentialsChanged`](crate::Error::CredentialsChanged) and nothing is stored.
    fn create_session(&self, session: &Session) -> Result<()>;
    /// A session by id. Like [`LedgerStore::get_token`], called on async tasks.
    fn get_session(&self, id: &SessionId) -> Result<Option<Session>>;
    /// Revokes a session; `false` if unknown or already revoked.
    fn revoke_session(&self, id: &SessionId, at: UnixTime) -> Result<bool>;
    /// Stores an authorization code.
    fn create_auth_code(&self, code: &AuthCode) -> Result<()>;
    /// A code by its hash, as it is (read only: checking a code must not use it up, or
    /// whoever holds a copy could burn it for its rightful client).
    fn get_auth_code(&self, code_hash: &[u8]) -> Result<Option<AuthCode>>;
    /// Marks a code used and records the refresh family its exchange starts, in one write;
    /// `false` if it was used already (a replay raced this exchange). A replay seen after this
    /// returns finds the family to revoke.
    fn consume_auth_code(&self, code_hash: &[u8], at: UnixTime, family_id: &str) -> Result<bool>;
}

/// The audit log. There is deliberately no update or delete.
pub trait AuditStore: Send + Sync {
    /// Appends records; returns their ids in order once they are durable.
    fn append_audit(&self, records: &[AuditRecord]) -> Result<Vec<i64>> {
        self.submit_audit(records).wait()
    }
    /// Queues records for appending; the completion answers (ids in order) once they are
    /// durable, under the group-commit contract (module docs). Async callers `.await` it
    /// instead of blocking a thread.
    fn submit_audit(&self, records: &[AuditRecord]) -> crate::Completion;
    /// Records matching a query, oldest first.
    fn search_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// How many records match a query (ignores `limit` and `after_id`).
    fn count_audit(&self, query: &AuditQuery) -> Result<u64>;
    /// Whether any record matches (cheaper than counting: stops at the first).
    /// The time of the newest record matching `query`, if any.
    fn latest_audit_time(&self, query: &AuditQuery) -> Result<Option<UnixTime>>;
    fn audit_exists(&self, query: &AuditQuery) -> Result<bool>;
    /// How many distinct values of `column` the matching records have.
    fn count_distinct_audit(&self, query: &AuditQuery, column: AuditColumn) -> Result<u64>;
    /// The total length of `details.items` over the matching records (mail items touched).
    fn sum_audit_items(&self, query: &AuditQuery) -> Result<u64>;
}

/// A column of the audit log that can be counted distinct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditColumn {
    /// Who acted.
    Actor,
    /// The source address.
    SourceIp,
    /// The network a sign-in's source counts as (`details.source_network`), or its address
    /// for records that name none.
    SourceNetwork,
    /// The client.
    ClientId,
}

/// Alerts and the detector's position in the audit log.
pub trait AlertStore: Send + Sync {
    /// Raises `alert`, or, if one with the same realm, rule and dedup key is not resolved and
    /// was last seen at most `window` seconds before `alert.first_seen`, counts it there (as
    /// [`Alert::absorb`] does: count added, evidence appended and details merged, bounded).
    /// Returns the alert's id and whether it is new. An attack that keeps going is one alert;
    /// one that comes back after a quiet `window` is news again.
    fn raise_alert(&self, alert: &Alert, window: i64) -> Result<(i64, bool)>;
    /// What a detector pass writes, in one transaction: each of `alerts` raised or counted as
    /// [`Self::raise_alert`] does, and the consumer `cursor` moved from `from` to `to`. If the
    /// cursor is no longer at `from` (another detector — `serve`, `keypost alerts scan` —
    /// took this batch), nothing is written and the answer is `None`: every audit record is
    /// counted on its alert exactly once.
    fn raise_alerts(
        &self,
        alerts: &[Alert],
        window: i64,
        cursor: &str,
        from: i64,
        to: i64,
    ) -> Result<Option<Vec<(i64, bool)>>>;
    /// Alerts with ids above `after_id`, oldest first, at most `limit`: how a consumer (the
    /// webhook) walks every alert once, in order.
    fn alerts_after(&self, after_id: i64, limit: u32) -> Result<Vec<Alert>>;
    /// Decides whether the new alert `id` is mailed: yes while fewer than `cap` alerts of its
    /// realm (or of the provider, for none) were mailed since `since`; otherwise it is held
    /// for the summary ([`Self::held_alerts`]). One transaction, so two detectors (`serve`
    /// and `keypost alerts scan`) never both take the last place. Recorded at `at`.
    fn claim_alert_mail(&self, id: i64, since: UnixTime, cap: u32, at: UnixTime) -> Result<bool>;
    /// Alerts held back from mail before `before` and not yet summarized, oldest first, at
    /// most `limit`.
    fn held_alerts(&self, before: UnixTime, limit: u32) -> Result<Vec<Alert>>;
    /// Records that held alerts were named in a summary mail.
    fn set_alerts_summarized(&self, ids: &[i64]) -> Result<()>;
    /// Moves alert `id` into `consumer`'s durable retry queue (attempts counted, next try at
    /// `next_at`) and, in the same transaction, its cursor past it: an alert is never behind
    /// the cursor without being delivered or queued here.
    fn defer_alert_delivery(
        &self,
        consumer: &str,
        id: i64,
        next_at: UnixTime,
        error: &str,
    ) -> Result<()>;
    /// The alerts in `consumer`'s retry queue due at `now`, oldest alert first, at most
    /// `limit`, each with the attempts made so far.
    fn due_alert_retries(
        &self,
        consumer: &str,
        now: UnixTime,
        limit: u32,
    ) -> Result<Vec<(Alert, u32)>>;
    /// Removes a delivered alert from `consumer`'s retry queue.
    fn alert_retry_done(&self, consumer: &str, id: i64) -> Result<()>;
    /// Alerts, newest first: of one realm (or all), in one status (or any).
    fn list_alerts(
        &self,
        realm: Option<&RealmId>,
        status: Option<AlertStatus>,
        limit: u32,
    ) -> Result<Vec<Alert>>;
    /// One alert.
    fn get_alert(&self, id: i64) -> Result<Option<Alert>>;
    /// Moves an alert to `status`; `false` if there is no such alert.
    fn set_alert_status(
        &self,
        id: i64,
        status: AlertStatus,
        by: &str,
        at: UnixTime,
    ) -> Result<bool>;
    /// How far a background consumer of the log (`detector`, `syslog`, `webhook`) has got:
    /// the last id it handled, 0 if none.
    fn cursor(&self, name: &str) -> Result<i64>;
    /// Records that the consumer `name` handled everything up to `id`.
    fn set_cursor(&self, name: &str, id: i64) -> Result<()>;
    /// A rule's setting for a realm: enabled, and its threshold if set.
    fn rule_setting(&self, realm: &RealmId, rule: &str) -> Result<Option<(bool, Option<u64>)>>;
    /// Sets a rule's setting for a realm.
    fn set_rule_setting(
        &self,
        realm: &RealmId,
        rule: &str,
        enabled: bool,
        threshold: Option<u64>,
    ) -> Result<()>;
}

/// The audit hash chain ([`crate::chain`]): heads, records in append order, checkpoints.
pub trait AuditChainStore: Send + Sync {
    /// Every chain's head: name, last position, last link.
    fn audit_heads(&self) -> Result<Vec<(String, u64, crate::chain::Link)>>;
    /// Records of `chain` (all chains when `None`) with ids above `after_id`, in append
    /// order, at most `limit`.
    fn audit_chain(
        &self,
        chain: Option<&str>,
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<crate::chain::ChainedRecord>>;
    /// Records of `chain` after position `after_seq`, by position, at most `limit`.
    fn audit_chain_after_seq(
        &self,
        chain: &str,
        after_seq: u64,
        limit: u64,
    ) -> Result<Vec<crate::chain::ChainedRecord>>;
    /// Stores a signed checkpoint (a second one for the same position is ignored).
    fn add_checkpoint(&self, checkpoint: &crate::chain::Checkpoint) -> Result<()>;
    /// A chain's checkpoints, in number order.
    fn checkpoints(&self, chain: &str) -> Result<Vec<crate::chain::Checkpoint>>;
    /// At most `limit` of a chain's checkpoints numbered after `after`, in number order (the
    /// published pages).
    fn checkpoints_after(
        &self,
        chain: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<crate::chain::Checkpoint>>;
    /// Where retention would cut `chain`: the last position (and its link) of the records
    /// older than `before`, and how many there are; `None` if none are.
    fn expiry_point(
        &self,
        chain: &str,
        before: UnixTime,
    ) -> Result<Option<(u64, crate::chain::Link, u64)>>;
    /// Removes the chain's records through `tombstone.through_seq` and stores the tombstone,
    /// in one transaction; `Conflict` if the chain no longer has that link there.
    fn expire_audit(&self, tombstone: &crate::chain::Tombstone) -> Result<u64>;
    /// The chain's latest tombstone.
    fn tombstone(&self, chain: &str) -> Result<Option<crate::chain::Tombstone>>;
}

/// Mailboxes and email metadata. Every change bumps the account's modification sequence
/// (`modseq`), from which JMAP states and IMAP MODSEQs are derived.
pub trait MailStore: Send + Sync {
    /// Creates mailboxes (one transaction); `Conflict` on a duplicate name or role.
    fn create_mailboxes(&self, mailboxes: &[Mailbox]) -> Result<()>;
    /// An account's mailboxes, by sort order then name.
    fn list_mailboxes(&self, account: &AccountId) -> Result<Vec<Mailbox>>;
    /// Stores an email's metadata, its mailbox memberships, the message ids it refers to and its
    /// search text, durably; returns the account's new modseq.
    fn insert_email(
        &self,
        email: &EmailRecord,
        mailboxes: &[MailboxId],
        references: &[String],
        search: &SearchText,
    ) -> Result<i64>;
    /// The thread of an email of `account` whose Message-ID is in `parents`, or one that refers
    /// to `own` (a reply that arrived first).
    fn find_thread(
        &self,
        account: &AccountId,
        parents: &[String],
        own: Option<&str>,
    ) -> Result<Option<ThreadId>>;
    /// An email of `account` with exactly this content, if any (imports are idempotent).
    fn email_with_blob(&self, account: &AccountId, blob: &BlobId) -> Result<Option<EmailId>>;
    /// An email by id.
    fn get_email(&self, id: &EmailId) -> Result<Option<EmailRecord>>;
    /// How many emails a mailbox (or the whole account) holds.
    fn count_emails(&self, account: &AccountId, mailbox: Option<&MailboxId>) -> Result<u64>;
    /// The account's current modseq (0 if it never had mail).
    fn mail_modseq(&self, account: &AccountId) -> Result<i64>;
    /// Ids of the account's emails that `query` selects, in its order, from `page.position`,
    /// at most `page.limit`; and the total count when `page.count_total`.
    fn query_emails(
        &self,
        account: &AccountId,
        query: &EmailQuery,
        page: QueryPage,
    ) -> Result<(Vec<EmailId>, Option<u64>)>;
    /// Threads that gained, lost (`updated`), got (`created`) or lost all (`destroyed`) their
    /// emails after `since`.
    fn thread_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<ThreadId>>>;
    /// The mailboxes each of `emails` is in.
    fn email_mailboxes(&self, emails: &[EmailId]) -> Result<Vec<(EmailId, MailboxId)>>;
    /// The account's emails in a thread, oldest first.
    fn thread_emails(&self, account: &AccountId, thread: &ThreadId) -> Result<Vec<EmailId>>;
    /// Unread (no `$seen`) emails in a mailbox.
    fn count_unread(&self, account: &AccountId, mailbox: &MailboxId) -> Result<u64>;
    /// Replaces an email's keywords and/or mailboxes; `NotFound` if the account has no such
    /// email. Returns the new modseq.
    fn update_email(
        &self,
        account: &AccountId,
        id: &EmailId,
        keywords: Option<&[String]>,
        mailboxes: Option<&[MailboxId]>,
    ) -> Result<i64>;
    /// Destroys an email (its row stays as a tombstone for /changes); `NotFound` if absent.
    fn destroy_email(&self, account: &AccountId, id: &EmailId) -> Result<i64>;
    /// Emails created, updated and destroyed after `since` (a modseq), at most `max` ids in
    /// all; `None` if `since` is in the future.
    fn email_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<EmailId>>>;
    /// Mailboxes created, updated (including their counts) and destroyed after `since`.
    fn mailbox_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<MailboxId>>>;
    /// Renames, moves or reorders a mailbox; `NotFound` if the account has no such mailbox,
    /// `Conflict` if a sibling has the name.
    fn update_mailbox(
        &self,
        account: &AccountId,
        id: &MailboxId,
        name: &str,
        parent: Option<&MailboxId>,
        sort_order: u32,
    ) -> Result<i64>;
    /// Destroys a mailbox. Its emails that are in no other mailbox are destroyed with it when
    /// `remove_emails`; otherwise a non-empty mailbox is a `Conflict`.
    fn destroy_mailbox(
        &self,
        account: &AccountId,
        id: &MailboxId,
        remove_emails: bool,
    ) -> Result<i64>;
    /// The account's vacation response (disabled by default).
    fn get_vacation(&self, account: &AccountId) -> Result<Vacation>;
    /// Replaces the account's vacation response; returns the new modseq.
    fn set_vacation(&self, account: &AccountId, vacation: &Vacation) -> Result<i64>;
    /// Records a vacation reply to `sender` at `at` unless one was sent at or after `since`;
    /// `true` if the caller should send (atomic, so concurrent deliveries reply once).
    fn claim_vacation_reply(
        &self,
        account: &AccountId,
        sender: &str,
        since: UnixTime,
        at: UnixTime,
    ) -> Result<bool>;
    /// Records that `account` uploaded a blob at `at` (which gives it access to the blob); the
    /// same bytes uploaded again count from `at` anew.
    fn record_upload(
        &self,
        account: &AccountId,
        blob: &BlobId,
        media_type: &str,
        size: u64,
        at: UnixTime,
    ) -> Result<()>;
    /// Whether `account` uploaded the blob.
    fn has_upload(&self, account: &AccountId, blob: &BlobId) -> Result<bool>;
    /// The account's uploads that no live email of the account is stored as, oldest first.
    fn pending_uploads(&self, account: &AccountId) -> Result<Vec<PendingUpload>>;
    /// Forgets `account`'s upload of `blob`; `true` if there was one.
    fn delete_upload(&self, account: &AccountId, blob: &BlobId) -> Result<bool>;
    /// Forgets up to `limit` uploads (of any account) made before `before`; the blobs they were.
    fn expire_uploads(&self, before: UnixTime, limit: usize) -> Result<Vec<BlobId>>;
    /// Whether anything is stored as `blob`: an email of any account (destroyed ones too) or an
    /// upload. A blob file may be removed only when this is `false`.
    fn blob_in_use(&self, blob: &BlobId) -> Result<bool>;
}

/// Identities, submissions and quotas: what an account sends as, what it sent, how much it
/// may keep. Identities and submissions share the account's mail modseq, as JMAP states.
pub trait SendingStore: Send + Sync {
    /// The account's live identities, primary first.
    fn list_identities(&self, account: &AccountId) -> Result<Vec<Identity>>;
    /// Stores a new identity.
    fn create_identity(&self, identity: &Identity) -> Result<i64>;
    /// Replaces an identity's fields; `NotFound` if the account has no such identity.
    fn update_identity(&self, identity: &Identity) -> Result<i64>;
    /// Destroys a (non-primary) identity; `NotFound` if there is none to destroy.
    fn destroy_identity(&self, account: &AccountId, id: &IdentityId) -> Result<i64>;
    /// Identities changed after `since`.
    fn identity_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<IdentityId>>>;
    /// Records a submission.
    fn insert_submission(&self, submission: &Submission) -> Result<i64>;
    /// The account's live submissions, newest first.
    fn list_submissions(&self, account: &AccountId) -> Result<Vec<Submission>>;
    /// Forgets a submission (the email itself stays); `NotFound` if there is none.
    fn destroy_submission(&self, account: &AccountId, id: &SubmissionId) -> Result<i64>;
    /// Submissions changed after `since`.
    fn submission_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<SubmissionId>>>;
    /// Bytes of live mail the account holds.
    fn mail_usage(&self, account: &AccountId) -> Result<u64>;
    /// The account's own storage limit setting.
    fn account_quota(&self, account: &AccountId) -> Result<QuotaSetting>;
    /// Sets the account's storage limit.
    fn set_account_quota(&self, account: &AccountId, quota: QuotaSetting) -> Result<()>;
}

/// Everything Keypost stores.
pub trait Store:
    AlertStore
    + AuditChainStore
    + SendingStore
    + RealmStore
    + AccountStore
    + ClientStore
    + KeyStore
    + LedgerStore
    + SessionStore
    + AuditStore
    + MailStore
{
}

impl<T> Store for T where
    T: AlertStore
        + AuditChainStore
        + SendingStore
        + RealmStore
        + AccountStore
        + ClientStore
        + KeyStore
        + LedgerStore
        + SessionStore
        + AuditStore
        + MailStore
{
}
