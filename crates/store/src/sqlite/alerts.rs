//! [`AlertStore`] for SQLite: alerts with de-duplication, the hourly mail cap's bookkeeping,
//! the consumers' cursors and the webhook's retry queue, and the rule settings.

use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, from_json, json, parse_opt};
use crate::model::{
    ALERT_EVIDENCE, Alert, AlertStatus, UnixTime, merge_alert_details, merge_evidence,
};
use crate::traits::AlertStore;
use crate::{RealmId, Result};

const ALERT_COLS: &str = "id, realm, rule, severity, title, dedup_key, first_seen, last_seen, \
    count, evidence, details, status, status_by";

fn alert(r: &Row<'_>) -> rusqlite::Result<Result<Alert>> {
    let realm: Option<String> = r.get(1)?;
    let severity: String = r.get(3)?;
    let evidence: String = r.get(9)?;
    let details: String = r.get(10)?;
    let status: String = r.get(11)?;
    let count: i64 = r.get(8)?;
    let (id, rule, title, dedup_key, first_seen, last_seen, status_by) = (
        r.get(0)?,
        r.get(2)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(12)?,
    );
    Ok((|| {
        Ok(Alert {
            id,
            realm: parse_opt(realm)?,
            rule,
            severity: severity.parse()?,
            title,
            dedup_key,
            first_seen,
            last_seen,
            count: u64::try_from(count).unwrap_or(0),
            evidence: from_json(&evidence)?,
            details: from_json(&details)?,
            status: status.parse()?,
            status_by,
        })
    })())
}

