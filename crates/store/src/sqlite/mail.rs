//! [`MailStore`] for SQLite.

use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{SqliteStore, from_json, json, parse_id, parse_opt};
use crate::Result;
use crate::ids::{AccountId, BlobId, EmailId, MailboxId, ThreadId};
use crate::model::{EmailRecord, Mailbox, PendingUpload};
use crate::traits::MailStore;

/// Bumps and returns the account's modseq inside `tx`.
pub(super) fn next_modseq(tx: &Transaction<'_>, account: &AccountId) -> Result<i64> {
    Ok(tx.query_row(
        "INSERT INTO mail_state(account, modseq) VALUES (?, 1) \
         ON CONFLICT(account) DO UPDATE SET modseq = modseq + 1 RETURNING modseq",
        [account.as_str()],
        |r| r.get(0),
    )?)
}

/// Marks mailboxes updated (their counts changed) at `modseq`.
fn touch_mailboxes(tx: &Transaction<'_>, mailboxes: &[MailboxId], modseq: i64) -> Result<()> {
    for m in mailboxes {
        tx.execute(
            "UPDATE mailboxes SET updated_modseq = ? WHERE id = ?",
            params![modseq, m.as_str()],
        )?;
    }
    Ok(())
}

fn memberships(tx: &Transaction<'_>, email: &EmailId) -> Result<Vec<MailboxId>> {
    let rows = tx
        .prepare_cached("SELECT mailbox FROM email_mailboxes WHERE email = ?")?
        .query_map([email.as_str()], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(parse_id).collect()
}

/// `NotFound` unless `account` has the (undestroyed) mailbox `id`.
fn live_mailbox(tx: &Transaction<'_>, account: &AccountId, id: &MailboxId) -> Result<()> {
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM mailboxes WHERE id = ? AND account = ? AND destroyed_modseq IS NULL",
        [id.as_str(), account.as_str()],
        |r| r.get(0),
    )?;
    if n == 0 {
        return Err(crate::Error::NotFound(format!("mailbox {id}")));
    }
    Ok(())
}

fn live_email(tx: &Transaction<'_>, account: &AccountId, id: &EmailId) -> Result<()> {
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM emails WHERE id = ? AND account = ? AND destroyed_modseq IS NULL",
        [id.as_str(), account.as_str()],
        |r| r.get(0),
    )?;
    if n == 0 {
        return Err(crate::Error::NotFound(format!("email {id}")));
    }
    Ok(())
}

