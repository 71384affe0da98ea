//! The embedded SQLite backend: one file in the data directory, WAL mode, `synchronous=FULL`
//! so a committed ledger row survives power loss, and versioned migrations applied on open.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, Row, ToSql, params};

use crate::completion::{Completer, Completion};
use crate::ids::{AccountId, ClientId, Jti, Kid, RealmId, SessionId};
use crate::model::*;
use crate::traits::*;
use crate::{Error, Result};

/// Schema migrations, applied in order; the index + 1 is the schema version. Never edit a
/// migration that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE realms (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    display_name TEXT NOT NULL,
    access_token_alg TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE domains (
    domain TEXT PRIMARY KEY,
    realm TEXT NOT NULL REFERENCES realms(id)
) STRICT;
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    realm TEXT NOT NULL REFERENCES realms(id),
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX accounts_realm ON accounts(realm, email);
CREATE TABLE clients (
    realm TEXT NOT NULL REFERENCES realms(id),
    client_id TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_hash BLOB,
    redirect_uris TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    first_party INTEGER NOT NULL,
    id_token_alg TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (realm, client_id)
) STRICT;
CREATE TABLE keys (
    kid TEXT PRIMARY KEY,
    realm TEXT NOT NULL REFERENCES realms(id),
    purpose TEXT NOT NULL,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    sealed BLOB NOT NULL,
    origin TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    activates_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE INDEX keys_realm ON keys(realm, created_at);
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
INSERT INTO meta(name, value) VALUES ('key_generation', 0);
CREATE TABLE ledger (
    jti TEXT PRIMARY KEY,
    realm TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    client_id TEXT NOT NULL,
    kid TEXT,
    session_id TEXT,
    family_id TEXT,
    scope TEXT NOT NULL,
    audience TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    token_hash BLOB NOT NULL,
    revoked_at INTEGER,
    used_at INTEGER
) STRICT;
CREATE INDEX ledger_family ON ledger(family_id) WHERE family_id IS NOT NULL;
CREATE INDEX ledger_kid ON ledger(kid);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    realm TEXT NOT NULL,
    account TEXT NOT NULL,
    auth_time INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE TABLE auth_codes (
    code_hash BLOB PRIMARY KEY,
    realm TEXT NOT NULL,
    client_id TEXT NOT NULL,
    account TEXT NOT NULL,
    session_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT,
    code_challenge TEXT,
    resource TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    family_id TEXT
) STRICT;
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    realm TEXT,
    actor TEXT,
    operation TEXT NOT NULL,
    target TEXT,
    result TEXT NOT NULL,
    source_ip TEXT,
    user_agent TEXT,
    client_id TEXT,
    jti TEXT,
    kid TEXT,
    details TEXT NOT NULL
) STRICT;
CREATE INDEX audit_realm_time ON audit(realm, time);
CREATE INDEX audit_op_time ON audit(operation, time);
CREATE INDEX audit_actor_time ON audit(actor, time);
CREATE INDEX audit_ip_time ON audit(source_ip, time);
CREATE INDEX audit_kid ON audit(kid) WHERE kid IS NOT NULL;
CREATE INDEX audit_jti ON audit(jti) WHERE jti IS NOT NULL;
-- The audit log is append-only: the database itself refuses edits made through SQL.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
"#,
    r#"
-- Every change that can turn a valid token invalid bumps one counter, so validators may cache
-- verified tokens and still see a revocation on their next validation.
INSERT INTO meta(name, value) VALUES ('revocation_generation', 0);
CREATE TRIGGER ledger_revoked AFTER UPDATE OF revoked_at ON ledger
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
CREATE TRIGGER session_revoked AFTER UPDATE OF revoked_at, expires_at ON sessions
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
CREATE TRIGGER account_disabled AFTER UPDATE OF disabled, realm ON accounts
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
CREATE TRIGGER client_changed AFTER DELETE ON clients
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
"#,
    r#"
-- A password someone else chose (first start, an admin's reset) must be replaced by the user
-- at the next sign-in, before any token is issued.
ALTER TABLE accounts ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Mail. Rows carry the modseq that created, last updated and destroyed them, so JMAP /changes
-- and IMAP CONDSTORE are queries, not a separate log.
CREATE TABLE mail_state (
    account TEXT PRIMARY KEY,
    modseq INTEGER NOT NULL
) STRICT;
CREATE TABLE mailboxes (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    role TEXT,
    parent TEXT REFERENCES mailboxes(id),
    sort_order INTEGER NOT NULL DEFAULT 0,
    created_modseq INTEGER NOT NULL,
    updated_modseq INTEGER NOT NULL,
    destroyed_modseq INTEGER
) STRICT;
CREATE UNIQUE INDEX mailboxes_name ON mailboxes(account, ifnull(parent, ''), name) WHERE destroyed_modseq IS NULL;
CREATE UNIQUE INDEX mailboxes_role ON mailboxes(account, role) WHERE role IS NOT NULL AND destroyed_modseq IS NULL;
CREATE TABLE emails (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts(id),
    blob_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    message_id TEXT,
    subject TEXT NOT NULL,
    from_json TEXT NOT NULL,
    to_json TEXT NOT NULL,
    cc_json TEXT NOT NULL,
    sent_at INTEGER,
    received_at INTEGER NOT NULL,
    size INTEGER NOT NULL,
    preview TEXT NOT NULL,
    has_attachment INTEGER NOT NULL,
    keywords TEXT NOT NULL,
    created_modseq INTEGER NOT NULL,
    updated_modseq INTEGER NOT NULL,
    destroyed_modseq INTEGER
) STRICT;
CREATE INDEX emails_received ON emails(account, received_at);
CREATE INDEX emails_message_id ON emails(account, message_id) WHERE message_id IS NOT NULL;
CREATE INDEX emails_blob ON emails(account, blob_id);
CREATE INDEX emails_thread ON emails(thread_id);
CREATE TABLE email_mailboxes (
    email TEXT NOT NULL REFERENCES emails(id),
    mailbox TEXT NOT NULL REFERENCES mailboxes(id),
    PRIMARY KEY (email, mailbox)
) STRICT, WITHOUT ROWID;
CREATE INDEX email_mailboxes_mailbox ON email_mailboxes(mailbox, email);
-- Message-IDs an email refers to (In-Reply-To, References), for threading.
CREATE TABLE email_refs (
    account TEXT NOT NULL,
    ref_message_id TEXT NOT NULL,
    email TEXT NOT NULL REFERENCES emails(id)
) STRICT;
CREATE INDEX email_refs_ref ON email_refs(account, ref_message_id);
"#,
    r#"
-- Blobs an account uploaded (JMAP upload). Blobs are shared by content, so access is by owner.
CREATE TABLE uploads (
    account TEXT NOT NULL REFERENCES accounts(id),
    blob_id TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account, blob_id)
) STRICT, WITHOUT ROWID;
"#,
    r#"
-- Full-text search over subject, addresses and body; rowid = the emails row's rowid. Contentless:
-- the text lives in the blob, the index only points at rows.
CREATE VIRTUAL TABLE email_fts USING fts5(
    subject, from_text, to_text, body,
    content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2'
);
"#,
    r#"
CREATE TABLE vacation (
    account TEXT PRIMARY KEY REFERENCES accounts(id),
    enabled INTEGER NOT NULL,
    from_date INTEGER,
    to_date INTEGER,
    subject TEXT,
    text_body TEXT,
    html_body TEXT
) STRICT;
-- Who got a vacation reply when: one reply per sender per period, never a loop.
CREATE TABLE vacation_replies (
    account TEXT NOT NULL,
    sender TEXT NOT NULL,
    replied_at INTEGER NOT NULL,
    PRIMARY KEY (account, sender)
) STRICT, WITHOUT ROWID;
"#,
    r#"
-- Who an account sends as (JMAP Identity). The primary identity is the account's own address.
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    reply_to TEXT,
    bcc TEXT,
    text_signature TEXT NOT NULL,
    html_signature TEXT NOT NULL,
    is_primary INTEGER NOT NULL,
    created_modseq INTEGER NOT NULL,
    updated_modseq INTEGER NOT NULL,
    destroyed_modseq INTEGER
) STRICT;
CREATE INDEX identities_account ON identities(account);
-- What was sent, to whom, and how each delivery went (JMAP EmailSubmission).
CREATE TABLE submissions (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts(id),
    identity_id TEXT NOT NULL,
    email_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    envelope TEXT NOT NULL,
    send_at INTEGER NOT NULL,
    delivery TEXT NOT NULL,
    created_modseq INTEGER NOT NULL,
    updated_modseq INTEGER NOT NULL,
    destroyed_modseq INTEGER
) STRICT;
CREATE INDEX submissions_account ON submissions(account, send_at);
-- Storage quota: bytes of live mail per account, kept by triggers so no write path can forget.
ALTER TABLE mail_state ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
UPDATE mail_state SET used = (SELECT ifnull(sum(size), 0) FROM emails
    WHERE emails.account = mail_state.account AND destroyed_modseq IS NULL);
CREATE TRIGGER emails_used_insert AFTER INSERT ON emails BEGIN
    UPDATE mail_state SET used = used + NEW.size WHERE account = NEW.account;
END;
CREATE TRIGGER emails_used_destroy AFTER UPDATE OF destroyed_modseq ON emails
    WHEN OLD.destroyed_modseq IS NULL AND NEW.destroyed_modseq IS NOT NULL BEGIN
    UPDATE mail_state SET used = used - NEW.size WHERE account = NEW.account;
END;
-- Per-account limits; no row means the configured default.
CREATE TABLE quotas (
    account TEXT PRIMARY KEY REFERENCES accounts(id),
    limit_bytes INTEGER
) STRICT;
"#,
    r#"