/// [`AlertStore::raise_alert`] inside the caller's transaction.
fn raise(tx: &rusqlite::Transaction<'_>, a: &Alert, window: i64) -> Result<(i64, bool)> {
    let realm = a.realm.as_ref().map(RealmId::as_str);
    let open: Option<(i64, String, String)> = tx
        .query_row(
            "SELECT id, evidence, details FROM alerts WHERE realm IS ? AND rule = ? \
             AND dedup_key = ? AND status <> 'resolved' AND last_seen >= ? \
             ORDER BY id DESC LIMIT 1",
            params![
                realm,
                a.rule,
                a.dedup_key,
                a.first_seen.saturating_sub(window)
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match open {
        Some((id, evidence, details)) => {
            let mut ev: Vec<i64> = from_json(&evidence)?;
            merge_evidence(&mut ev, &a.evidence);
            let mut details: serde_json::Value = from_json(&details)?;
            merge_alert_details(&mut details, &a.details);
            tx.execute(
                "UPDATE alerts SET last_seen = max(last_seen, ?), count = count + ?, evidence = ?, \
                 details = ?, updated_at = ? WHERE id = ?",
                params![
                    a.last_seen,
                    i64::try_from(a.count.max(1)).unwrap_or(i64::MAX),
                    json(&ev)?,
                    json(&details)?,
                    a.last_seen,
                    id
                ],
            )?;
            (id, false)
        }
        None => {
            let mut ev = a.evidence.clone();
            ev.truncate(ALERT_EVIDENCE);
            let mut details = serde_json::Value::Object(Default::default());
            merge_alert_details(&mut details, &a.details);
            tx.execute(
                "INSERT INTO alerts(realm, rule, severity, title, dedup_key, first_seen, last_seen, \
                 count, evidence, details, status, status_by, updated_at) \
                 VALUES (?,?,?,?,?,?,?,?,?,?,'open',NULL,?)",
                params![
                    realm,
                    a.rule,
                    a.severity.as_str(),
                    a.title,
                    a.dedup_key,
                    a.first_seen,
                    a.last_seen,
                    i64::try_from(a.count.max(1)).unwrap_or(i64::MAX),
                    json(&ev)?,
                    json(if a.details.is_object() { &details } else { &a.details })?,
                    a.first_seen
                ],
            )?;
            (tx.last_insert_rowid(), true)
        }
    })
}

impl AlertStore for SqliteStore {
    fn raise_alert(&self, a: &Alert, window: i64) -> Result<(i64, bool)> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let result = raise(&tx, a, window)?;
        tx.commit()?;
        Ok(result)
    }

    fn raise_alerts(
        &self,
        alerts: &[Alert],
        window: i64,
        cursor: &str,
        from: i64,
        to: i64,
    ) -> Result<Option<Vec<(i64, bool)>>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let at: i64 = tx
            .query_row(
                "SELECT value FROM detector_state WHERE name = ?",
                [cursor],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if at != from {
            return Ok(None);
        }
        let raised = alerts
            .iter()
            .map(|a| raise(&tx, a, window))
            .collect::<Result<Vec<_>>>()?;
        tx.execute(
            "INSERT INTO detector_state(name, value) VALUES (?, ?) \
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![cursor, to],
        )?;
        tx.commit()?;
        Ok(Some(raised))
    }

    fn alerts_after(&self, after_id: i64, limit: u32) -> Result<Vec<Alert>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLS} FROM alerts WHERE id > ? ORDER BY id LIMIT ?"
        ))?;
        let rows = stmt
            .query_map(params![after_id, limit], alert)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    fn claim_alert_mail(&self, id: i64, since: UnixTime, cap: u32, at: UnixTime) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let realm: Option<Option<String>> = tx
            .query_row("SELECT realm FROM alerts WHERE id = ?", [id], |r| r.get(0))
            .optional()?;
        let Some(realm) = realm else {
            return Err(crate::Error::NotFound(format!("alert {id}")));
        };
        let sent: i64 = tx.query_row(
            "SELECT COUNT(*) FROM alerts WHERE realm IS ? AND mail = 'sent' AND mail_at >= ?",
            params![realm, since],
            |r| r.get(0),
        )?;
        let mailed = sent < i64::from(cap);
        tx.execute(
            "UPDATE alerts SET mail = ?, mail_at = ? WHERE id = ?",
            params![if mailed { "sent" } else { "held" }, at, id],
        )?;
        tx.commit()?;
        Ok(mailed)
    }

    fn held_alerts(&self, before: UnixTime, limit: u32) -> Result<Vec<Alert>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLS} FROM alerts INDEXED BY alerts_held \
             WHERE mail = 'held' AND mail_at < ? ORDER BY mail_at, id LIMIT ?"
        ))?;
        let rows = stmt
            .query_map(params![before, limit], alert)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    fn set_alerts_summarized(&self, ids: &[i64]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE alerts SET mail = 'summarized' WHERE id = ? AND mail = 'held'",
            )?;
            for id in ids {
                stmt.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn defer_alert_delivery(
        &self,
        consumer: &str,
        id: i64,
        next_at: UnixTime,
        error: &str,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Bounded: the error is the receiver's, and only for the operator's eyes.
        let error: String = error.chars().take(500).collect();
        tx.execute(
            "INSERT INTO alert_retries(consumer, alert, attempts, next_at, last_error) \
             VALUES (?, ?, 1, ?, ?) ON CONFLICT(consumer, alert) DO UPDATE SET \
             attempts = attempts + 1, next_at = excluded.next_at, last_error = excluded.last_error",
            params![consumer, id, next_at, error],
        )?;
        tx.execute(
            "INSERT INTO detector_state(name, value) VALUES (?, ?) \
             ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)",
            params![consumer, id],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn due_alert_retries(
        &self,
        consumer: &str,
        now: UnixTime,
        limit: u32,
    ) -> Result<Vec<(Alert, u32)>> {
        let conn = self.reader()?;
        let cols = ALERT_COLS
            .split(", ")
            .map(|c| format!("a.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {cols}, q.attempts FROM alert_retries q JOIN alerts a ON a.id = q.alert \
             WHERE q.consumer = ? AND q.next_at <= ? ORDER BY q.alert LIMIT ?"
        ))?;
        let rows = stmt
            .query_map(params![consumer, now, limit], |r| {
                let attempts: i64 = r.get(13)?;
                Ok(alert(r)?.map(|a| (a, u32::try_from(attempts).unwrap_or(u32::MAX))))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    fn alert_retry_done(&self, consumer: &str, id: i64) -> Result<()> {
        self.conn()?.execute(
            "DELETE FROM alert_retries WHERE consumer = ? AND alert = ?",
            params![consumer, id],
        )?;
        Ok(())
    }

    fn list_alerts(
        &self,
        realm: Option<&RealmId>,
        status: Option<AlertStatus>,
        limit: u32,
    ) -> Result<Vec<Alert>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLS} FROM alerts WHERE (?1 IS NULL OR realm = ?1) \
             AND (?2 IS NULL OR status = ?2) ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = stmt
            .query_map(
                params![
                    realm.map(RealmId::as_str),
                    status.map(AlertStatus::as_str),
                    limit
                ],
                alert,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    fn get_alert(&self, id: i64) -> Result<Option<Alert>> {
        self.reader()?
            .prepare_cached(&format!("SELECT {ALERT_COLS} FROM alerts WHERE id = ?"))?
            .query_row([id], alert)
            .optional()?
            .transpose()
    }

    fn set_alert_status(
        &self,
        id: i64,
        status: AlertStatus,
        by: &str,
        at: UnixTime,
    ) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE alerts SET status = ?, status_by = ?, updated_at = ? WHERE id = ?",
            params![status.as_str(), by, at, id],
        )?;
        Ok(n > 0)
    }

    fn cursor(&self, name: &str) -> Result<i64> {
        Ok(self
            .reader()?
            .prepare_cached("SELECT value FROM detector_state WHERE name = ?")?
            .query_row([name], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn set_cursor(&self, name: &str, id: i64) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO detector_state(name, value) VALUES (?, ?) \
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![name, id],
        )?;
        Ok(())
    }

    fn rule_setting(&self, realm: &RealmId, rule: &str) -> Result<Option<(bool, Option<u64>)>> {
        let row: Option<(bool, Option<i64>)> = self
            .reader()?
            .prepare_cached(
                "SELECT enabled, threshold FROM rule_settings WHERE realm = ? AND rule = ?",
            )?
            .query_row(params![realm.as_str(), rule], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        Ok(row.map(|(e, t)| (e, t.and_then(|t| u64::try_from(t).ok()))))
    }

    fn set_rule_setting(
        &self,
        realm: &RealmId,
        rule: &str,
        enabled: bool,
        threshold: Option<u64>,
    ) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO rule_settings(realm, rule, enabled, threshold) VALUES (?,?,?,?) \
             ON CONFLICT(realm, rule) DO UPDATE SET enabled = excluded.enabled, threshold = excluded.threshold",
            params![realm.as_str(), rule, enabled, threshold.map(|t| i64::try_from(t).unwrap_or(i64::MAX))],
        )?;
        Ok(())
    }
}