/// Rows of `table` changed after `since`: (id, created_modseq, destroyed?) ordered by the modseq
/// of their latest change, at most `max` + 1 (to tell whether more remain).
/// The account's current modseq.
fn current_modseq(conn: &rusqlite::Connection, account: &AccountId) -> Result<i64> {
    Ok(conn
        .query_row(
            "SELECT modseq FROM mail_state WHERE account = ?",
            [account.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Rows of a change query, each ending in the modseq it happened at. `sql` selects them for
/// one account with `m > ? AND m <= ?` and `LIMIT ?`, ordered by `m`.
///
/// Returns at most `max` rows, never cut in the middle of one modseq (a client resuming from
/// the returned modseq must not miss the rest of it); the modseq they reach; whether more remain.
fn changed_rows<R>(
    conn: &rusqlite::Connection,
    sql: &str,
    account: &AccountId,
    (since, current): (i64, i64),
    max: u64,
    row: impl Fn(&Row<'_>) -> rusqlite::Result<(R, i64)>,
) -> Result<(Vec<R>, i64, bool)> {
    let fetch = |until: i64, limit: i64| -> Result<Vec<(R, i64)>> {
        Ok(conn
            .prepare_cached(sql)?
            .query_map(params![account.as_str(), since, until, limit], &row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    };
    let cap = usize::try_from(max).unwrap_or(usize::MAX);
    let mut rows = fetch(
        current,
        i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX),
    )?;
    if rows.len() <= cap {
        return Ok((rows.into_iter().map(|r| r.0).collect(), current, false));
    }
    let next = rows[cap].1;
    let keep = rows.iter().take(cap).filter(|r| r.1 < next).count();
    if keep == 0 {
        // One modseq holds more than `max` changes: report all of it rather than never advance.
        let whole = fetch(next, i64::MAX)?;
        return Ok((
            whole.into_iter().map(|r| r.0).collect(),
            next,
            next < current,
        ));
    }
    rows.truncate(keep);
    let reached = rows.last().map_or(current, |r| r.1);
    Ok((rows.into_iter().map(|r| r.0).collect(), reached, true))
}

pub(super) fn changes<T: std::str::FromStr>(
    conn: &rusqlite::Connection,
    table: &str,
    account: &AccountId,
    since: i64,
    max: u64,
) -> Result<Option<crate::model::Changes<T>>>
where
    T::Err: std::fmt::Display,
{
    let current = current_modseq(conn, account)?;
    if since > current || since < 0 {
        return Ok(None);
    }
    let sql = format!(
        "SELECT id, created_modseq, destroyed_modseq, max(updated_modseq, ifnull(destroyed_modseq, 0)) AS m \
         FROM {table} WHERE account = ? AND m > ? AND m <= ? ORDER BY m, id LIMIT ?"
    );
    let (rows, new_modseq, has_more) =
        changed_rows(conn, &sql, account, (since, current), max, |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ),
                r.get::<_, i64>(3)?,
            ))
        })?;
    let mut out = crate::model::Changes::empty(new_modseq, has_more);
    for (id, created, destroyed) in rows {
        let id: T = parse_id(id)?;
        match (created > since, destroyed.is_some()) {
            (true, true) => {} // born and gone within the window: the client never saw it
            (true, false) => out.created.push(id),
            (false, true) => out.destroyed.push(id),
            (false, false) => out.updated.push(id),
        }
    }
    Ok(Some(out))
}

/// Threads whose membership changed after `since`: a thread changes only when an email joins
/// (is created) or leaves (is destroyed); keyword and mailbox changes do not touch it.
fn thread_changes(
    conn: &rusqlite::Connection,
    account: &AccountId,
    since: i64,
    max: u64,
) -> Result<Option<crate::model::Changes<ThreadId>>> {
    let current = current_modseq(conn, account)?;
    if since > current || since < 0 {
        return Ok(None);
    }
    let sql = "SELECT e.thread_id, \
           EXISTS (SELECT 1 FROM emails b WHERE b.thread_id = e.thread_id AND b.account = e.account \
                   AND b.created_modseq <= ?2 AND (b.destroyed_modseq IS NULL OR b.destroyed_modseq > ?2)), \
           EXISTS (SELECT 1 FROM emails n WHERE n.thread_id = e.thread_id AND n.account = e.account \
                   AND n.destroyed_modseq IS NULL), \
           MAX(max(e.created_modseq, ifnull(e.destroyed_modseq, 0))) AS m \
         FROM emails e WHERE e.account = ?1 \
           AND (e.created_modseq > ?2 OR e.destroyed_modseq > ?2) \
         GROUP BY e.thread_id HAVING m <= ?3 ORDER BY m, e.thread_id LIMIT ?4";
    let (rows, new_modseq, has_more) =
        changed_rows(conn, sql, account, (since, current), max, |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, bool>(2)?,
                ),
                r.get::<_, i64>(3)?,
            ))
        })?;
    let mut out = crate::model::Changes::empty(new_modseq, has_more);
    for (id, before, now) in rows {
        let id: ThreadId = parse_id(id)?;
        match (before, now) {
            (true, true) => out.updated.push(id),
            (false, true) => out.created.push(id),
            (true, false) => out.destroyed.push(id),
            (false, false) => {}
        }
    }
    Ok(Some(out))
}

const EMAIL_COLS: &str = "id, account, blob_id, thread_id, message_id, subject, from_json, to_json, cc_json, \
    sent_at, received_at, size, preview, has_attachment, keywords";

