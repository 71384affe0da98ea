//! The schema: every migration in order (the index + 1 is the schema version) and applying
//! them on open.

use super::{SqliteStore, audit_chain};
use crate::{Error, Result};

/// Schema migrations, applied in order; the index + 1 is the schema version. Never edit a
/// migration that has shipped: append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
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
pub(super) const AUDIT_CHAIN_MIGRATION: usize = 9;

impl SqliteStore {
    pub(super) fn migrate(&self) -> Result<()> {
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
}
