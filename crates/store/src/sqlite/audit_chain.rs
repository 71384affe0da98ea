//! The audit hash chain in SQLite: linking records as they are appended (inside the group
//! commit's transaction, so a record and its link are one write), reading chains back for
//! verification, and signed checkpoints.

use rusqlite::{Connection, OptionalExtension, ToSql, params};

use super::audit::{AUDIT_COLS, audit_row, finish_audit};
use super::{SqliteStore, json};
use crate::chain::{self, ChainedRecord, Checkpoint, GENESIS, Link, Tombstone};
use crate::model::AuditRecord;
use crate::{Error, Kid, RealmId, Result};

fn to_link(bytes: Vec<u8>) -> Result<Link> {
    bytes
        .try_into()
        .map_err(|_| Error::Corrupt("an audit link is not 32 bytes".into()))
}

/// The head of `chain`: its last position and link.
fn head(conn: &Connection, chain: &str) -> Result<(u64, Link)> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, link FROM audit_heads WHERE chain = ?")?
        .query_row([chain], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        None => Ok((0, GENESIS)),
        Some((seq, link)) => Ok((u64::try_from(seq).unwrap_or(0), to_link(link)?)),
    }
}

fn set_head(conn: &Connection, chain: &str, seq: u64, link: &Link) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_heads(chain, seq, link) VALUES (?, ?, ?) \
         ON CONFLICT(chain) DO UPDATE SET seq = excluded.seq, link = excluded.link",
    )?
    .execute(params![chain, seq as i64, link.as_slice()])?;
    Ok(())
}

/// Chain heads as a group commit moves them: read from `audit_heads` once per chain, advanced
/// in memory record by record, and written back once when the batch commits.
#[derive(Default, Clone)]
pub(super) struct Heads(Vec<(String, u64, Link)>);

impl Heads {
    fn slot(&mut self, conn: &Connection, chain: &str) -> Result<usize> {
        if let Some(i) = self.0.iter().position(|(c, _, _)| c == chain) {
            return Ok(i);
        }
        let (seq, link) = head(conn, chain)?;
        self.0.push((chain.to_owned(), seq, link));
        Ok(self.0.len() - 1)
    }

    /// Writes the heads back (inside the batch's transaction).
    pub(super) fn flush(&self, conn: &Connection) -> Result<()> {
        for (chain, seq, link) in &self.0 {
            set_head(conn, chain, *seq, link)?;
        }
        Ok(())
    }
}

/// An audit record with its details already serialised, by the writer's thread rather than
/// the committer's (whose time every write in the batch shares).
pub(crate) struct Prepared {
    record: AuditRecord,
    details: String,
}

/// Serialises each record's details for appending.
pub(crate) fn prepare(records: Vec<AuditRecord>) -> Result<Vec<Prepared>> {
    records
        .into_iter()
        .map(|record| {
            let details = json(&record.details)?;
            Ok(Prepared { record, details })
        })
        .collect()
}

/// Appends and links records; returns their ids. Runs inside the caller's transaction; the
/// caller flushes `heads` before committing (and restores them if this write rolls back).
pub(super) fn insert_audit(
    conn: &Connection,
    records: &[Prepared],
    heads: &mut Heads,
) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO audit(time, realm, actor, operation, target, result, source_ip, user_agent, \
         client_id, jti, kid, details, chain, seq, link) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    )?;
    let mut ids = Vec::with_capacity(records.len());
    for Prepared { record: r, details } in records {
        let chain_name = chain::chain_of(r);
        let slot = heads.slot(conn, chain_name)?;
        let (_, seq, prev) = &mut heads.0[slot];
        *seq += 1;
        let link = chain::link(prev, *seq, r, details);
        *prev = link;
        let realm = r.realm.as_ref().map(RealmId::as_str);
        let seq_i = *seq as i64;
        let link_s = link.as_slice();
        let p: [&dyn ToSql; 15] = [
            &r.time,
            &realm,
            &r.actor,
            &r.operation,
            &r.target,
            &r.result,
            &r.source_ip,
            &r.user_agent,
            &r.client_id,
            &r.jti,
            &r.kid,
            details,
            &chain_name,
            &seq_i,
            &link_s,
        ];
        stmt.execute(&p[..])?;
        ids.push(conn.last_insert_rowid());
    }
    Ok(ids)
}