fn email_row(r: &Row<'_>) -> rusqlite::Result<Result<EmailRecord>> {
    let raw: (
        String,
        String,
        String,
        String,
        Option<String>,
        String,
        String,
        String,
        String,
    ) = (
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    );
    let rest: (Option<i64>, i64, i64, String, bool, String) = (
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
    );
    Ok((|| {
        Ok(EmailRecord {
            id: parse_id(raw.0)?,
            account: parse_id(raw.1)?,
            blob_id: parse_id(raw.2)?,
            thread_id: parse_id(raw.3)?,
            message_id: raw.4,
            subject: raw.5,
            from: from_json(&raw.6)?,
            to: from_json(&raw.7)?,
            cc: from_json(&raw.8)?,
            sent_at: rest.0,
            received_at: rest.1,
            size: rest.2.max(0) as u64,
            preview: rest.3,
            has_attachment: rest.4,
            keywords: from_json(&rest.5)?,
        })
    })())
}

impl MailStore for SqliteStore {
    fn create_mailboxes(&self, mailboxes: &[Mailbox]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for m in mailboxes {
            let modseq = next_modseq(&tx, &m.account)?;
            tx.execute(
                "INSERT INTO mailboxes(id, account, name, role, parent, sort_order, created_modseq, updated_modseq) \
                 VALUES (?,?,?,?,?,?,?,?)",
                params![
                    m.id.as_str(),
                    m.account.as_str(),
                    m.name,
                    m.role,
                    m.parent.as_ref().map(MailboxId::as_str),
                    m.sort_order,
                    modseq,
                    modseq
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn list_mailboxes(&self, account: &AccountId) -> Result<Vec<Mailbox>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, account, name, role, parent, sort_order FROM mailboxes \
             WHERE account = ? AND destroyed_modseq IS NULL ORDER BY sort_order, name",
        )?;
        let rows = stmt
            .query_map([account.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, account, name, role, parent, sort_order)| {
                Ok(Mailbox {
                    id: parse_id(id)?,
                    account: parse_id(account)?,
                    name,
                    role,
                    parent: parse_opt(parent)?,
                    sort_order,
                })
            })
            .collect()
    }

    fn insert_email(
        &self,
        e: &EmailRecord,
        mailboxes: &[MailboxId],
        references: &[String],
        search: &crate::model::SearchText,
    ) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let modseq = next_modseq(&tx, &e.account)?;
        tx.execute(
            &format!("INSERT INTO emails({EMAIL_COLS}, created_modseq, updated_modseq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"),
            params![
                e.id.as_str(),
                e.account.as_str(),
                e.blob_id.as_str(),
                e.thread_id.as_str(),
                e.message_id,
                e.subject,
                json(&e.from)?,
                json(&e.to)?,
                json(&e.cc)?,
                e.sent_at,
                e.received_at,
                e.size as i64,
                e.preview,
                e.has_attachment,
                json(&e.keywords)?,
                modseq,
                modseq
            ],
        )?;
        // The emails row's rowid keys its search entry.
        let rowid = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO email_fts(rowid, subject, from_text, to_text, body) VALUES (?, ?, ?, ?, ?)",
            params![rowid, e.subject, search.from, search.to, search.body],
        )?;
        for m in mailboxes {
            tx.execute(
                "INSERT INTO email_mailboxes(email, mailbox) VALUES (?, ?)",
                params![e.id.as_str(), m.as_str()],
            )?;
        }
        for r in references {
            tx.execute(
                "INSERT INTO email_refs(account, ref_message_id, email) VALUES (?, ?, ?)",
                params![e.account.as_str(), r, e.id.as_str()],
            )?;
        }
        tx.commit()?;
        Ok(modseq)
    }

    fn find_thread(
        &self,
        account: &AccountId,
        parents: &[String],
        own: Option<&str>,
    ) -> Result<Option<ThreadId>> {
        let conn = self.reader()?;
        for p in parents {
            let t: Option<String> = conn
                .prepare_cached(
                    "SELECT thread_id FROM emails WHERE account = ? AND message_id = ? LIMIT 1",
                )?
                .query_row([account.as_str(), p], |r| r.get(0))
                .optional()?;
            if let Some(t) = t {
                return Ok(Some(parse_id(t)?));
            }
        }
        if let Some(own) = own {
            let t: Option<String> = conn
                .prepare_cached(
                    "SELECT e.thread_id FROM email_refs r JOIN emails e ON e.id = r.email \
                     WHERE r.account = ? AND r.ref_message_id = ? LIMIT 1",
                )?
                .query_row([account.as_str(), own], |r| r.get(0))
                .optional()?;
            return parse_opt(t);
        }
        Ok(None)
    }