-- The audit hash chain (crate::chain): each tenant's records linked in order. Records written
-- before this migration are linked by SqliteStore::link_unchained_audit at open.
ALTER TABLE audit ADD COLUMN chain TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN seq INTEGER;
ALTER TABLE audit ADD COLUMN link BLOB;
CREATE UNIQUE INDEX audit_chain_seq ON audit(chain, seq);
CREATE TABLE audit_heads (
    chain TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    link BLOB NOT NULL
) STRICT;
CREATE TABLE audit_checkpoints (
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    link BLOB NOT NULL,
    time INTEGER NOT NULL,
    kid TEXT NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (chain, seq)
) STRICT;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
"#,
    r#"
-- Arrival order made total (id breaks ties), so a search sorted by arrival can walk the index
-- and stop after one page.
DROP INDEX emails_received;
CREATE INDEX emails_received ON emails(account, received_at, id);
"#,
    r#"
-- Alerts raised by the detection rules (crates/detect), and where the detector is in the log.
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    realm TEXT,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    count INTEGER NOT NULL,
    evidence TEXT NOT NULL,
    details TEXT NOT NULL,
    status TEXT NOT NULL,
    status_by TEXT,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX alerts_open ON alerts(realm, rule, dedup_key, status);
CREATE INDEX alerts_realm ON alerts(realm, id);
CREATE TABLE detector_state (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
-- Per-tenant rule settings; no row means the rule's defaults.
CREATE TABLE rule_settings (
    realm TEXT NOT NULL,
    rule TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    threshold INTEGER,
    PRIMARY KEY (realm, rule)
) STRICT;
-- The detector looks up each user's history by actor and operation.
CREATE INDEX audit_actor_op ON audit(actor, operation, id);
"#,
    r#"
-- Retention: expired prefixes of a chain leave a signed tombstone the chain continues from.
CREATE TABLE audit_tombstones (
    chain TEXT NOT NULL,
    through_seq INTEGER NOT NULL,
    link BLOB NOT NULL,
    time INTEGER NOT NULL,
    records INTEGER NOT NULL,
    kid TEXT NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (chain, through_seq)
) STRICT;
CREATE INDEX audit_chain_time ON audit(chain, time);
CREATE TRIGGER audit_tombstones_no_update BEFORE UPDATE ON audit_tombstones
    BEGIN SELECT RAISE(ABORT, 'audit tombstones are append-only'); END;
CREATE TRIGGER audit_tombstones_no_delete BEFORE DELETE ON audit_tombstones
    BEGIN SELECT RAISE(ABORT, 'audit tombstones are append-only'); END;
"#,
    r#"
-- Fewer indexes per audit row (each costs every append): a record's chain is its realm, so
-- (chain, time) serves realm queries, and (actor, operation, id) serves actor queries.
DROP INDEX audit_realm_time;
DROP INDEX audit_actor_time;
"#,
    r#"
-- The revoked refresh tokens of each family, for the check every issuance into a family makes
-- (a rotating family grows by two rows per refresh; scanning it made each refresh cost more).
CREATE INDEX ledger_revoked_families ON ledger(family_id)
    WHERE family_id IS NOT NULL AND kind = 'refresh' AND revoked_at IS NOT NULL;
"#,
    r#"
-- Validators may remember that a token's subject is no account (a client's own token) or a
-- session's state: an account appearing, or an account or session row disappearing, must
-- reach them like a revocation does.
CREATE TRIGGER account_created AFTER INSERT ON accounts
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
CREATE TRIGGER account_deleted AFTER DELETE ON accounts
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
CREATE TRIGGER session_deleted AFTER DELETE ON sessions
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
"#,
    r#"
-- Realms (with their domains) and clients are read on every token request and change rarely:
-- any change bumps a counter, so readers may keep them in memory while it is unchanged.
INSERT INTO meta(name, value) VALUES ('directory_generation', 0);
CREATE TRIGGER realm_inserted AFTER INSERT ON realms
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
CREATE TRIGGER realm_updated AFTER UPDATE ON realms
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
CREATE TRIGGER realm_deleted AFTER DELETE ON realms
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
CREATE TRIGGER domain_inserted AFTER INSERT ON domains
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
CREATE TRIGGER domain_updated AFTER UPDATE ON domains
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
CREATE TRIGGER domain_deleted AFTER DELETE ON domains
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
CREATE TRIGGER client_inserted AFTER INSERT ON clients
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
CREATE TRIGGER client_updated AFTER UPDATE ON clients
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
CREATE TRIGGER client_deleted AFTER DELETE ON clients
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'directory_generation'; END;
"#,
    r#"
-- The token endpoint may remember an account's name, email and role (the claims and audit
-- actor of a refresh) while the revocation generation is unchanged: any change to them must
-- reach it like a disabled account does.
CREATE TRIGGER account_profile_changed AFTER UPDATE OF email, display_name, role ON accounts
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
"#,
    r#"
-- A refresh family's revocation is one fact, not a mark copied onto each of its rows: indexing
-- every row by family cost each refresh a random B-tree page (two fifths of a commit's WAL
-- frames under a refresh load). A row is revoked if it is, or its family is; tokens are not
-- issued into a revoked family. A family is revoked when one of its refresh tokens is.
CREATE TABLE revoked_families (
    family_id TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO revoked_families(family_id, revoked_at)
    SELECT family_id, MIN(revoked_at) FROM ledger INDEXED BY ledger_revoked_families
    WHERE family_id IS NOT NULL AND kind = 'refresh' AND revoked_at IS NOT NULL
    GROUP BY family_id;
CREATE TRIGGER family_revoked AFTER INSERT ON revoked_families
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
CREATE TRIGGER refresh_token_revoked AFTER UPDATE OF revoked_at ON ledger
    WHEN NEW.kind = 'refresh' AND NEW.family_id IS NOT NULL AND NEW.revoked_at IS NOT NULL
BEGIN INSERT OR IGNORE INTO revoked_families(family_id, revoked_at)
    VALUES (NEW.family_id, NEW.revoked_at); END;
DROP INDEX ledger_family;
DROP INDEX ledger_revoked_families;
"#,
    // 19: the scopes a client may be granted (JSON array); NULL for clients registered before,
    // which keep being granted any scope.
    r#"
ALTER TABLE clients ADD COLUMN scopes TEXT;
"#,
    // 20: a session's browser cookie is no longer its id (identity::SessionCookie): sessions
    // from before would outlive their browsers' cookies — no sign-out could find them — so
    // they end here, and with them the tokens issued under them. Everyone signs in again.
    r#"
UPDATE sessions SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER) WHERE revoked_at IS NULL;
"#,
    // 21: credential epochs (Account::credential_epoch). Sessions from before are at epoch 0,
    // like their accounts, so they stay valid. A new epoch is a revocation: whatever a cache
    // remembers of the account's sessions must be read again.
    r#"
ALTER TABLE accounts ADD COLUMN credential_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN credential_epoch INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER credentials_changed AFTER UPDATE OF credential_epoch ON accounts
BEGIN UPDATE meta SET value = value + 1 WHERE name = 'revocation_generation'; END;
"#,
    // 22: checkpoints are numbered and each names the one before it (crate::chain::Checkpoint),
    // so a checkpoint removed from the database shows. Those from before are numbered in order
    // of position and keep their first-format signatures (`prev` NULL).
    r#"
ALTER TABLE audit_checkpoints ADD COLUMN number INTEGER;
ALTER TABLE audit_checkpoints ADD COLUMN prev BLOB;
DROP TRIGGER audit_checkpoints_no_update;
UPDATE audit_checkpoints SET number = (SELECT count(*) FROM audit_checkpoints c
    WHERE c.chain = audit_checkpoints.chain AND c.seq <= audit_checkpoints.seq);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE UNIQUE INDEX audit_checkpoints_number ON audit_checkpoints(chain, number);
"#,
    // 23: alert delivery. Whether each new alert was mailed or held back by the per-tenant
    // hourly cap (and later named in a summary), so the cap and the summary survive a restart;
    // the webhook's durable retry queue; alert recipients found by role, not by reading every
    // account of the platform.
    r#"
ALTER TABLE alerts ADD COLUMN mail TEXT;
ALTER TABLE alerts ADD COLUMN mail_at INTEGER;
CREATE INDEX alerts_mail ON alerts(realm, mail, mail_at);
CREATE INDEX alerts_held ON alerts(mail_at) WHERE mail = 'held';
CREATE TABLE alert_retries (
    consumer TEXT NOT NULL,
    alert INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (consumer, alert)
) STRICT, WITHOUT ROWID;
CREATE INDEX alert_retries_due ON alert_retries(consumer, next_at);
CREATE INDEX accounts_role ON accounts(role, realm, email);
"#,
    // 24: sign-ins counted per source network (an IPv6 /64 is one source), for throttling.
    r#"
CREATE INDEX audit_source_network ON audit(json_extract(details, '$.source_network'), time)
    WHERE operation IN ('SignInFailed', 'SignInThrottled', 'SignInSucceeded');
"#,
    // 25: uploads expire and make room for newer ones (RFC 8620 §6.1), and a blob file goes
    // once nothing is stored as it: uploads are found by age and by blob, and emails by blob in
    // any account (the index by account and blob becomes one by blob and account, which serves
    // the lookups of both).
    r#"
CREATE INDEX uploads_created ON uploads(created_at);
CREATE INDEX uploads_blob ON uploads(blob_id);
DROP INDEX emails_blob;
CREATE INDEX emails_blob ON emails(blob_id, account);
"#,
];

/// The migration that introduced the audit chain (1-based).
const AUDIT_CHAIN_MIGRATION: usize = 9;