/// Links the records written before the chain existed (a database from an older version), in
/// append order, inside the migration's transaction. The append-only trigger is lifted for it.
pub(super) fn link_existing(tx: &Connection) -> Result<()> {
    tx.execute_batch("DROP TRIGGER audit_no_update;")?;
    let rows = tx
        .prepare(&format!(
            "SELECT {AUDIT_COLS} FROM audit WHERE seq IS NULL ORDER BY id"
        ))?
        .query_map([], audit_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let n = rows.len();
    for row in rows {
        let (record, details) = finish_audit(row)?;
        let name = chain::chain_of(&record).to_owned();
        let (seq, prev) = head(tx, &name)?;
        let link = chain::link(&prev, seq + 1, &record, &details);
        tx.execute(
            "UPDATE audit SET chain = ?, seq = ?, link = ? WHERE id = ?",
            params![name, (seq + 1) as i64, link.as_slice(), record.id],
        )?;
        set_head(tx, &name, seq + 1, &link)?;
    }
    tx.execute_batch(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit \
         BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;",
    )?;
    if n > 0 {
        tracing::info!(
            records = n,
            "linked earlier audit records into their chains"
        );
    }
    Ok(())
}

impl SqliteStore {
    /// Chained records matching `filter` (with `args`), in `order`, at most `limit`.
    fn chained(
        &self,
        filter: &str,
        args: &[&dyn ToSql],
        order: &str,
        limit: u64,
    ) -> Result<Vec<ChainedRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {AUDIT_COLS}, chain, seq, link FROM audit WHERE {filter} ORDER BY {order} LIMIT {limit}"
        );
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    audit_row(r)?,
                    r.get::<_, String>(13)?,
                    r.get::<_, Option<i64>>(14)?,
                    r.get::<_, Option<Vec<u8>>>(15)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(row, chain, seq, link)| {
                let (record, details_text) = finish_audit(row)?;
                Ok(ChainedRecord {
                    record,
                    chain,
                    seq: seq.and_then(|s| u64::try_from(s).ok()),
                    link,
                    details_text,
                })
            })
            .collect()
    }
}

