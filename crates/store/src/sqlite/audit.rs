//! [`AuditStore`] for SQLite: audit records, their row mapper and the queries over them.

use rusqlite::{OptionalExtension, Row, ToSql};

use super::committer::Write;
use super::{SqliteStore, audit_chain, from_json, parse_opt};
use crate::Result;
use crate::completion::Completion;
use crate::model::*;
use crate::traits::*;

pub(super) const AUDIT_COLS: &str = "id, time, realm, actor, operation, target, result, source_ip, user_agent, client_id, jti, kid, details";

pub(super) type AuditRow = (
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
pub(super) fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
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
pub(super) fn finish_audit(row: AuditRow) -> Result<(AuditRecord, String)> {
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
