//! The group commit: durable writes queued by many callers, applied by one thread in one
//! transaction and answered after its commit.

use std::sync::MutexGuard;

use rusqlite::{Connection, params};

use super::audit_chain::{self, insert_audit};
use super::ledger::{insert_ledger, revoked_family, stale_session};
use super::{SqliteStore, Writer};
use crate::completion::{Completer, Completion};
use crate::ids::Jti;
use crate::model::*;
use crate::{Error, Result};

#[derive(Default)]
pub(super) struct Queue {
    pub(super) pending: Vec<Pending>,
    pub(super) closing: bool,
}

/// One queued write and the completion its writer waits on.
pub(super) struct Pending {
    write: Write,
    done: Completer,
}

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

    pub(super) fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committer thread: waits for writes, commits them in batches, answers them.
    pub(super) fn run_committer(&self) {
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