    fn email_with_blob(&self, account: &AccountId, blob: &BlobId) -> Result<Option<EmailId>> {
        let id: Option<String> = self
            .reader()?
            .prepare_cached("SELECT id FROM emails WHERE account = ? AND blob_id = ? AND destroyed_modseq IS NULL LIMIT 1")?
            .query_row([account.as_str(), blob.as_str()], |r| r.get(0))
            .optional()?;
        parse_opt(id)
    }

    fn get_email(&self, id: &EmailId) -> Result<Option<EmailRecord>> {
        self.reader()?
            .prepare_cached(&format!(
                "SELECT {EMAIL_COLS} FROM emails WHERE id = ? AND destroyed_modseq IS NULL"
            ))?
            .query_row([id.as_str()], email_row)
            .optional()?
            .transpose()
    }

    fn count_emails(&self, account: &AccountId, mailbox: Option<&MailboxId>) -> Result<u64> {
        let conn = self.reader()?;
        Ok(match mailbox {
            Some(m) => conn.query_row(
                "SELECT COUNT(*) FROM email_mailboxes em JOIN emails e ON e.id = em.email \
                 WHERE em.mailbox = ? AND e.account = ? AND e.destroyed_modseq IS NULL",
                [m.as_str(), account.as_str()],
                |r| r.get(0),
            )?,
            None => conn.query_row(
                "SELECT COUNT(*) FROM emails WHERE account = ? AND destroyed_modseq IS NULL",
                [account.as_str()],
                |r| r.get(0),
            )?,
        })
    }

