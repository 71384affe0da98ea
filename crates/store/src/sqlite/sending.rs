//! [`SendingStore`] for SQLite: identities, submissions and quotas.

use rusqlite::{OptionalExtension, Row, params};

use super::mail::{changes, next_modseq};
use super::{SqliteStore, from_json, json, parse_id};
use crate::Result;
use crate::ids::{AccountId, IdentityId, SubmissionId};
use crate::model::{Changes, Delivery, Identity, QuotaSetting, Submission};
use crate::traits::SendingStore;

const IDENTITY_COLS: &str =
    "id, account, name, email, reply_to, bcc, text_signature, html_signature, is_primary";

type IdentityRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    bool,
);

fn identity_row(r: &Row<'_>) -> rusqlite::Result<IdentityRow> {
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
    ))
}

fn finish_identity(row: IdentityRow) -> Result<Identity> {
    let (id, account, name, email, reply_to, bcc, text_signature, html_signature, is_primary) = row;
    Ok(Identity {
        id: parse_id(id)?,
        account: parse_id(account)?,
        name,
        email,
        reply_to: reply_to.as_deref().map(from_json).transpose()?,
        bcc: bcc.as_deref().map(from_json).transpose()?,
        text_signature,
        html_signature,
        is_primary,
    })
}

/// The stored envelope of a submission.
#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    mail_from: String,
    rcpt_to: Vec<String>,
}

const SUBMISSION_COLS: &str =
    "id, account, identity_id, email_id, thread_id, envelope, send_at, delivery";

type SubmissionRow = (String, String, String, String, String, String, i64, String);

fn submission_row(r: &Row<'_>) -> rusqlite::Result<SubmissionRow> {
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
}

fn finish_submission(row: SubmissionRow) -> Result<Submission> {
    let (id, account, identity, email, thread, envelope, send_at, delivery) = row;
    let envelope: Envelope = from_json(&envelope)?;
    let delivery: Vec<Delivery> = from_json(&delivery)?;
    Ok(Submission {
        id: parse_id(id)?,
        account: parse_id(account)?,
        identity: parse_id(identity)?,
        email: parse_id(email)?,
        thread: parse_id(thread)?,
        mail_from: envelope.mail_from,
        rcpt_to: envelope.rcpt_to,
        send_at,
        delivery,
    })
}

impl SqliteStore {
    /// Marks a live row of `table` destroyed at a new modseq (kept for `/changes`);
    /// `NotFound` unless the account has it and `condition` holds.
    fn tombstone(
        &self,
        table: &str,
        condition: &str,
        account: &AccountId,
        id: &str,
    ) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let modseq = next_modseq(&tx, account)?;
        let n = tx.execute(
            &format!(
                "UPDATE {table} SET destroyed_modseq = ? \
                 WHERE id = ? AND account = ? AND destroyed_modseq IS NULL AND {condition}"
            ),
            params![modseq, id, account.as_str()],
        )?;
        if n == 0 {
            return Err(crate::Error::NotFound(format!("{table} {id}")));
        }
        tx.commit()?;
        Ok(modseq)
    }
}

impl SendingStore for SqliteStore {
    fn list_identities(&self, account: &AccountId) -> Result<Vec<Identity>> {
        let rows = self
            .reader()?
            .prepare_cached(&format!(
                "SELECT {IDENTITY_COLS} FROM identities WHERE account = ? AND destroyed_modseq IS NULL \
                 ORDER BY is_primary DESC, created_modseq, id"
            ))?
            .query_map([account.as_str()], identity_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(finish_identity).collect()
    }

    fn create_identity(&self, i: &Identity) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let modseq = next_modseq(&tx, &i.account)?;
        tx.execute(
            &format!(
                "INSERT INTO identities({IDENTITY_COLS}, created_modseq, updated_modseq) \
                 VALUES (?,?,?,?,?,?,?,?,?,?,?)"
            ),
            params![
                i.id.as_str(),
                i.account.as_str(),
                i.name,
                i.email,
                i.reply_to.as_ref().map(json).transpose()?,
                i.bcc.as_ref().map(json).transpose()?,
                i.text_signature,
                i.html_signature,
                i.is_primary,
                modseq,
                modseq
            ],
        )?;
        tx.commit()?;
        Ok(modseq)
    }