/// Read-only connections per file-backed store.
const READERS: usize = 4;

/// Read-only connections for key lookups only (see `SqliteStore::lookup_reader`).
const LOOKUP_READERS: usize = 2;

/// SQLite-backed [`Store`](crate::Store).
pub struct SqliteStore {
    // One writing connection, shared with the group committer's thread.
    writer: Arc<Writer>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Option<Checkpointer>,
    // Readers for everything that does not write: in WAL mode they read the last commit while
    // the writer holds its transaction (and its fsync), so validations never wait on a commit.
    readers: Vec<Mutex<Connection>>,
    /// Readers for single-row lookups by key only (a realm, a client): they never wait behind
    /// a search, so the token endpoint can do them on its own task.
    lookup_readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    directory: Directory,
}

/// The writing connection and the group committer's queue.
struct Writer {
    // Behind a mutex: statements take microseconds and SQLite serialises writers anyway.
    conn: Mutex<Connection>,
    /// Writers outside the group commit (alerts, mail, admin changes) waiting for `conn`. The
    /// committer lets them go first: under a steady stream of audit batches it would otherwise
    /// win the (unfair) mutex back every time and starve them.
    direct_waiting: std::sync::atomic::AtomicUsize,
    /// Transactions committed, for the checkpointer to tell whether there is work.
    commits: std::sync::atomic::AtomicU64,
    /// The generation counters as last read, and when that read began (see
    /// [`GENERATIONS_STALE_AFTER`]). Emptied by every direct write of this process.
    generations: Mutex<Option<(Generations, Instant)>>,
    /// When this process last wrote outside the group commit (see `Drop for SqliteStore`).
    last_direct_write: Mutex<Option<Instant>>,
    queue: Mutex<Queue>,
    /// Signalled when the queue stops being empty (or the store closes).
    work: Condvar,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    closing: bool,
}

/// One queued write and the completion its writer waits on.
struct Pending {
    write: Write,
    done: Completer,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        // The checkpointer below does this work; SQLite's own stays as a backstop against an
        // ever-growing WAL should that thread fall far behind.
        conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
        let mut store = Self::init(conn)?;
        store.checkpointer = Some(Checkpointer::start(path, store.writer.clone())?);
        for i in 0..READERS + LOOKUP_READERS {
            let r = Connection::open(path)?;
            r.busy_timeout(std::time::Duration::from_secs(10))?;
            r.pragma_update(None, "query_only", "ON")?;
            add_functions(&r)?;
            if i < READERS {
                store.readers.push(Mutex::new(r));
            } else {
                store.lookup_readers.push(Mutex::new(r));
            }
        }
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL lets the CLI read and write while `serve` runs; FULL makes every commit durable.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Statement journals (for statements that may fail midway) would otherwise be
        // temporary files; in memory they cost a copy.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Every write transaction here begins IMMEDIATE (see `transaction_with_behavior`): many
        // read before they write (chain heads, alert de-duplication), and a deferred transaction
        // that must upgrade to a write lock fails at once with "database is locked" when another
        // process (the CLI beside `serve`) committed meanwhile, where IMMEDIATE simply waits.
        add_functions(&conn)?;
        let writer = Arc::new(Writer {
            conn: Mutex::new(conn),
            direct_waiting: Default::default(),
            commits: Default::default(),
            generations: Mutex::default(),
            last_direct_write: Mutex::default(),
            queue: Mutex::default(),
            work: Condvar::new(),
        });
        let committer = {
            let writer = writer.clone();
            std::thread::Builder::new()
                .name("keypost-commit".into())
                .spawn(move || writer.run_committer())
                .map_err(|e| Error::Backend(format!("starting the committer: {e}")))?
        };
        let store = Self {
            writer,
            committer: Mutex::new(Some(committer)),
            checkpointer: None,
            readers: Vec::new(),
            lookup_readers: Vec::new(),
            next_reader: Default::default(),
            directory: Directory::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version this database is at.
    pub fn schema_version(&self) -> Result<u32> {
        let v: u32 = self
            .reader()?
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(v)
    }

    fn migrate(&self) -> Result<()> {
        // Not `conn()`: opening a store that is up to date changes nothing, so a read-only
        // command need not wait out the generations' bound when it closes.
        let mut conn = self.writer.lock_conn();
        let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current > MIGRATIONS.len() {
            return Err(Error::Corrupt(format!(
                "database schema version {current} is newer than this binary ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            if i + 1 == AUDIT_CHAIN_MIGRATION {
                // Once, with the migration: records from before the chain get linked. Never on
                // an ordinary open, or rows written into the file by hand would be laundered.
                audit_chain::link_existing(&tx)?;
            }
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
            self.writer.changed();
            tracing::info!(version = i + 1, "applied database migration");
        }
        Ok(())
    }

    /// A read-only connection: a free one if there is one, else the next in turn. An
    /// in-memory database has no separate readers (each connection would be its own database).
    fn reader(&self) -> Result<MutexGuard<'_, Connection>> {
        self.pick(&self.readers)
    }

    /// A reader for one lookup by key, never held by a long query: callers on an async task
    /// wait at most for another such lookup.
    fn lookup_reader(&self) -> Result<MutexGuard<'_, Connection>> {
        self.pick(&self.lookup_readers)
    }

    /// A free connection of `pool` if there is one, else waits for one (the writer's, for an
    /// in-memory store, which has no readers).
    fn pick<'a>(&'a self, pool: &'a [Mutex<Connection>]) -> Result<MutexGuard<'a, Connection>> {
        let n = pool.len();
        if n == 0 {
            // An in-memory store: its only connection is the writer's.
            return Ok(self.writer.lock_conn());
        }
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Some(Ok(g)) = pool.get((start + i) % n).map(Mutex::try_lock) {
                return Ok(g);
            }
        }
        let slot = pool
            .get(start % n)
            .ok_or_else(|| Error::Backend("no reader".into()))?;
        Ok(slot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn conn(&self) -> Result<Direct<'_>> {
        self.writer.conn()
    }
}

// How this backend keeps `GENERATIONS_STALE_AFTER` (the contract is in traits.rs): the counters
// are read at most that often and the copy shared between reads, since reading them costs a
// SQLite read (≈ 2.5 µs, as much as the rest of a cached validation); every direct write of
// this process empties the shared copy; and a store that wrote waits the bound out before it
// closes, so a revoking command has taken effect everywhere when it returns.

/// The writing connection, held for a write outside the group commit. Dropping it empties the
/// shared generation counters: the write may have bumped one (the triggers of migration 4 do).
pub(crate) struct Direct<'a> {
    conn: MutexGuard<'a, Connection>,
    writer: &'a Writer,
}

impl std::ops::Deref for Direct<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Direct<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Direct<'_> {
    fn drop(&mut self) {
        self.writer.changed();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// WAL pages after which a commit checkpoints by itself (SQLite's default is 1,000).
const BACKSTOP_CHECKPOINT_PAGES: i64 = 20_000;

/// How often the checkpointer looks for committed work.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Copies committed WAL frames into the database file on a thread of its own, on its own
/// connection. SQLite's automatic checkpoint runs inside whichever commit crosses its
/// threshold — on the committer thread, the serial part of every write — and costs it an
/// fsync of the database file and a copy of every page; a passive checkpoint here runs beside
/// the commits instead of between them.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path, writer: Arc<Writer>) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // The WAL is reused only after the database file is synced: FULL, like the writer.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("keypost-checkpoint".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                let mut seen = 0;
                let (stopped, wake) = &*signal;
                let mut s = stopped.lock().unwrap_or_else(|p| p.into_inner());
                while !*s {
                    s = wake
                        .wait_timeout(s, CHECKPOINT_INTERVAL)
                        .map_or_else(|p| p.into_inner().0, |r| r.0);
                    let commits = writer.commits.load(Ordering::Relaxed);
                    if commits == seen {
                        continue;
                    }
                    seen = commits;
                    // Busy (another checkpoint running) or failed: the next round retries,
                    // and the backstop still bounds the WAL.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| Error::Backend(format!("starting the checkpointer: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // A process that changed something (a revoked key, a disabled account) returns only
        // once every other process's validators are bound to see it.
        // (An in-memory store, which has no checkpointer, has no other process to wait for.)
        let last_write = *lock(&self.writer.last_direct_write);
        if let Some(w) = last_write
            && self.checkpointer.is_some()
        {
            crate::clock::sleep(GENERATIONS_STALE_AFTER.saturating_sub(w.elapsed()));
        }
        drop(self.checkpointer.take());
        // The committer drains what is queued, then ends.
        self.writer.lock_queue().closing = true;
        self.writer.work.notify_one();
        if let Some(t) = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
    }
}

/// SQL functions the queries use: `base_subject(text)` for sorting by subject.
fn add_functions(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "base_subject",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| Ok(crate::base_subject(&ctx.get::<String>(0)?)),
    )?;
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(e.to_string()))
}

fn parse_id<T: std::str::FromStr>(s: String) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| Error::Corrupt(e.to_string()))
}

fn parse_opt<T: std::str::FromStr>(s: Option<String>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    s.map(parse_id).transpose()
}

// ---- realms ---------------------------------------------------------------------------------

/// Realms and clients as last read, valid at one directory generation (migration 16: every
/// change to a realm, its domains or a client bumps it). Every token request reads its realm
/// and client; from a reader whose page cache each commit has emptied that was five queries.
/// Only rows that exist are kept (creating one bumps the generation anyway), so requests for
/// made-up realms or clients cannot grow it.
#[derive(Default)]
struct Directory {
    inner: Mutex<DirectoryRows>,
}

