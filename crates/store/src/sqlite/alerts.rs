//! [`AlertStore`] for SQLite: alerts with de-duplication, and the detector's cursor and rule
//! settings.

use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, from_json, json, parse_opt};
use crate::model::{Alert, AlertStatus, UnixTime};
use crate::traits::AlertStore;
use crate::{RealmId, Result};

/// Evidence kept per alert: the first records are the ones an investigator starts from.
const MAX_EVIDENCE: usize = 50;

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

impl AlertStore for SqliteStore {
    fn raise_alert(&self, a: &Alert) -> Result<(i64, bool)> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let realm = a.realm.as_ref().map(RealmId::as_str);
        let open: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, evidence FROM alerts WHERE realm IS ? AND rule = ? AND dedup_key = ? \
                 AND status <> 'resolved' ORDER BY id DESC LIMIT 1",
                params![realm, a.rule, a.dedup_key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let result = match open {
            Some((id, evidence)) => {
                let mut ev: Vec<i64> = from_json(&evidence)?;
                for e in &a.evidence {
                    if ev.len() < MAX_EVIDENCE && !ev.contains(e) {
                        ev.push(*e);
                    }
                }
                tx.execute(
                    "UPDATE alerts SET last_seen = max(last_seen, ?), count = count + ?, evidence = ?, \
                     updated_at = ? WHERE id = ?",
                    params![a.last_seen, a.count.max(1) as i64, json(&ev)?, a.last_seen, id],
                )?;
                (id, false)
            }
            None => {
                let mut ev = a.evidence.clone();
                ev.truncate(MAX_EVIDENCE);
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
                        a.count.max(1) as i64,
                        json(&ev)?,
                        json(&a.details)?,
                        a.first_seen
                    ],
                )?;
                (tx.last_insert_rowid(), true)
            }
        };
        tx.commit()?;
        Ok(result)
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