    fn update_identity(&self, i: &Identity) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let modseq = next_modseq(&tx, &i.account)?;
        let n = tx.execute(
            "UPDATE identities SET name = ?, reply_to = ?, bcc = ?, text_signature = ?, \
             html_signature = ?, updated_modseq = ? \
             WHERE id = ? AND account = ? AND destroyed_modseq IS NULL",
            params![
                i.name,
                i.reply_to.as_ref().map(json).transpose()?,
                i.bcc.as_ref().map(json).transpose()?,
                i.text_signature,
                i.html_signature,
                modseq,
                i.id.as_str(),
                i.account.as_str()
            ],
        )?;
        if n == 0 {
            return Err(crate::Error::NotFound(format!("identity {}", i.id)));
        }
        tx.commit()?;
        Ok(modseq)
    }

    fn destroy_identity(&self, account: &AccountId, id: &IdentityId) -> Result<i64> {
        self.tombstone("identities", "NOT is_primary", account, id.as_str())
    }

    fn identity_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<IdentityId>>> {
        changes(&*self.reader()?, "identities", account, since, max)
    }

    fn insert_submission(&self, s: &Submission) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let modseq = next_modseq(&tx, &s.account)?;
        let envelope = Envelope {
            mail_from: s.mail_from.clone(),
            rcpt_to: s.rcpt_to.clone(),
        };
        tx.execute(
            &format!(
                "INSERT INTO submissions({SUBMISSION_COLS}, created_modseq, updated_modseq) \
                 VALUES (?,?,?,?,?,?,?,?,?,?)"
            ),
            params![
                s.id.as_str(),
                s.account.as_str(),
                s.identity.as_str(),
                s.email.as_str(),
                s.thread.as_str(),
                json(&envelope)?,
                s.send_at,
                json(&s.delivery)?,
                modseq,
                modseq
            ],
        )?;
        tx.commit()?;
        Ok(modseq)
    }

    fn list_submissions(&self, account: &AccountId) -> Result<Vec<Submission>> {
        let rows = self
            .reader()?
            .prepare_cached(&format!(
                "SELECT {SUBMISSION_COLS} FROM submissions WHERE account = ? AND destroyed_modseq IS NULL \
                 ORDER BY send_at DESC, id DESC"
            ))?
            .query_map([account.as_str()], submission_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(finish_submission).collect()
    }

    fn destroy_submission(&self, account: &AccountId, id: &SubmissionId) -> Result<i64> {
        self.tombstone("submissions", "1", account, id.as_str())
    }

    fn submission_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<SubmissionId>>> {
        changes(&*self.reader()?, "submissions", account, since, max)
    }

    fn mail_usage(&self, account: &AccountId) -> Result<u64> {
        let used: Option<i64> = self
            .reader()?
            .prepare_cached("SELECT used FROM mail_state WHERE account = ?")?
            .query_row([account.as_str()], |r| r.get(0))
            .optional()?;
        Ok(u64::try_from(used.unwrap_or(0)).unwrap_or(0))
    }

    fn account_quota(&self, account: &AccountId) -> Result<QuotaSetting> {
        let row: Option<Option<i64>> = self
            .reader()?
            .prepare_cached("SELECT limit_bytes FROM quotas WHERE account = ?")?
            .query_row([account.as_str()], |r| r.get(0))
            .optional()?;
        Ok(match row {
            None => QuotaSetting::Default,
            Some(None) => QuotaSetting::Unlimited,
            Some(Some(n)) => QuotaSetting::Limit(u64::try_from(n).unwrap_or(0)),
        })
    }

    fn set_account_quota(&self, account: &AccountId, quota: QuotaSetting) -> Result<()> {
        let conn = self.conn()?;
        match quota {
            QuotaSetting::Default => {
                conn.execute("DELETE FROM quotas WHERE account = ?", [account.as_str()])?;
            }
            QuotaSetting::Unlimited | QuotaSetting::Limit(_) => {
                let limit = match quota {
                    QuotaSetting::Limit(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
                    _ => None,
                };
                conn.execute(
                    "INSERT INTO quotas(account, limit_bytes) VALUES (?, ?) \
                     ON CONFLICT(account) DO UPDATE SET limit_bytes = excluded.limit_bytes",
                    params![account.as_str(), limit],
                )?;
            }
        }
        Ok(())
    }
}