#[derive(Default)]
struct DirectoryRows {
    generation: i64,
    realms: std::collections::HashMap<RealmId, Realm>,
    clients: std::collections::HashMap<RealmId, std::collections::HashMap<ClientId, Client>>,
}

/// Most realms, and most clients per realm, kept; past it the map starts over.
const DIRECTORY_CAPACITY: usize = 10_000;

impl Directory {
    /// The rows, emptied first if `generation` is newer than theirs. A caller holding an
    /// older generation than the rows' gets an empty, throwaway set: what it reads is not
    /// kept, and nothing newer is served to it.
    fn lock(&self, generation: i64) -> DirectoryGuard<'_> {
        let mut rows = lock(&self.inner);
        if generation > rows.generation {
            *rows = DirectoryRows {
                generation,
                ..DirectoryRows::default()
            };
        }
        DirectoryGuard {
            current: generation == rows.generation,
            rows,
        }
    }
}

struct DirectoryGuard<'a> {
    rows: MutexGuard<'a, DirectoryRows>,
    current: bool,
}

impl DirectoryGuard<'_> {
    fn realm(&self, id: &RealmId) -> Option<&Realm> {
        self.rows.realms.get(id).filter(|_| self.current)
    }

    fn client(&self, realm: &RealmId, id: &ClientId) -> Option<&Client> {
        self.rows
            .clients
            .get(realm)?
            .get(id)
            .filter(|_| self.current)
    }

    fn remember_realm(&mut self, r: &Realm) {
        if !self.current {
            return;
        }
        let realms = &mut self.rows.realms;
        if realms.len() >= DIRECTORY_CAPACITY {
            realms.clear();
        }
        realms.insert(r.id.clone(), r.clone());
    }

    fn remember_client(&mut self, c: &Client) {
        if !self.current {
            return;
        }
        let clients = &mut self.rows.clients;
        if clients.len() >= DIRECTORY_CAPACITY {
            clients.clear();
        }
        let of_realm = clients.entry(c.realm.clone()).or_default();
        if of_realm.len() >= DIRECTORY_CAPACITY {
            of_realm.clear();
        }
        of_realm.insert(c.client_id.clone(), c.clone());
    }
}

impl SqliteStore {
    fn read_realm(&self, id: &RealmId) -> Result<Option<Realm>> {
        let conn = self.lookup_reader()?;
        let row = conn
            .prepare_cached(
                "SELECT id, kind, display_name, access_token_alg, created_at FROM realms WHERE id = ?",
            )?
            .query_row([id.as_str()], realm_row)
            .optional()?;
        row.map(|r| finish_realm(&conn, r)).transpose()
    }

    fn read_client(&self, realm: &RealmId, id: &ClientId) -> Result<Option<Client>> {
        self.lookup_reader()?
            .prepare_cached(&format!(
                "SELECT {CLIENT_COLS} FROM clients WHERE realm = ? AND client_id = ?"
            ))?
            .query_row([realm.as_str(), id.as_str()], client_row)
            .optional()?
            .map(finish_client)
            .transpose()
    }
}