    fn mail_modseq(&self, account: &AccountId) -> Result<i64> {
        Ok(self
            .reader()?
            .prepare_cached("SELECT modseq FROM mail_state WHERE account = ?")?
            .query_row([account.as_str()], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn query_emails(
        &self,
        account: &AccountId,
        q: &crate::EmailQuery,
        page: crate::QueryPage,
    ) -> Result<(Vec<EmailId>, Option<u64>)> {
        use super::query::{Plan, from_where, order_by, top_level_match};
        let conn = self.reader()?;
        // A search sorted by arrival, without a total, where many emails match: walking the
        // arrival index and stopping after the page beats sorting every match. The index's
        // own count of matches (no row lookups) decides.
        const WALK_ABOVE_MATCHES: i64 = 2_000;
        let by_arrival = matches!(q.sort.as_slice(), [s] if s.key == crate::SortKey::ReceivedAt);
        let mut plan = Plan::Drive;
        if by_arrival
            && !page.count_total
            && !q.collapse_threads
            && let Some(m) = top_level_match(&q.filter)
        {
            let matches: i64 = conn
                .prepare_cached("SELECT count(*) FROM email_fts WHERE email_fts MATCH ?")?
                .query_row([m], |r| r.get(0))?;
            if matches > WALK_ABOVE_MATCHES {
                plan = Plan::WalkByArrival;
            }
        }
        let from_where = from_where(account, &q.filter, plan);
        let order = order_by(q);
        let total = if page.count_total {
            let column = if q.collapse_threads {
                "DISTINCT e.thread_id"
            } else {
                "*"
            };
            let sql = format!("SELECT COUNT({column}){}", from_where.text);
            let n: i64 = conn
                .prepare_cached(&sql)?
                .query_row(rusqlite::params_from_iter(&from_where.args), |r| r.get(0))?;
            Some(u64::try_from(n).unwrap_or(0))
        } else {
            None
        };
        let window = [
            rusqlite::types::Value::from(i64::try_from(page.limit).unwrap_or(i64::MAX)),
            rusqlite::types::Value::from(i64::try_from(page.position).unwrap_or(i64::MAX)),
        ];
        let (sql, args): (String, Vec<&rusqlite::types::Value>) = if q.collapse_threads {
            // The first email of each thread in sort order stands for the thread.
            (
                format!(
                    "SELECT id FROM (SELECT e.id AS id, ROW_NUMBER() OVER (PARTITION BY e.thread_id \
                     ORDER BY {o}) AS rn, ROW_NUMBER() OVER (ORDER BY {o}) AS pos{fw}) \
                     WHERE rn = 1 ORDER BY pos LIMIT ? OFFSET ?",
                    o = order.text,
                    fw = from_where.text
                ),
                order
                    .args
                    .iter()
                    .chain(&order.args)
                    .chain(&from_where.args)
                    .chain(&window)
                    .collect(),
            )
        } else {
            (
                format!(
                    "SELECT e.id{} ORDER BY {} LIMIT ? OFFSET ?",
                    from_where.text, order.text
                ),
                from_where
                    .args
                    .iter()
                    .chain(&order.args)
                    .chain(&window)
                    .collect(),
            )
        };
        let ids = conn
            .prepare_cached(&sql)?
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((ids.into_iter().map(parse_id).collect::<Result<_>>()?, total))
    }

    fn email_mailboxes(&self, emails: &[EmailId]) -> Result<Vec<(EmailId, MailboxId)>> {
        let conn = self.reader()?;
        let mut stmt =
            conn.prepare_cached("SELECT mailbox FROM email_mailboxes WHERE email = ?")?;
        let mut out = Vec::new();
        for e in emails {
            for m in stmt.query_map([e.as_str()], |r| r.get::<_, String>(0))? {
                out.push((e.clone(), parse_id(m?)?));
            }
        }
        Ok(out)
    }

    fn thread_emails(&self, account: &AccountId, thread: &ThreadId) -> Result<Vec<EmailId>> {
        let conn = self.reader()?;
        let ids = conn
            .prepare_cached(
                "SELECT id FROM emails WHERE thread_id = ? AND account = ? AND destroyed_modseq IS NULL \
                 ORDER BY received_at, id",
            )?
            .query_map([thread.as_str(), account.as_str()], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        ids.into_iter().map(parse_id).collect()
    }

    fn count_unread(&self, account: &AccountId, mailbox: &MailboxId) -> Result<u64> {
        Ok(self.reader()?.query_row(
            "SELECT COUNT(*) FROM email_mailboxes em JOIN emails e ON e.id = em.email \
             WHERE em.mailbox = ? AND e.account = ? AND e.destroyed_modseq IS NULL \
             AND NOT EXISTS (SELECT 1 FROM json_each(e.keywords) WHERE value = '$seen')",
            [mailbox.as_str(), account.as_str()],
            |r| r.get(0),
        )?)
    }

    fn update_email(
        &self,
        account: &AccountId,
        id: &EmailId,
        keywords: Option<&[String]>,
        mailboxes: Option<&[MailboxId]>,
    ) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        live_email(&tx, account, id)?;
        let modseq = next_modseq(&tx, account)?;
        let before = memberships(&tx, id)?;
        if let Some(k) = keywords {
            tx.execute(
                "UPDATE emails SET keywords = ? WHERE id = ?",
                params![json(&k)?, id.as_str()],
            )?;
            touch_mailboxes(&tx, &before, modseq)?; // unread counts may change
        }
        if let Some(boxes) = mailboxes {
            for m in boxes {
                live_mailbox(&tx, account, m)?;
            }
            tx.execute("DELETE FROM email_mailboxes WHERE email = ?", [id.as_str()])?;
            for m in boxes {
                tx.execute(
                    "INSERT INTO email_mailboxes(email, mailbox) VALUES (?, ?)",
                    params![id.as_str(), m.as_str()],
                )?;
            }
            touch_mailboxes(&tx, &before, modseq)?;
            touch_mailboxes(&tx, boxes, modseq)?;
        }
        tx.execute(
            "UPDATE emails SET updated_modseq = ? WHERE id = ?",
            params![modseq, id.as_str()],
        )?;
        tx.commit()?;
        Ok(modseq)
    }

    fn destroy_email(&self, account: &AccountId, id: &EmailId) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        live_email(&tx, account, id)?;
        let modseq = next_modseq(&tx, account)?;
        let before = memberships(&tx, id)?;
        tx.execute("DELETE FROM email_mailboxes WHERE email = ?", [id.as_str()])?;
        tx.execute(
            "DELETE FROM email_fts WHERE rowid = (SELECT rowid FROM emails WHERE id = ?)",
            [id.as_str()],
        )?;
        tx.execute(
            "UPDATE emails SET destroyed_modseq = ? WHERE id = ?",
            params![modseq, id.as_str()],
        )?;
        touch_mailboxes(&tx, &before, modseq)?;
        tx.commit()?;
        Ok(modseq)
    }

    fn email_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<crate::model::Changes<EmailId>>> {
        changes(&*self.reader()?, "emails", account, since, max)
    }

    fn thread_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<crate::model::Changes<ThreadId>>> {
        thread_changes(&*self.reader()?, account, since, max)
    }

    fn mailbox_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<crate::model::Changes<MailboxId>>> {
        changes(&*self.reader()?, "mailboxes", account, since, max)
    }

    fn record_upload(
        &self,
        account: &AccountId,
        blob: &BlobId,
        media_type: &str,
        size: u64,
        at: crate::model::UnixTime,
    ) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO uploads(account, blob_id, media_type, size, created_at) VALUES (?,?,?,?,?) \
             ON CONFLICT(account, blob_id) DO UPDATE SET media_type = excluded.media_type, \
             created_at = max(created_at, excluded.created_at)",
            params![account.as_str(), blob.as_str(), media_type, size as i64, at],
        )?;
        Ok(())
    }

