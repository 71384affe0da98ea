//! [`LedgerStore`] for SQLite: the issuance ledger, its row mapper, revocations, the
//! generation counters, and the checks an issuance makes in the committer's transaction.

use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, Row, ToSql, params};

use super::committer::Write;
use super::{SqliteStore, audit_chain, lock, parse_id, parse_opt};
use crate::Result;
use crate::completion::Completion;
use crate::ids::{ClientId, Jti, Kid, RealmId, SessionId};
use crate::model::*;
use crate::traits::*;

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
pub(super) fn revoke_in(tx: &Connection, scope: &RevokeScope, at: UnixTime) -> Result<(u64, u64)> {
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

/// Inserts ledger rows. A jti already in the ledger is refused: the rows inserted before it
/// are taken out again (the committer's transaction has no savepoint to roll back to) and
/// that jti is returned.
pub(super) fn insert_ledger<'e>(
    conn: &Connection,
    entries: &'e [LedgerEntry],
) -> Result<Option<&'e Jti>> {
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
pub(super) fn revoked_family<'e>(
    conn: &Connection,
    entries: &'e [LedgerEntry],
) -> Result<Option<&'e str>> {
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
pub(super) fn stale_session<'e>(
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