impl crate::traits::AuditChainStore for SqliteStore {
    fn audit_heads(&self) -> Result<Vec<(String, u64, Link)>> {
        let rows = self
            .reader()?
            .prepare_cached("SELECT chain, seq, link FROM audit_heads ORDER BY chain")?
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(c, s, l)| Ok((c, u64::try_from(s).unwrap_or(0), to_link(l)?)))
            .collect()
    }

    fn audit_chain(
        &self,
        chain: Option<&str>,
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<ChainedRecord>> {
        // By id, the append order: the verifier checks that positions follow it.
        match chain {
            Some(c) => self.chained("chain = ? AND id > ?", &[&c, &after_id], "id", limit),
            None => self.chained("id > ?", &[&after_id], "id", limit),
        }
    }

    fn audit_chain_after_seq(
        &self,
        chain: &str,
        after_seq: u64,
        limit: u64,
    ) -> Result<Vec<ChainedRecord>> {
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        self.chained("chain = ? AND seq > ?", &[&chain, &after], "seq", limit)
    }

    fn add_checkpoint(&self, c: &Checkpoint) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO audit_checkpoints(chain, seq, link, time, kid, signature, number, prev) \
             VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(chain, seq) DO NOTHING",
            params![
                c.chain,
                c.seq as i64,
                c.link,
                c.time,
                c.kid.as_str(),
                c.signature,
                c.number as i64,
                c.prev.as_ref().map(|p| p.as_slice())
            ],
        )?;
        Ok(())
    }

    fn expiry_point(&self, chain: &str, before: i64) -> Result<Option<(u64, Link, u64)>> {
        let conn = self.reader()?;
        // A prefix: everything up to the newest record older than `before`.
        let last: Option<(i64, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT seq, link FROM audit WHERE chain = ? AND time < ? AND seq IS NOT NULL \
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![chain, before], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((seq, link)) = last else {
            return Ok(None);
        };
        let n: i64 = conn
            .prepare_cached("SELECT count(*) FROM audit WHERE chain = ? AND seq <= ?")?
            .query_row(params![chain, seq], |r| r.get(0))?;
        Ok(Some((
            u64::try_from(seq).unwrap_or(0),
            to_link(link)?,
            u64::try_from(n).unwrap_or(0),
        )))
    }

    fn expire_audit(&self, t: &Tombstone) -> Result<u64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: Option<Vec<u8>> = tx
            .query_row(
                "SELECT link FROM audit WHERE chain = ? AND seq = ?",
                params![t.chain, t.through_seq as i64],
                |r| r.get(0),
            )
            .optional()?;
        if current.as_deref() != Some(t.link.as_slice()) {
            return Err(Error::Conflict(format!(
                "chain {:?} changed at position {} since the tombstone was signed",
                t.chain, t.through_seq
            )));
        }
        // The one sanctioned deletion: lifted for this transaction only.
        tx.execute_batch("DROP TRIGGER audit_no_delete;")?;
        let n = tx.execute(
            "DELETE FROM audit WHERE chain = ? AND seq <= ?",
            params![t.chain, t.through_seq as i64],
        )?;
        tx.execute_batch(
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit \
             BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;",
        )?;
        tx.execute(
            "INSERT INTO audit_tombstones(chain, through_seq, link, time, records, kid, signature) \
             VALUES (?,?,?,?,?,?,?)",
            params![
                t.chain,
                t.through_seq as i64,
                t.link,
                t.time,
                n as i64,
                t.kid.as_str(),
                t.signature
            ],
        )?;
        tx.commit()?;
        Ok(n as u64)
    }

    fn tombstone(&self, chain: &str) -> Result<Option<Tombstone>> {
        let row: Option<(String, i64, Vec<u8>, i64, i64, String, Vec<u8>)> = self
            .reader()?
            .prepare_cached(
                "SELECT chain, through_seq, link, time, records, kid, signature FROM audit_tombstones \
                 WHERE chain = ? ORDER BY through_seq DESC LIMIT 1",
            )?
            .query_row([chain], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })
            .optional()?;
        row.map(|(chain, seq, link, time, records, kid, signature)| {
            Ok(Tombstone {
                chain,
                through_seq: u64::try_from(seq).unwrap_or(0),
                link,
                time,
                records: u64::try_from(records).unwrap_or(0),
                kid: Kid::new(kid).map_err(|e| Error::Corrupt(e.to_string()))?,
                signature,
            })
        })
        .transpose()
    }

    fn checkpoints(&self, chain: &str) -> Result<Vec<Checkpoint>> {
        // Every row, numbered or not: a checkpoint written by hand without a number sorts
        // first (as 0), where the verifier's numbering check finds it.
        self.checkpoint_rows(chain, None, u64::MAX)
    }

    fn checkpoints_after(&self, chain: &str, after: u64, limit: u64) -> Result<Vec<Checkpoint>> {
        // Numbered rows only: unnumbered ones (written by hand) must not fill a published
        // page and end its paging.
        self.checkpoint_rows(chain, Some(after), limit)
    }
}

impl SqliteStore {
    /// A chain's checkpoints in number order: numbered after `after` if given, else all.
    fn checkpoint_rows(
        &self,
        chain: &str,
        after: Option<u64>,
        limit: u64,
    ) -> Result<Vec<Checkpoint>> {
        type Row = (
            String,
            i64,
            Vec<u8>,
            i64,
            String,
            Vec<u8>,
            Option<i64>,
            Option<Vec<u8>>,
        );
        let after = after.map(|a| i64::try_from(a).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .reader()?
            .prepare_cached(
                "SELECT chain, seq, link, time, kid, signature, number, prev FROM audit_checkpoints \
                 WHERE chain = ?1 AND (?2 IS NULL OR number > ?2) \
                 ORDER BY ifnull(number, 0), seq LIMIT ?3",
            )?
            .query_map(params![chain, after, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<Row>>>()?;
        rows.into_iter()
            .map(|(chain, seq, link, time, kid, signature, number, prev)| {
                Ok(Checkpoint {
                    chain,
                    number: number.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    // A hand-written row whose prev is no link reads as one of the first
                    // format, whose signature then fails: reported, never an error.
                    prev: prev.and_then(|p| <Link>::try_from(p.as_slice()).ok()),
                    seq: u64::try_from(seq).unwrap_or(0),
                    link,
                    time,
                    kid: Kid::new(kid).map_err(|e| Error::Corrupt(e.to_string()))?,
                    signature,
                })
            })
            .collect()
    }
}