impl RealmStore for SqliteStore {
    fn create_realm(&self, realm: &Realm) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO realms(id, kind, display_name, access_token_alg, created_at) VALUES (?,?,?,?,?)",
            params![realm.id.as_str(), realm.kind.as_str(), realm.display_name, realm.access_token_alg, realm.created_at],
        )?;
        for d in &realm.domains {
            tx.execute(
                "INSERT INTO domains(domain, realm) VALUES (?,?)",
                params![d, realm.id.as_str()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_realm(&self, id: &RealmId) -> Result<Option<Realm>> {
        let generation = self.generations()?.directory;
        if let Some(r) = self.directory.lock(generation).realm(id) {
            return Ok(Some(r.clone()));
        }
        let realm = self.read_realm(id)?;
        if let Some(r) = &realm {
            self.directory.lock(generation).remember_realm(r);
        }
        Ok(realm)
    }

    fn list_realms(&self) -> Result<Vec<Realm>> {
        let conn = self.reader()?;
        let rows = conn
            .prepare("SELECT id, kind, display_name, access_token_alg, created_at FROM realms ORDER BY kind = 'tenant', id")?
            .query_map([], realm_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(|r| finish_realm(&conn, r)).collect()
    }

    fn realm_for_domain(&self, domain: &str) -> Result<Option<RealmId>> {
        let realm: Option<String> = self
            .reader()?
            .query_row(
                "SELECT realm FROM domains WHERE domain = ?",
                [domain],
                |r| r.get(0),
            )
            .optional()?;
        parse_opt(realm)
    }

    fn set_access_token_alg(&self, id: &RealmId, alg: &str) -> Result<()> {
        let n = self.conn()?.execute(
            "UPDATE realms SET access_token_alg = ? WHERE id = ?",
            params![alg, id.as_str()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("realm {id}")));
        }
        Ok(())
    }
}

type RealmRow = (String, String, String, String, i64);

fn realm_row(r: &Row<'_>) -> rusqlite::Result<RealmRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn finish_realm(
    conn: &Connection,
    (id, kind, display_name, alg, created_at): RealmRow,
) -> Result<Realm> {
    let domains = conn
        .prepare_cached("SELECT domain FROM domains WHERE realm = ? ORDER BY domain")?
        .query_map([&id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Realm {
        id: parse_id(id)?,
        kind: kind.parse()?,
        display_name,
        domains,
        access_token_alg: alg,
        created_at,
    })
}

// ---- accounts -------------------------------------------------------------------------------

const ACCOUNT_COLS: &str = "id, realm, email, display_name, password_hash, disabled, role, created_at, must_change_password, credential_epoch";

fn account_row(r: &Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

type AccountRow = (
    String,
    String,
    String,
    String,
    String,
    bool,
    String,
    i64,
    bool,
    i64,
);

fn finish_account(
    (
        id,
        realm,
        email,
        display_name,
        password_hash,
        disabled,
        role,
        created_at,
        must_change_password,
        credential_epoch,
    ): AccountRow,
) -> Result<Account> {
    Ok(Account {
        id: parse_id(id)?,
        realm: parse_id(realm)?,
        email,
        display_name,
        password_hash,
        disabled,
        role: role.parse()?,
        created_at,
        must_change_password,
        credential_epoch: u64::try_from(credential_epoch).unwrap_or(0),
    })
}

impl AccountStore for SqliteStore {
    fn create_account(&self, a: &Account) -> Result<()> {
        self.conn()?.execute(
            &format!("INSERT INTO accounts({ACCOUNT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)"),
            params![
                a.id.as_str(),
                a.realm.as_str(),
                a.email,
                a.display_name,
                a.password_hash,
                a.disabled,
                a.role.as_str(),
                a.created_at,
                a.must_change_password,
                a.credential_epoch as i64
            ],
        )?;
        Ok(())
    }

    fn get_account(&self, id: &AccountId) -> Result<Option<Account>> {
        self.lookup_reader()?
            .prepare_cached(&format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?"))?
            .query_row([id.as_str()], account_row)
            .optional()?
            .map(finish_account)
            .transpose()
    }

    fn find_account_by_email(&self, email: &str) -> Result<Option<Account>> {
        self.reader()?
            .prepare_cached(&format!(
                "SELECT {ACCOUNT_COLS} FROM accounts WHERE email = ?"
            ))?
            .query_row([email], account_row)
            .optional()?
            .map(finish_account)
            .transpose()
    }

    fn list_accounts(&self, realm: Option<&RealmId>) -> Result<Vec<Account>> {
        let conn = self.reader()?;
        let rows = match realm {
            Some(r) => conn
                .prepare(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts WHERE realm = ? ORDER BY email"
                ))?
                .query_map([r.as_str()], account_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => conn
                .prepare(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts ORDER BY realm, email"
                ))?
                .query_map([], account_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        rows.into_iter().map(finish_account).collect()
    }

    fn set_account_disabled(&self, id: &AccountId, disabled: bool) -> Result<()> {
        let n = self.conn()?.execute(
            "UPDATE accounts SET disabled = ? WHERE id = ?",
            params![disabled, id.as_str()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("account {id}")));
        }
        Ok(())
    }

    fn set_password_hash(
        &self,
        id: &AccountId,
        hash: &str,
        must_change: bool,
        at: UnixTime,
    ) -> Result<CredentialChange> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let epoch: Option<i64> = tx
            .query_row(
                "UPDATE accounts SET password_hash = ?, must_change_password = ?, \
                 credential_epoch = credential_epoch + 1 WHERE id = ? RETURNING credential_epoch",
                params![hash, must_change, id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(epoch) = epoch else {
            return Err(Error::NotFound(format!("account {id}")));
        };
        let (sessions, tokens) = revoke_in(&tx, &RevokeScope::Account(id.clone()), at)?;
        tx.commit()?;
        Ok(CredentialChange {
            epoch: u64::try_from(epoch).unwrap_or(0),
            sessions,
            tokens,
        })
    }

    fn count_accounts_with_role(&self, role: Role) -> Result<u64> {
        Ok(self.reader()?.query_row(
            "SELECT COUNT(*) FROM accounts WHERE role = ?",
            [role.as_str()],
            |r| r.get(0),
        )?)
    }

    fn live_accounts_with_role(
        &self,
        role: Role,
        realm: Option<&RealmId>,
        limit: u32,
    ) -> Result<Vec<Account>> {
        let conn = self.reader()?;
        // Two statements, so each walks `accounts_role` (role, realm, email) by its prefix.
        let rows = match realm {
            Some(realm) => conn
                .prepare_cached(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts WHERE role = ? AND realm = ? \
                     AND disabled = 0 ORDER BY email LIMIT ?"
                ))?
                .query_map(params![role.as_str(), realm.as_str(), limit], account_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => conn
                .prepare_cached(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts WHERE role = ? AND disabled = 0 \
                     ORDER BY email LIMIT ?"
                ))?
                .query_map(params![role.as_str(), limit], account_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        rows.into_iter().map(finish_account).collect()
    }
}

// ---- clients --------------------------------------------------------------------------------

const CLIENT_COLS: &str = "realm, client_id, name, secret_hash, redirect_uris, grant_types, first_party, id_token_alg, created_at, scopes";

type ClientRow = (
    String,
    String,
    String,
    Option<Vec<u8>>,
    String,
    String,
    bool,
    Option<String>,
    i64,
    Option<String>,
);

fn client_row(r: &Row<'_>) -> rusqlite::Result<ClientRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn finish_client(
    (
        realm,
        client_id,
        name,
        secret_hash,
        redirect_uris,
        grant_types,
        first_party,
        id_token_alg,
        created_at,
        scopes,
    ): ClientRow,
) -> Result<Client> {
    Ok(Client {
        realm: parse_id(realm)?,
        client_id: parse_id(client_id)?,
        name,
        secret_hash,
        redirect_uris: from_json(&redirect_uris)?,
        grant_types: from_json(&grant_types)?,
        first_party,
        id_token_alg,
        created_at,
        scopes: scopes.as_deref().map(from_json).transpose()?,
    })
}

impl ClientStore for SqliteStore {
    fn create_client(&self, c: &Client) -> Result<()> {
        self.conn()?.execute(
            &format!("INSERT INTO clients({CLIENT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)"),
            params![
                c.realm.as_str(),
                c.client_id.as_str(),
                c.name,
                c.secret_hash,
                json(&c.redirect_uris)?,
                json(&c.grant_types)?,
                c.first_party,
                c.id_token_alg,
                c.created_at,
                c.scopes.as_ref().map(json).transpose()?
            ],
        )?;
        Ok(())
    }

    fn get_client(&self, realm: &RealmId, id: &ClientId) -> Result<Option<Client>> {
        let generation = self.generations()?.directory;
        if let Some(c) = self.directory.lock(generation).client(realm, id) {
            return Ok(Some(c.clone()));
        }
        let client = self.read_client(realm, id)?;
        if let Some(c) = &client {
            self.directory.lock(generation).remember_client(c);
        }
        Ok(client)
    }

    fn list_clients(&self, realm: &RealmId) -> Result<Vec<Client>> {
        let conn = self.reader()?;
        let rows = conn
            .prepare(&format!(
                "SELECT {CLIENT_COLS} FROM clients WHERE realm = ? ORDER BY client_id"
            ))?
            .query_map([realm.as_str()], client_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(finish_client).collect()
    }
}

// ---- keys -----------------------------------------------------------------------------------

const KEY_COLS: &str = "kid, realm, purpose, alg, public_jwk, sealed, origin, created_at, activates_at, expires_at, revoked_at";

type KeyRow = (
    String,
    String,
    String,
    String,
    String,
    Vec<u8>,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
);

fn key_row(r: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn finish_key(
    (
        kid,
        realm,
        purpose,
        alg,
        public_jwk,
        sealed,
        origin,
        created_at,
        activates_at,
        expires_at,
        revoked_at,
    ): KeyRow,
) -> Result<KeyRecord> {
    Ok(KeyRecord {
        kid: parse_id(kid)?,
        realm: parse_id(realm)?,
        purpose: purpose.parse()?,
        alg,
        public_jwk,
        sealed,
        origin: origin.parse()?,
        created_at,
        activates_at,
        expires_at,
        revoked_at,
    })
}

fn bump_generation(conn: &Connection) -> Result<()> {
    conn.execute(
        "UPDATE meta SET value = value + 1 WHERE name = 'key_generation'",
        [],
    )?;
    Ok(())
}

impl KeyStore for SqliteStore {
    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            &format!("INSERT INTO keys({KEY_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"),
            params![
                k.kid.as_str(),
                k.realm.as_str(),
                k.purpose.as_str(),
                k.alg,
                k.public_jwk,
                k.sealed,
                k.origin.as_str(),
                k.created_at,
                k.activates_at,
                k.expires_at,
                k.revoked_at
            ],
        )?;
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn get_key(&self, kid: &Kid) -> Result<Option<KeyRecord>> {
        self.reader()?
            .prepare_cached(&format!("SELECT {KEY_COLS} FROM keys WHERE kid = ?"))?
            .query_row([kid.as_str()], key_row)
            .optional()?
            .map(finish_key)
            .transpose()
    }

    fn list_keys(&self, realm: Option<&RealmId>) -> Result<Vec<KeyRecord>> {
        let conn = self.reader()?;
        let rows = match realm {
            Some(r) => conn
                .prepare(&format!(
                    "SELECT {KEY_COLS} FROM keys WHERE realm = ? ORDER BY rowid"
                ))?
                .query_map([r.as_str()], key_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => conn
                .prepare(&format!("SELECT {KEY_COLS} FROM keys ORDER BY rowid"))?
                .query_map([], key_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        rows.into_iter().map(finish_key).collect()
    }

    fn revoke_key(&self, kid: &Kid, at: UnixTime) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE keys SET revoked_at = ? WHERE kid = ? AND revoked_at IS NULL",
            params![at, kid.as_str()],
        )?;
        if n > 0 {
            bump_generation(&tx)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    fn replace_sealed(&self, kid: &Kid, sealed: &[u8]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE keys SET sealed = ? WHERE kid = ?",
            params![sealed, kid.as_str()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("key {kid}")));
        }
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn key_generation(&self) -> Result<i64> {
        Ok(self
            .reader()?
            .prepare_cached("SELECT value FROM meta WHERE name = 'key_generation'")?
            .query_row([], |r| r.get(0))?)
    }
}

// ---- ledger ---------------------------------------------------------------------------------

const LEDGER_COLS: &str = "jti, realm, kind, subject, client_id, kid, session_id, family_id, scope, audience, issued_at, expires_at, token_hash, revoked_at, used_at";

/// [`LEDGER_COLS`] read through `ledger l LEFT JOIN revoked_families f`: a row is revoked when
/// it is, or else when its family is. A macro so that the statements using it are literals
/// (no string built per lookup).
macro_rules! ledger_view_cols {
    () => {
        "l.jti, l.realm, l.kind, l.subject, l.client_id, l.kid, l.session_id, l.family_id, \
         l.scope, l.audience, l.issued_at, l.expires_at, l.token_hash, \
         COALESCE(l.revoked_at, f.revoked_at), l.used_at"
    };
}

type LedgerRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    i64,
    i64,
    Vec<u8>,
    Option<i64>,
    Option<i64>,
);

fn ledger_row(r: &Row<'_>) -> rusqlite::Result<LedgerRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
    ))
}

fn finish_ledger(
    (
        jti,
        realm,
        kind,
        subject,
        client_id,
        kid,
        session_id,
        family_id,
        scope,
        audience,
        issued_at,
        expires_at,
        token_hash,
        revoked_at,
        used_at,
    ): LedgerRow,
) -> Result<LedgerEntry> {
    Ok(LedgerEntry {
        jti: parse_id(jti)?,
        realm: parse_id(realm)?,
        kind: kind.parse()?,
        subject,
        client_id: parse_id(client_id)?,
        kid: parse_opt(kid)?,
        session_id: parse_opt(session_id)?,
        family_id,
        scope,
        audience,
        issued_at,
        expires_at,
        token_hash,
        revoked_at,
        used_at,
    })
}

impl LedgerStore for SqliteStore {
    fn submit_issuance(
        &self,
        entries: &[LedgerEntry],
        audit: &[AuditRecord],
        rotates: Option<(&Jti, UnixTime)>,
    ) -> Completion {
        match audit_chain::prepare(audit.to_vec()) {
            Ok(audit) => self.submit(Write::Issuance(
                entries.to_vec(),
                audit,
                rotates.map(|(jti, at)| (jti.clone(), at)),
            )),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    fn get_token(&self, jti: &Jti) -> Result<Option<LedgerEntry>> {
        self.lookup_reader()?
            .prepare_cached(concat!(
                "SELECT ",
                ledger_view_cols!(),
                " FROM ledger l LEFT JOIN revoked_families f ON f.family_id = l.family_id \
                 WHERE l.jti = ?"
            ))?
            .query_row([jti.as_str()], ledger_row)
            .optional()?
            .map(finish_ledger)
            .transpose()
    }

    fn revoke_token(&self, jti: &Jti, at: UnixTime) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE ledger SET revoked_at = ? WHERE jti = ? AND revoked_at IS NULL",
            params![at, jti.as_str()],
        )?;
        Ok(n > 0)
    }

    fn revoke_family(&self, family_id: &str, at: UnixTime) -> Result<bool> {
        let n = self.conn()?.execute(
            "INSERT OR IGNORE INTO revoked_families(family_id, revoked_at) VALUES (?, ?)",
            params![family_id, at],
        )?;
        Ok(n > 0)
    }

    fn prune_ledger(
        &self,
        minted_before: UnixTime,
        expired_before: UnixTime,
        limit: u32,
    ) -> Result<u64> {
        let ms = u64::try_from(minted_before)
            .unwrap_or(0)
            .saturating_mul(1000);
        let mut before = String::with_capacity(12);
        crate::push_jti_time_prefix(&mut before, ms);
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The key range holds only tokens minted before the cut; `expires_at` keeps any of
        // them that still lives (a lifetime configured longer back then).
        let rows = tx.execute(
            "DELETE FROM ledger WHERE jti IN \
             (SELECT jti FROM ledger WHERE jti < ?1 AND expires_at < ?2 ORDER BY jti LIMIT ?3)",
            params![before, expired_before, limit],
        )?;
        tx.commit()?;
        Ok(rows as u64)
    }

    fn revoke_scope(&self, scope: &RevokeScope, at: UnixTime) -> Result<(u64, u64)> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let counts = revoke_in(&tx, scope, at)?;
        tx.commit()?;
        Ok(counts)
    }

    fn generations(&self) -> Result<Generations> {
        if let Some((g, read_at)) = *lock(&self.writer.generations)
            && read_at.elapsed() < GENERATIONS_STALE_AFTER
        {
            return Ok(g);
        }
        // The time is taken before the read: the copy is as old as the oldest state it saw.
        let read_at = Instant::now();
        let g = self.read_generations()?;
        let mut shared = lock(&self.writer.generations);
        // Shared unless a younger copy is there, or a direct write of this process finished
        // after this read began (the read may have missed it; the write emptied the copy so
        // that callers after it see its effect at once). `Direct::drop` records its time
        // before it empties the copy, and this check holds the copy's lock, so one of the
        // two always sees the other.
        let younger = shared.is_some_and(|(_, at)| at >= read_at);
        if !younger && !self.direct_write_since(read_at) {
            *shared = Some((g, read_at));
        }
        Ok(g)
    }

    fn ledger_view(&self, jti: &Jti, realm: &RealmId, client: &ClientId) -> Result<LedgerView> {
        // One statement for everything the validator's last steps need: the ledger row, its
        // session, its subject's account, and whether the client is registered in the realm.
        const SQL: &str = concat!(
            "SELECT ",
            ledger_view_cols!(),
            ", s.realm, s.revoked_at, s.expires_at, s.auth_time, \
             a.realm, a.disabled, a.email, a.display_name, a.role, \
             EXISTS(SELECT 1 FROM clients WHERE realm = ?2 AND client_id = ?3) \
             FROM (SELECT ?1 AS jti) q \
             LEFT JOIN ledger l ON l.jti = q.jti \
             LEFT JOIN revoked_families f ON f.family_id = l.family_id \
             LEFT JOIN sessions s ON s.id = l.session_id \
             LEFT JOIN accounts a ON a.id = l.subject"
        );
        struct Extra {
            s_realm: Option<String>,
            s_revoked: Option<i64>,
            s_expires: Option<i64>,
            s_auth_time: Option<i64>,
            a_realm: Option<String>,
            a_disabled: Option<bool>,
            a_email: Option<String>,
            a_name: Option<String>,
            a_role: Option<String>,
            client_known: bool,
        }
        // A point lookup, made on async tasks: a lookup reader (see `LedgerStore::get_token`).
        let conn = self.lookup_reader()?;
        let mut stmt = conn.prepare_cached(SQL)?;
        let (row, extra): (Option<LedgerRow>, Extra) = stmt.query_row(
            params![jti.as_str(), realm.as_str(), client.as_str()],
            |r| {
                let row = match r.get::<_, Option<String>>(0)? {
                    Some(_) => Some(ledger_row(r)?),
                    None => None,
                };
                Ok((
                    row,
                    Extra {
                        s_realm: r.get(15)?,
                        s_revoked: r.get(16)?,
                        s_expires: r.get(17)?,
                        s_auth_time: r.get(18)?,
                        a_realm: r.get(19)?,
                        a_disabled: r.get(20)?,
                        a_email: r.get(21)?,
                        a_name: r.get(22)?,
                        a_role: r.get(23)?,
                        client_known: r.get(24)?,
                    },
                ))
            },
        )?;
        Ok(LedgerView {
            entry: row.map(finish_ledger).transpose()?,
            client_known: extra.client_known,
            session: match (extra.s_realm, extra.s_expires, extra.s_auth_time) {
                (Some(r), Some(e), Some(auth_time)) => Some(SessionState {
                    realm: parse_id(r)?,
                    revoked_at: extra.s_revoked,
                    expires_at: e,
                    auth_time,
                }),
                _ => None,
            },
            account: match (
                extra.a_realm,
                extra.a_disabled,
                extra.a_email,
                extra.a_name,
                extra.a_role,
            ) {
                (Some(r), Some(disabled), Some(email), Some(display_name), Some(role)) => {
                    Some(AccountState {
                        realm: parse_id(r)?,
                        disabled,
                        email,
                        display_name,
                        role: role.parse()?,
                    })
                }
                _ => None,
            },
        })
    }
}

impl SqliteStore {
    fn direct_write_since(&self, t: Instant) -> bool {
        lock(&self.writer.last_direct_write).is_some_and(|w| w >= t)
    }

    fn read_generations(&self) -> Result<Generations> {
        // A lookup reader: token requests refresh the copy on their own task, and must not
        // wait behind a search holding a general reader.
        let (keys, revocations, directory) = self
            .lookup_reader()?
            .prepare_cached(
                "SELECT (SELECT value FROM meta WHERE name = 'key_generation'), \
                        (SELECT value FROM meta WHERE name = 'revocation_generation'), \
                        (SELECT value FROM meta WHERE name = 'directory_generation')",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(Generations {
            keys,
            revocations,
            directory,
        })
    }
}

/// [`LedgerStore::revoke_scope`] inside the caller's transaction.
fn revoke_in(tx: &Connection, scope: &RevokeScope, at: UnixTime) -> Result<(u64, u64)> {
    // A ledger row still live (`?1` is the time): unrevoked by itself and through its
    // family, unexpired. Rows revoked through their family are neither marked nor counted
    // again, so the count is what this revocation newly stopped.
    macro_rules! live_token {
        () => {
            "revoked_at IS NULL AND expires_at > ?1 AND NOT EXISTS \
             (SELECT 1 FROM revoked_families f WHERE f.family_id = ledger.family_id)"
        };
    }
    let (sessions, tokens) = match scope {
        RevokeScope::Account(a) => (
            tx.execute(
                "UPDATE sessions SET revoked_at = ?1 WHERE account = ?2 AND revoked_at IS NULL AND expires_at > ?1",
                params![at, a.as_str()],
            )?,
            tx.execute(
                concat!("UPDATE ledger SET revoked_at = ?1 WHERE subject = ?2 AND ", live_token!()),
                params![at, a.as_str()],
            )?,
        ),
        RevokeScope::Realm(r) => (
            tx.execute(
                "UPDATE sessions SET revoked_at = ?1 WHERE realm = ?2 AND revoked_at IS NULL AND expires_at > ?1",
                params![at, r.as_str()],
            )?,
            tx.execute(
                concat!("UPDATE ledger SET revoked_at = ?1 WHERE realm = ?2 AND ", live_token!()),
                params![at, r.as_str()],
            )?,
        ),
        RevokeScope::Client(r, c) => (
            0,
            tx.execute(
                concat!(
                    "UPDATE ledger SET revoked_at = ?1 WHERE realm = ?2 AND client_id = ?3 AND ",
                    live_token!()
                ),
                params![at, r.as_str(), c.as_str()],
            )?,
        ),
    };
    Ok((sessions as u64, tokens as u64))
}

// ---- sessions and codes ---------------------------------------------------------------------

impl SessionStore for SqliteStore {
    fn create_session(&self, s: &Session) -> Result<()> {
        // The epoch is compared by the insert itself: a password reset committed after the
        // sign-in checked the old password leaves this insert with nothing to insert.
        let n = self.conn()?.execute(
            "INSERT INTO sessions(id, realm, account, auth_time, expires_at, revoked_at, credential_epoch) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS(SELECT 1 FROM accounts \
                 WHERE id = ?3 AND credential_epoch = ?7 AND disabled = 0)",
            params![
                s.id.as_str(),
                s.realm.as_str(),
                s.account.as_str(),
                s.auth_time,
                s.expires_at,
                s.revoked_at,
                s.credential_epoch as i64
            ],
        )?;
        if n == 0 {
            return Err(Error::CredentialsChanged(format!(
                "account {} (disabled, or its password changed since the sign-in)",
                s.account
            )));
        }
        Ok(())
    }

    fn get_session(&self, id: &SessionId) -> Result<Option<Session>> {
        let row: Option<(String, String, String, i64, i64, Option<i64>, i64)> = self
            .lookup_reader()?
            .prepare_cached("SELECT id, realm, account, auth_time, expires_at, revoked_at, credential_epoch FROM sessions WHERE id = ?")?
            .query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
            .optional()?;
        row.map(
            |(id, realm, account, auth_time, expires_at, revoked_at, epoch)| {
                Ok(Session {
                    id: parse_id(id)?,
                    realm: parse_id(realm)?,
                    account: parse_id(account)?,
                    auth_time,
                    expires_at,
                    revoked_at,
                    credential_epoch: u64::try_from(epoch).unwrap_or(0),
                })
            },
        )
        .transpose()
    }

    fn revoke_session(&self, id: &SessionId, at: UnixTime) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            params![at, id.as_str()],
        )?;
        Ok(n > 0)
    }

    fn create_auth_code(&self, c: &AuthCode) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO auth_codes(code_hash, realm, client_id, account, session_id, redirect_uri, scope, nonce, code_challenge, resource, created_at, expires_at, used_at, family_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            params![
                c.code_hash, c.realm.as_str(), c.client_id.as_str(), c.account.as_str(), c.session_id.as_str(),
                c.redirect_uri, c.scope, c.nonce, c.code_challenge, json(&c.resource)?, c.created_at, c.expires_at,
                c.used_at, c.family_id
            ],
        )?;
        Ok(())
    }

    fn get_auth_code(&self, code_hash: &[u8]) -> Result<Option<AuthCode>> {
        type CodeRow = (
            String,
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            i64,
            i64,
            Option<i64>,
            Option<String>,
        );
        let row: Option<CodeRow> = self
            .lookup_reader()?
            .prepare_cached(
                "SELECT realm, client_id, account, session_id, redirect_uri, scope, nonce, code_challenge, resource, created_at, expires_at, used_at, family_id FROM auth_codes WHERE code_hash = ?",
            )?
            .query_row([code_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?)))
            .optional()?;
        let Some((
            realm,
            client_id,
            account,
            session_id,
            redirect_uri,
            scope,
            nonce,
            code_challenge,
            resource,
            created_at,
            expires_at,
            used_at,
            family_id,
        )) = row
        else {
            return Ok(None);
        };
        Ok(Some(AuthCode {
            code_hash: code_hash.to_vec(),
            realm: parse_id(realm)?,
            client_id: parse_id(client_id)?,
            account: parse_id(account)?,
            session_id: parse_id(session_id)?,
            redirect_uri,
            scope,
            nonce,
            code_challenge,
            resource: from_json(&resource)?,
            created_at,
            expires_at,
            used_at,
            family_id,
        }))
    }

    fn consume_auth_code(&self, code_hash: &[u8], at: UnixTime, family_id: &str) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE auth_codes SET used_at = ?, family_id = ? WHERE code_hash = ? AND used_at IS NULL",
            params![at, family_id, code_hash],
        )?;
        Ok(n == 1)
    }
}

// ---- audit ----------------------------------------------------------------------------------

const AUDIT_COLS: &str = "id, time, realm, actor, operation, target, result, source_ip, user_agent, client_id, jti, kid, details";

type AuditRow = (
    i64,
    i64,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

/// Reads the [`AUDIT_COLS`] of a row.
fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
    ))
}