    fn has_upload(&self, account: &AccountId, blob: &BlobId) -> Result<bool> {
        Ok(self
            .reader()?
            .prepare_cached("SELECT 1 FROM uploads WHERE account = ? AND blob_id = ?")?
            .query_row([account.as_str(), blob.as_str()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn pending_uploads(&self, account: &AccountId) -> Result<Vec<PendingUpload>> {
        let rows = self
            .reader()?
            .prepare_cached(
                "SELECT blob_id, size, created_at FROM uploads u WHERE account = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.blob_id = u.blob_id \
                     AND e.account = ?1 AND e.destroyed_modseq IS NULL) \
                 ORDER BY created_at, blob_id",
            )?
            .query_map([account.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(blob, size, created_at)| {
                Ok(PendingUpload {
                    blob: parse_id(blob)?,
                    size: u64::try_from(size).unwrap_or(0),
                    created_at,
                })
            })
            .collect()
    }

    fn delete_upload(&self, account: &AccountId, blob: &BlobId) -> Result<bool> {
        let n = self.conn()?.execute(
            "DELETE FROM uploads WHERE account = ? AND blob_id = ?",
            [account.as_str(), blob.as_str()],
        )?;
        Ok(n > 0)
    }

    fn expire_uploads(&self, before: crate::model::UnixTime, limit: usize) -> Result<Vec<BlobId>> {
        let rows = self
            .conn()?
            .prepare_cached(
                "DELETE FROM uploads WHERE (account, blob_id) IN \
                 (SELECT account, blob_id FROM uploads WHERE created_at < ? ORDER BY created_at LIMIT ?) \
                 RETURNING blob_id",
            )?
            .query_map(params![before, limit as i64], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(parse_id).collect()
    }

    fn blob_in_use(&self, blob: &BlobId) -> Result<bool> {
        Ok(self
            .reader()?
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM emails WHERE blob_id = ?1) \
                 OR EXISTS (SELECT 1 FROM uploads WHERE blob_id = ?1)",
            )?
            .query_row([blob.as_str()], |r| r.get(0))?)
    }

    fn update_mailbox(
        &self,
        account: &AccountId,
        id: &MailboxId,
        name: &str,
        parent: Option<&MailboxId>,
        sort_order: u32,
    ) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let modseq = next_modseq(&tx, account)?;
        let n = tx.execute(
            "UPDATE mailboxes SET name = ?, parent = ?, sort_order = ?, updated_modseq = ? \
             WHERE id = ? AND account = ? AND destroyed_modseq IS NULL",
            params![
                name,
                parent.map(MailboxId::as_str),
                sort_order,
                modseq,
                id.as_str(),
                account.as_str()
            ],
        )?;
        if n == 0 {
            return Err(crate::Error::NotFound(format!("mailbox {id}")));
        }
        tx.commit()?;
        Ok(modseq)
    }

    fn destroy_mailbox(
        &self,
        account: &AccountId,
        id: &MailboxId,
        remove_emails: bool,
    ) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        live_mailbox(&tx, account, id)?;
        let children: i64 = tx.query_row(
            "SELECT COUNT(*) FROM mailboxes WHERE parent = ? AND destroyed_modseq IS NULL",
            [id.as_str()],
            |r| r.get(0),
        )?;
        if children > 0 {
            return Err(crate::Error::Conflict("mailboxHasChild".into()));
        }
        let emails: Vec<String> = tx
            .prepare("SELECT email FROM email_mailboxes WHERE mailbox = ?")?
            .query_map([id.as_str()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !emails.is_empty() && !remove_emails {
            return Err(crate::Error::Conflict("mailboxHasEmail".into()));
        }
        let modseq = next_modseq(&tx, account)?;
        for e in &emails {
            tx.execute(
                "DELETE FROM email_mailboxes WHERE email = ? AND mailbox = ?",
                [e.as_str(), id.as_str()],
            )?;
            let elsewhere: i64 = tx.query_row(
                "SELECT COUNT(*) FROM email_mailboxes WHERE email = ?",
                [e.as_str()],
                |r| r.get(0),
            )?;
            if elsewhere == 0 {
                tx.execute(
                    "DELETE FROM email_fts WHERE rowid = (SELECT rowid FROM emails WHERE id = ?)",
                    [e.as_str()],
                )?;
                tx.execute(
                    "UPDATE emails SET destroyed_modseq = ? WHERE id = ?",
                    params![modseq, e.as_str()],
                )?;
            } else {
                tx.execute(
                    "UPDATE emails SET updated_modseq = ? WHERE id = ?",
                    params![modseq, e.as_str()],
                )?;
            }
        }
        tx.execute(
            "UPDATE mailboxes SET destroyed_modseq = ? WHERE id = ?",
            params![modseq, id.as_str()],
        )?;
        tx.commit()?;
        Ok(modseq)
    }

    fn get_vacation(&self, account: &AccountId) -> Result<crate::model::Vacation> {
        let v = self
            .reader()?
            .prepare_cached("SELECT enabled, from_date, to_date, subject, text_body, html_body FROM vacation WHERE account = ?")?
            .query_row([account.as_str()], |r| {
                Ok(crate::model::Vacation {
                    enabled: r.get(0)?,
                    from_date: r.get(1)?,
                    to_date: r.get(2)?,
                    subject: r.get(3)?,
                    text_body: r.get(4)?,
                    html_body: r.get(5)?,
                })
            })
            .optional()?;
        Ok(v.unwrap_or_default())
    }

    fn set_vacation(&self, account: &AccountId, v: &crate::model::Vacation) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let modseq = next_modseq(&tx, account)?;
        tx.execute(
            "INSERT INTO vacation(account, enabled, from_date, to_date, subject, text_body, html_body) VALUES (?,?,?,?,?,?,?) \
             ON CONFLICT(account) DO UPDATE SET enabled = excluded.enabled, from_date = excluded.from_date, \
             to_date = excluded.to_date, subject = excluded.subject, text_body = excluded.text_body, html_body = excluded.html_body",
            params![account.as_str(), v.enabled, v.from_date, v.to_date, v.subject, v.text_body, v.html_body],
        )?;
        // A new or changed response starts a new period: everybody may get it once again.
        tx.execute(
            "DELETE FROM vacation_replies WHERE account = ?",
            [account.as_str()],
        )?;
        tx.commit()?;
        Ok(modseq)
    }

    fn claim_vacation_reply(
        &self,
        account: &AccountId,
        sender: &str,
        since: crate::model::UnixTime,
        at: crate::model::UnixTime,
    ) -> Result<bool> {
        let n = self.conn()?.execute(
            "INSERT INTO vacation_replies(account, sender, replied_at) VALUES (?, ?, ?) \
             ON CONFLICT(account, sender) DO UPDATE SET replied_at = excluded.replied_at WHERE replied_at < ?",
            params![account.as_str(), sender, at, since],
        )?;
        Ok(n > 0)
    }
}
