//! Compiles an [`EmailQuery`] into SQL for SQLite.
//!
//! Full-text conditions run against the contentless FTS5 index `email_fts`. At the top level
//! (the root condition, or the conditions directly under a root AND) the index's matches drive
//! the query (`CROSS JOIN` keeps that order) and one `inMailbox` becomes a join on the
//! membership index, so a query costs in proportion to what it matches, not to the size of the
//! account. Deeper conditions become `rowid IN (…)` and `EXISTS (…)` terms.

use rusqlite::types::Value as SqlValue;

use crate::email_query::{EmailCondition, EmailFilter, EmailQuery, SortKey};
use crate::ids::AccountId;

/// A user's search words as an FTS5 query: every word quoted (so no word is read as FTS5 syntax
/// such as `OR`, `NEAR` or a column filter), all of them required. `None` if there are none.
pub(super) fn fts_terms(words: &str) -> Option<String> {
    let terms: Vec<String> = words
        .split(|c: char| !c.is_alphanumeric() && c != '@' && c != '.' && c != '-' && c != '_')
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .take(32)
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// The FTS5 MATCH expression of a condition's text fields; `Some("")` when it has none, `None`
/// when a field held no searchable word (so nothing can match).
fn fts_match(c: &EmailCondition) -> Option<String> {
    let mut parts = Vec::new();
    for (column, words) in c.searches() {
        if let Some(words) = words {
            let w = fts_terms(words)?;
            parts.push(if column.is_empty() {
                w
            } else {
                format!("{column} : ({w})")
            });
        }
    }
    Some(parts.join(" AND "))
}

/// SQL text and its positional arguments, built together so they cannot drift apart.
#[derive(Default)]
pub(super) struct Sql {
    pub(super) text: String,
    pub(super) args: Vec<SqlValue>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn arg(&mut self, v: impl Into<SqlValue>) -> &mut Self {
        self.text.push('?');
        self.args.push(v.into());
        self
    }

    fn append(&mut self, other: Sql) -> &mut Self {
        self.text.push_str(&other.text);
        self.args.extend(other.args);
        self
    }
}

fn keyword_test(sql: &mut Sql, table: &str, keyword: &str) {
    sql.push(&format!(
        "EXISTS (SELECT 1 FROM json_each({table}.keywords) WHERE value = "
    ))
    .arg(keyword.to_ascii_lowercase())
    .push(")");
}

/// Whether some (or, negated inside, every) email of `e`'s thread has the keyword.
fn thread_keyword_test(sql: &mut Sql, keyword: &str, every: bool) {
    let (outer, inner) = if every {
        ("NOT EXISTS", "NOT ")
    } else {
        ("EXISTS", "")
    };
    sql.push(&format!(
        "{outer} (SELECT 1 FROM emails t WHERE t.thread_id = e.thread_id AND t.account = e.account \
         AND t.destroyed_modseq IS NULL AND {inner}"
    ));
    keyword_test(sql, "t", keyword);
    sql.push(")");
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A condition as a boolean SQL expression over `e` (an `emails` row).
fn condition(c: &EmailCondition) -> Sql {
    let mut terms: Vec<Sql> = Vec::new();
    let mut term = |f: &dyn Fn(&mut Sql)| {
        let mut s = Sql::default();
        f(&mut s);
        terms.push(s);
    };
    match fts_match(c) {
        None => term(&|s| {
            s.push("0");
        }),
        Some(m) if m.is_empty() => {}
        Some(m) => term(&|s| {
            s.push("e.rowid IN (SELECT rowid FROM email_fts WHERE email_fts MATCH ")
                .arg(m.clone())
                .push(")");
        }),
    }
    if let Some(m) = &c.in_mailbox {
        term(&|s| {
            s.push(
                "EXISTS (SELECT 1 FROM email_mailboxes em WHERE em.email = e.id AND em.mailbox = ",
            )
            .arg(m.to_string())
            .push(")");
        });
    }
    if let Some(others) = &c.in_mailbox_other_than {
        term(&|s| {
            s.push("EXISTS (SELECT 1 FROM email_mailboxes em WHERE em.email = e.id");
            for m in others {
                s.push(" AND em.mailbox <> ").arg(m.to_string());
            }
            s.push(")");
        });
    }
    for (value, op) in [(c.before, "<"), (c.after, ">=")] {
        if let Some(t) = value {
            term(&|s| {
                s.push(&format!("e.received_at {op} ")).arg(t);
            });
        }
    }
    for (value, op) in [(c.min_size, ">="), (c.max_size, "<")] {
        if let Some(n) = value {
            term(&|s| {
                s.push(&format!("e.size {op} ")).arg(to_i64(n));
            });
        }
    }
    if let Some(k) = &c.has_keyword {
        term(&|s| keyword_test(s, "e", k));
    }
    if let Some(k) = &c.not_keyword {
        term(&|s| {
            s.push("NOT ");
            keyword_test(s, "e", k);
        });
    }
    if let Some(k) = &c.all_in_thread_have_keyword {
        term(&|s| thread_keyword_test(s, k, true));
    }
    if let Some(k) = &c.some_in_thread_have_keyword {
        term(&|s| thread_keyword_test(s, k, false));
    }
    if let Some(k) = &c.none_in_thread_have_keyword {
        term(&|s| {
            s.push("NOT ");
            thread_keyword_test(s, k, false);
        });
    }
    if let Some(has) = c.has_attachment {
        term(&|s| {
            s.push("e.has_attachment = ").arg(i64::from(has));
        });
    }
    if let Some(cc) = &c.cc {
        // Cc is not a column of the full-text index: a case-insensitive substring of its names
        // and addresses, as RFC 8621 allows for header text.
        term(&|s| {
            s.push("instr(lower(e.cc_json), ")
                .arg(cc.to_lowercase())
                .push(") > 0");
        });
    }
    join(terms, "AND", "1")
}

fn join(terms: Vec<Sql>, op: &str, empty: &str) -> Sql {
    let mut out = Sql::default();
    if terms.is_empty() {
        out.push(empty);
        return out;
    }
    out.push("(");
    for (i, t) in terms.into_iter().enumerate() {
        if i > 0 {
            out.push(&format!(" {op} "));
        }
        out.append(t);
    }
    out.push(")");
    out
}

fn filter(f: &EmailFilter) -> Sql {
    match f {
        EmailFilter::Condition(c) => condition(c),
        EmailFilter::And(fs) => join(fs.iter().map(filter).collect(), "AND", "1"),
        EmailFilter::Or(fs) => join(fs.iter().map(filter).collect(), "OR", "0"),
        EmailFilter::Not(fs) => {
            let mut s = Sql::default();
            s.push("NOT ")
                .append(join(fs.iter().map(filter).collect(), "OR", "0"));
            s
        }
    }
}

/// How a query reaches its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Start from the full-text matches and one mailbox's members, then sort what matched:
    /// costs what matches, best when few do.
    Drive,
    /// Walk the account's emails in arrival order and stop after the page: best when many
    /// emails match a search sorted by arrival and no total is asked for.
    WalkByArrival,
}

/// The full-text MATCH expression the top level of `f` would drive a query with, if any.
pub(super) fn top_level_match(f: &EmailFilter) -> Option<String> {
    let top: Vec<&EmailFilter> = match f {
        EmailFilter::And(fs) => fs.iter().collect(),
        other => vec![other],
    };
    let matches: Vec<String> = top
        .into_iter()
        .filter_map(|f| match f {
            EmailFilter::Condition(c) => fts_match(c).filter(|m| !m.is_empty()),
            _ => None,
        })
        .collect();
    (!matches.is_empty()).then(|| matches.join(" AND "))
}

/// `FROM … WHERE …` selecting the account's live emails that match `f`, as `e`.
pub(super) fn from_where(account: &AccountId, f: &EmailFilter, plan: Plan) -> Sql {
    if plan == Plan::WalkByArrival {
        let mut sql = Sql::default();
        sql.push(" FROM emails e INDEXED BY emails_received WHERE e.account = ")
            .arg(account.to_string())
            .push(" AND e.destroyed_modseq IS NULL AND ")
            .append(filter(f));
        return sql;
    }
    // Hoist what the indexes can drive: the top level's full-text terms and one mailbox.
    let top: Vec<&EmailFilter> = match f {
        EmailFilter::And(fs) => fs.iter().collect(),
        other => vec![other],
    };
    let mut matches = Vec::new();
    let mut mailbox = None;
    let mut rest = Vec::new();
    let mut impossible = false;
    for f in top {
        let EmailFilter::Condition(c) = f else {
            rest.push(filter(f));
            continue;
        };
        let mut c = (**c).clone();
        match fts_match(&c) {
            None => impossible = true,
            Some(m) if m.is_empty() => {}
            Some(m) => matches.push(m),
        }
        (c.text, c.subject, c.from, c.to, c.body) = (None, None, None, None, None);
        if mailbox.is_none() {
            mailbox = c.in_mailbox.take();
        }
        rest.push(condition(&c));
    }
    let mut sql = Sql::default();
    sql.push(" FROM ");
    if matches.is_empty() {
        sql.push("emails e");
    } else {
        sql.push("(SELECT rowid AS r FROM email_fts WHERE email_fts MATCH ")
            .arg(matches.join(" AND "))
            .push(") hits CROSS JOIN emails e ON e.rowid = hits.r");
    }
    if let Some(m) = mailbox {
        sql.push(" JOIN email_mailboxes em ON em.email = e.id AND em.mailbox = ")
            .arg(m.to_string());
    }
    sql.push(" WHERE e.account = ")
        .arg(account.to_string())
        .push(" AND e.destroyed_modseq IS NULL");
    if impossible {
        sql.push(" AND 0");
    }
    for r in rest {
        sql.push(" AND ").append(r);
    }
    sql
}

/// The ORDER BY terms of a query, ending in the id so the order is total.
pub(super) fn order_by(q: &EmailQuery) -> Sql {
    let mut sql = Sql::default();
    let first_name = |col: &str| {
        format!(
            "lower(coalesce(nullif(json_extract(e.{col}, '$[0].name'), ''), \
             json_extract(e.{col}, '$[0].email'), ''))"
        )
    };
    let mut last_dir = "DESC";
    for (i, s) in q.sort.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        match &s.key {
            SortKey::ReceivedAt => {
                sql.push("e.received_at");
            }
            SortKey::SentAt => {
                sql.push("coalesce(e.sent_at, e.received_at)");
            }
            SortKey::Size => {
                sql.push("e.size");
            }
            SortKey::From => {
                sql.push(&first_name("from_json"));
            }
            SortKey::To => {
                sql.push(&first_name("to_json"));
            }
            SortKey::Subject => {
                sql.push("base_subject(e.subject)");
            }
            SortKey::HasKeyword(k) => keyword_test(&mut sql, "e", k),
            SortKey::AllInThreadHaveKeyword(k) => thread_keyword_test(&mut sql, k, true),
            SortKey::SomeInThreadHaveKeyword(k) => thread_keyword_test(&mut sql, k, false),
        }
        last_dir = if s.ascending { "ASC" } else { "DESC" };
        sql.push(" ").push(last_dir);
    }
    if !q.sort.is_empty() {
        sql.push(", ");
    }
    sql.push("e.id ").push(last_dir);
    sql
}