/// The record, and its details column verbatim (the audit chain links those bytes).
fn finish_audit(row: AuditRow) -> Result<(AuditRecord, String)> {
    let (
        id,
        time,
        realm,
        actor,
        operation,
        target,
        result,
        source_ip,
        user_agent,
        client_id,
        jti,
        kid,
        details,
    ) = row;
    Ok((
        AuditRecord {
            id,
            time,
            realm: parse_opt(realm)?,
            actor,
            operation,
            target,
            result,
            source_ip,
            user_agent,
            client_id,
            jti,
            kid,
            details: from_json(&details)?,
        },
        details,
    ))
}

/// Builds the WHERE clause of an audit query. Values are bound, never spliced into the SQL.
fn audit_where(q: &AuditQuery) -> (String, Vec<Box<dyn ToSql>>) {
    let mut clauses = Vec::new();
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    let mut eq = |col: &str, v: &Option<String>| {
        if let Some(v) = v {
            clauses.push(format!("{col} = ?"));
            args.push(Box::new(v.clone()));
        }
    };
    // A record's chain is its realm (`chain::chain_of`), and chain is what is indexed.
    eq("chain", &q.realm.as_ref().map(|r| r.to_string()));
    eq("operation", &q.operation);
    eq("actor", &q.actor);
    eq("result", &q.result);
    eq("source_ip", &q.source_ip);
    eq("kid", &q.kid);
    eq("jti", &q.jti);
    eq("client_id", &q.client_id);
    if let Some(t) = q.since {
        clauses.push("time >= ?".into());
        args.push(Box::new(t));
    }
    if let Some(t) = q.until {
        clauses.push("time < ?".into());
        args.push(Box::new(t));
    }
    if !q.operations.is_empty() {
        clauses.push(format!(
            "operation IN ({})",
            vec!["?"; q.operations.len()].join(", ")
        ));
        for op in &q.operations {
            args.push(Box::new(op.clone()));
        }
    }
    if let Some(id) = q.before_id {
        clauses.push("id < ?".into());
        args.push(Box::new(id));
    }
    if let Some(n) = &q.source_network {
        // The expression of the `audit_source_network` index, word for word.
        clauses.push("json_extract(details, '$.source_network') = ?".into());
        args.push(Box::new(n.clone()));
    }
    if let Some(p) = &q.source_prefix {
        clauses.push("substr(source_ip, 1, length(?)) = ?".into());
        args.push(Box::new(p.clone()));
        args.push(Box::new(p.clone()));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, args)
}

impl SqliteStore {
    /// One aggregate over the audit records a query matches.
    fn audit_aggregate(&self, q: &AuditQuery, aggregate: &str) -> Result<u64> {
        let (sql, args) = audit_where(q);
        let conn = self.reader()?;
        let params: Vec<&dyn ToSql> = args.iter().map(|b| b.as_ref()).collect();
        let n: i64 = conn.query_row(
            &format!("SELECT {aggregate} FROM audit{sql}"),
            &params[..],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl AuditStore for SqliteStore {
    fn submit_audit(&self, records: &[AuditRecord]) -> Completion {
        match audit_chain::prepare(records.to_vec()) {
            Ok(prepared) => self.submit(Write::Audit(prepared)),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    fn search_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let (mut sql, mut args) = audit_where(q);
        if let Some(after) = q.after_id {
            sql.push_str(if sql.is_empty() {
                " WHERE id > ?"
            } else {
                " AND id > ?"
            });
            args.push(Box::new(after));
        }
        let limit = q.limit.unwrap_or(100);
        let sql = format!("SELECT {AUDIT_COLS} FROM audit{sql} ORDER BY id LIMIT {limit}");
        let conn = self.reader()?;
        let mut stmt = conn.prepare(&sql)?;
        let params: Vec<&dyn ToSql> = args.iter().map(|b| b.as_ref()).collect();
        let rows = stmt
            .query_map(&params[..], audit_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|row| finish_audit(row).map(|(record, _)| record))
            .collect()
    }

    fn count_audit(&self, q: &AuditQuery) -> Result<u64> {
        self.audit_aggregate(q, "COUNT(*)")
    }

    fn latest_audit_time(&self, q: &AuditQuery) -> Result<Option<UnixTime>> {
        let (sql, args) = audit_where(q);
        let conn = self.reader()?;
        let params: Vec<&dyn ToSql> = args.iter().map(|b| b.as_ref()).collect();
        let t: Option<i64> = conn.query_row(
            &format!("SELECT max(time) FROM audit{sql}"),
            &params[..],
            |r| r.get(0),
        )?;
        Ok(t)
    }

    fn audit_exists(&self, q: &AuditQuery) -> Result<bool> {
        let (sql, args) = audit_where(q);
        let conn = self.reader()?;
        let params: Vec<&dyn ToSql> = args.iter().map(|b| b.as_ref()).collect();
        Ok(conn
            .prepare_cached(&format!("SELECT 1 FROM audit{sql} LIMIT 1"))?
            .query_row(&params[..], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn count_distinct_audit(&self, q: &AuditQuery, column: AuditColumn) -> Result<u64> {
        let col = match column {
            AuditColumn::Actor => "actor",
            AuditColumn::SourceIp => "source_ip",
            AuditColumn::SourceNetwork => {
                "ifnull(json_extract(details, '$.source_network'), source_ip)"
            }
            AuditColumn::ClientId => "client_id",
        };
        self.audit_aggregate(q, &format!("COUNT(DISTINCT {col})"))
    }

    fn sum_audit_items(&self, q: &AuditQuery) -> Result<u64> {
        self.audit_aggregate(
            q,
            "ifnull(sum(ifnull(json_array_length(details, '$.items'), 0)), 0)",
        )
    }
}

// ---- group commit ---------------------------------------------------------------------------

/// A durable write that may share a transaction (and its fsync) with concurrent ones.
pub(crate) enum Write {
    /// Ledger rows and the audit records of their issuance, and the refresh token they
    /// rotate (marked used in the same transaction; the write fails if it was used before).
    Issuance(
        Vec<LedgerEntry>,
        Vec<audit_chain::Prepared>,
        Option<(Jti, UnixTime)>,
    ),
    Audit(Vec<audit_chain::Prepared>),
}

/// Inserts ledger rows. A jti already in the ledger is refused: the rows inserted before it
/// are taken out again (the committer's transaction has no savepoint to roll back to) and
/// that jti is returned.
fn insert_ledger<'e>(conn: &Connection, entries: &'e [LedgerEntry]) -> Result<Option<&'e Jti>> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO ledger({LEDGER_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) \
         ON CONFLICT(jti) DO NOTHING"
    ))?;
    for (n, e) in entries.iter().enumerate() {
        let p: [&dyn ToSql; 15] = [
            &e.jti.as_str(),
            &e.realm.as_str(),
            &e.kind.as_str(),
            &e.subject,
            &e.client_id.as_str(),
            &e.kid.as_ref().map(Kid::as_str),
            &e.session_id.as_ref().map(SessionId::as_str),
            &e.family_id,
            &e.scope,
            &e.audience,
            &e.issued_at,
            &e.expires_at,
            &e.token_hash,
            &e.revoked_at,
            &e.used_at,
        ];
        if stmt.execute(&p[..])? == 0 {
            let mut undo = conn.prepare_cached("DELETE FROM ledger WHERE jti = ?")?;
            for done in &entries[..n] {
                undo.execute([done.jti.as_str()])?;
            }
            return Ok(Some(&e.jti));
        }
    }
    Ok(None)
}

/// The first refresh family of `entries` that is revoked, if any: nothing is issued into one.
/// (A family revoked while these rows waited for their commit — a refresh token replayed
/// during the legitimate rotation, an operator's revocation — must not gain live tokens.)
fn revoked_family<'e>(conn: &Connection, entries: &'e [LedgerEntry]) -> Result<Option<&'e str>> {
    let mut families: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.family_id.as_deref())
        .collect();
    families.dedup();
    let mut revoked =
        conn.prepare_cached("SELECT EXISTS(SELECT 1 FROM revoked_families WHERE family_id = ?)")?;
    for family in families {
        if revoked.query_row([family], |r| r.get::<_, bool>(0))? {
            return Ok(Some(family));
        }
    }
    Ok(None)
}

/// The first sign-in session of `entries` that no longer vouches for its account: ended,
/// expired, its account disabled or at another credential epoch than the sign-in checked.
/// Decided here, in the transaction that writes the tokens, so no check made before (a
/// password verified, a code looked up) can be outrun by a reset committed in between.
fn stale_session<'e>(
    conn: &Connection,
    entries: &'e [LedgerEntry],
) -> Result<Option<&'e SessionId>> {
    let mut sessions: Vec<(&SessionId, UnixTime)> = entries
        .iter()
        .filter_map(|e| e.session_id.as_ref().map(|s| (s, e.issued_at)))
        .collect();
    sessions.dedup_by(|a, b| a.0 == b.0);
    let mut live = conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM sessions s JOIN accounts a ON a.id = s.account \
         WHERE s.id = ?1 AND s.revoked_at IS NULL AND s.expires_at > ?2 \
         AND a.disabled = 0 AND a.credential_epoch = s.credential_epoch)",
    )?;
    for (session, at) in sessions {
        if !live.query_row(params![session.as_str(), at], |r| r.get::<_, bool>(0))? {
            return Ok(Some(session));
        }
    }
    Ok(None)
}

impl SqliteStore {
    /// Hands `write` to the group committer. The committer thread takes every queued write,
    /// applies them in one transaction, commits once, and then answers each write's
    /// completion. A write refused for its own reason (a refresh token used before or no longer
    /// live, a revoked family, a jti taken) changes nothing and the others go on; any other failure (the database's, or an
    /// audit record that cannot be inserted) fails every write of the batch. Nothing is
    /// answered before the commit that contains it, so "acknowledged" still means "on disk"; under load one fsync serves many writes, and a writer waits
    /// either as a parked thread ([`Completion::wait`]) or as an async task (`.await`) — the
    /// latter costs no OS context switch, which is what lets audit appends reach tens of
    /// thousands per second on two cores.
    pub(crate) fn submit(&self, write: Write) -> Completion {
        let (completion, done) = Completion::pair();
        let was_empty = {
            let mut q = self.writer.lock_queue();
            q.pending.push(Pending { write, done });
            q.pending.len() == 1
        };
        if was_empty {
            self.writer.work.notify_one();
        }
        completion
    }
}

impl Writer {
    /// Records that this process has just committed something that may have bumped a
    /// generation counter: the shared copy is emptied, so every later call reads them again.
    fn changed(&self) {
        // In this order: see `SqliteStore::generations`.
        *lock(&self.last_direct_write) = Some(Instant::now());
        *lock(&self.generations) = None;
    }

    /// The connection, for a write outside the group commit.
    fn conn(&self) -> Result<Direct<'_>> {
        use std::sync::atomic::Ordering;
        self.direct_waiting.fetch_add(1, Ordering::SeqCst);
        let conn = self.lock_conn();
        self.direct_waiting.fetch_sub(1, Ordering::SeqCst);
        // Most direct uses write: count one for the checkpointer (a spare pass is harmless).
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(Direct { conn, writer: self })
    }

    fn lock_conn(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock means a panic mid-statement; SQLite rolled the statement back, so the
        // connection itself is still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection, for the committer: after any direct writer already waiting for it
    /// (bounded, so a stream of direct writes cannot stall the group commit either).
    fn conn_for_batch(&self) -> MutexGuard<'_, Connection> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
        while self
            .direct_waiting
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        self.lock_conn()
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committer thread: waits for writes, commits them in batches, answers them.
    fn run_committer(&self) {
        loop {
            let batch = {
                let mut q = self.lock_queue();
                while q.pending.is_empty() && !q.closing {
                    q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.pending.is_empty() {
                    return;
                }
                std::mem::take(&mut q.pending)
            };
            // A panic in one batch answers its writes with an error (their completers drop)
            // and must not end the committer: every later write would wait forever.
            let committed =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit_batch(batch)));
            match committed {
                Ok(results) => {
                    for (done, result) in results {
                        done.complete(result);
                    }
                }
                Err(_) => tracing::error!("group commit panicked; its writes were refused"),
            }
        }
    }

    fn commit_batch(&self, batch: Vec<Pending>) -> Vec<(Completer, Result<Vec<i64>>)> {
        let mut conn = self.conn_for_batch();
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return fail_all(batch, &e.into()),
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut heads = audit_chain::Heads::default();
        let mut batch = batch.into_iter();
        while let Some(Pending { write, done }) = batch.next() {
            // No savepoint per write: copying every page a write touches into a statement
            // journal cost the committer (the serial stage of every token) a sixth of its time.
            // A write's own refusal (a refresh token used before) happens before it changes
            // anything; any other failure is the database's, and fails the whole batch.
            let outcome = match &write {
                Write::Audit(records) => insert_audit(&tx, records, &mut heads).map(Ok),
                Write::Issuance(entries, audit, rotates) => {
                    issue(&tx, entries, audit, rotates.as_ref(), &mut heads)
                }
            };
            match outcome {
                Ok(answer) => results.push((done, answer)),
                Err(e) => {
                    // Everything rolls back: the others learn why, this one gets its error.
                    drop(tx);
                    let why = e.to_string();
                    let others = results.into_iter().map(|(d, _)| d);
                    let others = others.chain(batch.map(|p| p.done));
                    return others
                        .map(|d| (d, Err(Error::Backend(why.clone()))))
                        .chain([(done, Err(e))])
                        .collect();
                }
            }
        }
        let committed = heads
            .flush(&tx)
            .and_then(|()| tx.commit().map_err(Error::from));
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A rotation refused for a revocation is proof of one that another process may have
        // made less than `GENERATIONS_STALE_AFTER` ago: this process's validations see it now.
        let proved_revoked = results.iter().any(|(_, r)| {
            matches!(
                r,
                Err(Error::FamilyRevoked(_) | Error::Consumed(_) | Error::CredentialsChanged(_))
            )
        });
        if proved_revoked {
            self.changed();
        }
        match committed {
            Ok(()) => results,
            Err(e) => {
                let dones = results.into_iter().map(|(d, _)| d);
                dones
                    .map(|d| (d, Err(Error::Backend(e.to_string()))))
                    .collect()
            }
        }
    }
}

/// One issuance in the committer's transaction: the refresh token it rotates marked used,
/// its ledger rows and their audit records. `Ok(Err(..))` if the write is refused for its own
/// reason, having changed nothing — its family is revoked (`FamilyRevoked`), the refresh
/// token was used before (`Consumed`), or a jti is taken (`Conflict`); `Err` for a failure of
/// the database, which fails the batch.
fn issue(
    tx: &Connection,
    entries: &[LedgerEntry],
    audit: &[audit_chain::Prepared],
    rotates: Option<&(Jti, UnixTime)>,
    heads: &mut audit_chain::Heads,
) -> Result<Result<Vec<i64>>> {
    if let Some(family) = revoked_family(tx, entries)? {
        return Ok(Err(Error::FamilyRevoked(family.to_owned())));
    }
    if let Some(session) = stale_session(tx, entries)? {
        return Ok(Err(Error::CredentialsChanged(format!("session {session}"))));
    }
    if let Some((jti, at)) = rotates {
        // The token must still be live when it is consumed, not only when the grant read it
        // (from memory, possibly before another process revoked it): unused, unrevoked, its
        // family, session and account too. Primary-key lookups on hot pages.
        let n = tx
            .prepare_cached(
                "UPDATE ledger SET used_at = ?1 WHERE jti = ?2 \
                 AND kind = 'refresh' AND used_at IS NULL AND revoked_at IS NULL \
                 AND NOT EXISTS(SELECT 1 FROM revoked_families f WHERE f.family_id = ledger.family_id) \
                 AND NOT EXISTS(SELECT 1 FROM sessions s WHERE s.id = ledger.session_id \
                     AND (s.revoked_at IS NOT NULL OR s.expires_at <= ?1)) \
                 AND EXISTS(SELECT 1 FROM accounts a WHERE a.id = ledger.subject AND a.disabled = 0)",
            )?
            .execute(params![at, jti.as_str()])?;
        if n == 0 {
            let unused_refresh: bool = tx
                .prepare_cached(
                    "SELECT EXISTS(SELECT 1 FROM ledger WHERE jti = ? \
                     AND kind = 'refresh' AND used_at IS NULL)",
                )?
                .query_row([jti.as_str()], |r| r.get(0))?;
            return Ok(Err(if unused_refresh {
                Error::FamilyRevoked(format!("{jti} (revoked, or its session or account)"))
            } else {
                Error::Consumed(jti.to_string())
            }));
        }
    }
    if let Some(taken) = insert_ledger(tx, entries)? {
        if let Some((used, _)) = rotates {
            tx.prepare_cached("UPDATE ledger SET used_at = NULL WHERE jti = ?")?
                .execute([used.as_str()])?;
        }
        return Ok(Err(Error::Conflict(format!("jti {taken} is taken"))));
    }
    insert_audit(tx, audit, heads).map(Ok)
}

fn fail_all(batch: Vec<Pending>, e: &Error) -> Vec<(Completer, Result<Vec<i64>>)> {
    batch
        .into_iter()
        .map(|p| (p.done, Err(Error::Backend(e.to_string()))))
        .collect()
}

mod alerts;
mod audit_chain;
mod mail;
mod query;
mod sending;

use audit_chain::insert_audit;

#[cfg(test)]
mod tests;
