//! `Email/query`, `Email/queryChanges` and `SearchSnippet/get`: JSON filters and sorts read
//! into a [`store::EmailQuery`], result windows (position, anchor, limit), a query's changes
//! since a state, and search-term highlighting.

use audit::Operation;
use serde_json::{Map, Value, json};
use store::{
    EmailCondition, EmailFilter, EmailId, EmailQuery, EmailSort, MailboxId, QueryPage, SortKey,
};

use super::email::keyword;
use super::{MResult, MethodError, state};
use crate::{Authed, Jmap, MAX_OBJECTS_IN_GET, MAX_QUERY_LIMIT};

/// How deep filter operators may nest, and how many conditions a filter may hold: enough for
/// any mail client's search, small enough that no request builds a runaway SQL statement.
const MAX_FILTER_DEPTH: usize = 8;
const MAX_FILTER_CONDITIONS: usize = 64;
const MAX_SORT_KEYS: usize = 8;

fn unsupported_filter(why: String) -> MethodError {
    MethodError::new("unsupportedFilter", why)
}

fn condition(cond: &Map<String, Value>) -> Result<EmailCondition, MethodError> {
    let mut c = EmailCondition::default();
    for (k, v) in cond {
        let text = || {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| MethodError::invalid(format!("{k} must be a string")))
        };
        let mailbox = |v: &Value| {
            v.as_str()
                .and_then(|s| MailboxId::new(s).ok())
                .ok_or_else(|| MethodError::invalid(format!("{k} must hold mailbox ids")))
        };
        let kw = || {
            v.as_str()
                .and_then(keyword)
                .ok_or_else(|| MethodError::invalid(format!("{k} must be a keyword")))
        };
        let date = || {
            v.as_str()
                .and_then(|s| humantime::parse_rfc3339(s).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .ok_or_else(|| MethodError::invalid(format!("{k} must be a UTCDate")))
        };
        let size = || {
            v.as_u64()
                .ok_or_else(|| MethodError::invalid(format!("{k} must be an UnsignedInt")))
        };
        match k.as_str() {
            "inMailbox" => c.in_mailbox = Some(mailbox(v)?),
            "inMailboxOtherThan" => {
                c.in_mailbox_other_than = Some(
                    v.as_array()
                        .ok_or_else(|| MethodError::invalid("inMailboxOtherThan must be an array"))?
                        .iter()
                        .map(mailbox)
                        .collect::<Result<_, _>>()?,
                )
            }
            "before" => c.before = Some(date()?),
            "after" => c.after = Some(date()?),
            "minSize" => c.min_size = Some(size()?),
            "maxSize" => c.max_size = Some(size()?),
            "allInThreadHaveKeyword" => c.all_in_thread_have_keyword = Some(kw()?),
            "someInThreadHaveKeyword" => c.some_in_thread_have_keyword = Some(kw()?),
            "noneInThreadHaveKeyword" => c.none_in_thread_have_keyword = Some(kw()?),
            "hasKeyword" => c.has_keyword = Some(kw()?),
            "notKeyword" => c.not_keyword = Some(kw()?),
            "hasAttachment" => {
                c.has_attachment = Some(
                    v.as_bool()
                        .ok_or_else(|| MethodError::invalid("hasAttachment must be a boolean"))?,
                )
            }
            "text" => c.text = Some(text()?),
            "from" => c.from = Some(text()?),
            "to" => c.to = Some(text()?),
            "cc" => c.cc = Some(text()?),
            "subject" => c.subject = Some(text()?),
            "body" => c.body = Some(text()?),
            other => {
                return Err(unsupported_filter(format!(
                    "filter property {other} is not supported"
                )));
            }
        }
    }
    Ok(c)
}

/// Reads a filter: a FilterCondition, or a FilterOperator (AND, OR, NOT) over filters.
fn filter(v: &Value, depth: usize, budget: &mut usize) -> Result<EmailFilter, MethodError> {
    let o = v
        .as_object()
        .ok_or_else(|| MethodError::invalid("a filter is an object"))?;
    if depth > MAX_FILTER_DEPTH {
        return Err(unsupported_filter(format!(
            "filters nest at most {MAX_FILTER_DEPTH} deep"
        )));
    }
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| unsupported_filter(format!("at most {MAX_FILTER_CONDITIONS} conditions")))?;
    let Some(op) = o.get("operator") else {
        return Ok(EmailFilter::condition(condition(o)?));
    };
    let conditions = o
        .get("conditions")
        .and_then(Value::as_array)
        .ok_or_else(|| MethodError::invalid("conditions must be an array"))?
        .iter()
        .map(|c| filter(c, depth + 1, budget))
        .collect::<Result<Vec<_>, _>>()?;
    match op.as_str() {
        Some("AND") => Ok(EmailFilter::And(conditions)),
        Some("OR") => Ok(EmailFilter::Or(conditions)),
        Some("NOT") => Ok(EmailFilter::Not(conditions)),
        _ => Err(unsupported_filter("operator must be AND, OR or NOT".into())),
    }
}

fn sort(v: Option<&Value>) -> Result<Vec<EmailSort>, MethodError> {
    let Some(list) = v.filter(|v| !v.is_null()) else {
        return Ok(EmailQuery::default().sort);
    };
    let list = list
        .as_array()
        .ok_or_else(|| MethodError::invalid("sort must be an array"))?;
    if list.len() > MAX_SORT_KEYS {
        return Err(MethodError::new(
            "unsupportedSort",
            format!("at most {MAX_SORT_KEYS} sort keys"),
        ));
    }
    let unsupported = |why: String| MethodError::new("unsupportedSort", why);
    list.iter()
        .map(|c| {
            let property = c
                .get("property")
                .and_then(Value::as_str)
                .ok_or_else(|| MethodError::invalid("each sort needs a property"))?;
            if let Some(coll) = c.get("collation").and_then(Value::as_str)
                && coll != "i;ascii-casemap"
                && coll != "i;unicode-casemap"
            {
                return Err(unsupported(format!("collation {coll} is not supported")));
            }
            let kw = || {
                c.get("keyword")
                    .and_then(Value::as_str)
                    .and_then(keyword)
                    .ok_or_else(|| {
                        MethodError::invalid(format!("sorting by {property} needs a keyword"))
                    })
            };
            let key = match property {
                "receivedAt" => SortKey::ReceivedAt,
                "sentAt" => SortKey::SentAt,
                "size" => SortKey::Size,
                "from" => SortKey::From,
                "to" => SortKey::To,
                "subject" => SortKey::Subject,
                "hasKeyword" => SortKey::HasKeyword(kw()?),
                "allInThreadHaveKeyword" => SortKey::AllInThreadHaveKeyword(kw()?),
                "someInThreadHaveKeyword" => SortKey::SomeInThreadHaveKeyword(kw()?),
                other => return Err(unsupported(format!("cannot sort by {other:?}"))),
            };
            Ok(EmailSort {
                key,
                ascending: c
                    .get("isAscending")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            })
        })
        .collect()
}

/// The sort properties the session advertises (`emailQuerySortOptions`).
pub(crate) const SORT_OPTIONS: [&str; 9] = [
    "receivedAt",
    "sentAt",
    "size",
    "from",
    "to",
    "subject",
    "hasKeyword",
    "allInThreadHaveKeyword",
    "someInThreadHaveKeyword",
];

/// Reads a query's arguments without running it (fuzzing).
pub(super) fn check(args: &Map<String, Value>) -> Result<EmailQuery, MethodError> {
    email_query_arg(args)
}

fn email_query_arg(args: &Map<String, Value>) -> Result<EmailQuery, MethodError> {
    let mut budget = MAX_FILTER_CONDITIONS;
    Ok(EmailQuery {
        filter: match args.get("filter") {
            None | Some(Value::Null) => EmailFilter::default(),
            Some(f) => filter(f, 0, &mut budget)?,
        },
        sort: sort(args.get("sort"))?,
        collapse_threads: args
            .get("collapseThreads")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Whether a query's results can move when another email of the same thread changes.
fn depends_on_thread(q: &EmailQuery) -> bool {
    q.collapse_threads
        || q.sort.iter().any(|s| {
            matches!(
                s.key,
                SortKey::AllInThreadHaveKeyword(_) | SortKey::SomeInThreadHaveKeyword(_)
            )
        })
        || q.filter.conditions().iter().any(|c| {
            c.all_in_thread_have_keyword.is_some()
                || c.some_in_thread_have_keyword.is_some()
                || c.none_in_thread_have_keyword.is_some()
        })
}

fn int_arg(args: &Map<String, Value>, name: &str) -> Result<Option<i64>, MethodError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| MethodError::invalid(format!("{name} must be an integer"))),
    }
}

pub(super) fn email_query(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let q = email_query_arg(args)?;
    let acc = &a.account.id;
    let limit = match int_arg(args, "limit")? {
        None => MAX_QUERY_LIMIT,
        Some(n) if n < 0 => return Err(MethodError::invalid("limit must not be negative")),
        Some(n) => (n as u64).min(MAX_QUERY_LIMIT),
    };
    let calculate_total = args
        .get("calculateTotal")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let query_state = state(j, a)?;
    let (position, ids, total) = if let Some(anchor) = args.get("anchor").filter(|v| !v.is_null()) {
        // RFC 8620 §5.5: the window starts anchorOffset from the anchor's index.
        let anchor = anchor
            .as_str()
            .ok_or_else(|| MethodError::invalid("anchor must be an id"))?;
        let (all, _) = j
            .mail
            .query(acc, &q, QueryPage::ALL)
            .map_err(MethodError::server)?;
        let index = all
            .iter()
            .position(|id| id.as_str() == anchor)
            .ok_or_else(|| {
                MethodError::new("anchorNotFound", "the anchor is not a result".into())
            })?;
        let offset = int_arg(args, "anchorOffset")?.unwrap_or(0);
        let start = usize::try_from((index as i64).saturating_add(offset).max(0))
            .unwrap_or(0)
            .min(all.len());
        let end = start
            .saturating_add(usize::try_from(limit).unwrap_or(usize::MAX))
            .min(all.len());
        (
            start as u64,
            all[start..end].to_vec(),
            Some(all.len() as u64),
        )
    } else {
        let position = int_arg(args, "position")?.unwrap_or(0);
        let position = if position < 0 {
            // Counted from the end.
            let page = QueryPage {
                position: 0,
                limit: 0,
                count_total: true,
            };
            let (_, total) = j.mail.query(acc, &q, page).map_err(MethodError::server)?;
            (total.unwrap_or(0) as i64).saturating_add(position).max(0) as u64
        } else {
            position as u64
        };
        let page = QueryPage {
            position,
            limit,
            count_total: calculate_total,
        };
        let (ids, total) = j.mail.query(acc, &q, page).map_err(MethodError::server)?;
        (position, ids, total)
    };
    let searched = q
        .filter
        .conditions()
        .iter()
        .any(|c| c.searches().iter().any(|(_, w)| w.is_some()));
    let ev = a
        .event(Operation::MailboxQueried)
        .detail("operation", "Email/query")
        .detail(
            "mailbox",
            q.filter
                .conditions()
                .iter()
                .find_map(|c| c.in_mailbox.as_ref().map(|m| m.to_string())),
        )
        .detail("searched", searched)
        .detail(
            "items",
            ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        );
    a.record(ev);
    let mut out = json!({
        "accountId": a.account.id, "queryState": query_state, "canCalculateChanges": true,
        "position": position, "ids": ids, "limit": limit,
    });
    if calculate_total && let Some(total) = total {
        out["total"] = json!(total);
    }
    Ok(out)
}

pub(super) fn email_query_changes(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let q = email_query_arg(args)?;
    let since = super::since_arg(args, "sinceQueryState")?;
    let max = super::max_changes_arg(args, super::MAX_QUERY_CHANGES)?;
    let acc = &a.account.id;
    let answer = super::consistently(j, a, || {
        let changes = j
            .mail
            .email_changes(acc, since, max)
            .map_err(MethodError::server)?
            .ok_or_else(super::cannot_calculate)?;
        if changes.has_more {
            return Err(super::too_many_changes());
        }
        let mut changed: Vec<EmailId> = changes
            .created
            .iter()
            .chain(&changes.updated)
            .chain(&changes.destroyed)
            .cloned()
            .collect();
        if depends_on_thread(&q) {
            // A change to one email can move its thread mates: treat them as changed too.
            let threads = j
                .mail
                .thread_changes(acc, since, max)
                .map_err(MethodError::server)?
                .ok_or_else(super::cannot_calculate)?;
            let mut thread_ids: Vec<store::ThreadId> =
                threads.created.into_iter().chain(threads.updated).collect();
            for (e, _) in j.mail.emails(acc, &changed).map_err(MethodError::server)? {
                thread_ids.push(e.thread_id);
            }
            thread_ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
            thread_ids.dedup();
            for t in &thread_ids {
                changed.extend(j.mail.thread(acc, t).map_err(MethodError::server)?);
            }
        }
        let (all, _) = j
            .mail
            .query(acc, &q, QueryPage::ALL)
            .map_err(MethodError::server)?;
        let all: Vec<String> = all.into_iter().map(|i| i.to_string()).collect();
        let changed = changed.into_iter().map(|i| i.to_string()).collect();
        Ok((
            changes.new_modseq,
            super::query_changes_answer(a, since, changes.new_modseq, changed, &all),
        ))
    })?;
    let ev = a
        .event(Operation::MailboxQueried)
        .detail("operation", "Email/queryChanges")
        .detail(
            "items",
            answer["added"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|x| x.get("id").cloned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
    a.record(ev);
    Ok(answer)
}

/// The words a filter searches for, lowercased (what a snippet highlights).
fn search_words(f: &EmailFilter) -> Vec<String> {
    let mut words: Vec<String> = f
        .conditions()
        .iter()
        .flat_map(|c| [c.text.as_deref(), c.subject.as_deref(), c.body.as_deref()])
        .flatten()
        .flat_map(|s| s.split(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.sort();
    words.dedup();
    words
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// `text` HTML-escaped with every whole-word match of `words` in `<mark>`; `None` if no word
/// matches. Tokens are split as the index splits them, so what matched is what is marked.
fn highlight(text: &str, words: &[String]) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut matched = false;
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.find(char::is_alphanumeric).unwrap_or(rest.len());
        escape(&rest[..start], &mut out);
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !c.is_alphanumeric())
            .unwrap_or(rest.len());
        let word = &rest[..end];
        if !word.is_empty() && words.binary_search(&word.to_lowercase()).is_ok() {
            matched = true;
            out.push_str("<mark>");
            escape(word, &mut out);
            out.push_str("</mark>");
        } else {
            escape(word, &mut out);
        }
        rest = &rest[end..];
    }
    matched.then_some(out)
}

/// Up to 255 characters of `body` around the first match, highlighted.
fn body_snippet(body: &str, words: &[String]) -> Option<String> {
    const CONTEXT: usize = 60;
    const LENGTH: usize = 255;
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let lower_first = flat
        .char_indices()
        .filter(|(i, c)| {
            c.is_alphanumeric()
                && flat[..*i]
                    .chars()
                    .next_back()
                    .is_none_or(|p| !p.is_alphanumeric())
        })
        .find(|(i, _)| {
            let end = flat[*i..]
                .find(|c: char| !c.is_alphanumeric())
                .map_or(flat.len(), |e| i + e);
            words.binary_search(&flat[*i..end].to_lowercase()).is_ok()
        })
        .map(|(i, _)| i)?;
    let start_char = flat[..lower_first].chars().count().saturating_sub(CONTEXT);
    let window: String = flat.chars().skip(start_char).take(LENGTH).collect();
    highlight(&window, words)
}

/// `SearchSnippet/get` (RFC 8621 §5): subject and body excerpts with the search terms marked.
pub(super) fn search_snippet_get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let q = email_query_arg(args)?;
    let ids = super::strings_arg(args, "emailIds")?
        .ok_or_else(|| MethodError::invalid("emailIds is required"))?;
    if ids.len() > MAX_OBJECTS_IN_GET {
        return Err(MethodError::new(
            "requestTooLarge",
            format!("at most {MAX_OBJECTS_IN_GET} emailIds"),
        ));
    }
    let found = super::email::read_emails(
        j,
        a,
        &ids,
        "SearchSnippet/get",
        json!(["subject", "preview"]),
    )?;
    let words = search_words(&q.filter);
    let mut list = Vec::new();
    for (e, _) in &found {
        let preview = if words.is_empty() {
            None
        } else {
            j.mail
                .body(&a.account.id, e)
                .map_err(MethodError::server)?
                .and_then(|b| {
                    b.values
                        .iter()
                        .filter(|(id, _)| {
                            b.text_body.iter().any(|p| p.part_id.as_deref() == Some(id))
                        })
                        .find_map(|(_, text)| body_snippet(text, &words))
                })
        };
        list.push(json!({
            "emailId": e.id,
            "subject": highlight(&e.subject, &words),
            "preview": preview,
        }));
    }
    let not_found: Vec<&String> = ids
        .iter()
        .filter(|i| !found.iter().any(|(e, _)| e.id.as_str() == i.as_str()))
        .collect();
    Ok(json!({
        "accountId": a.account.id, "list": list,
        "notFound": if not_found.is_empty() { Value::Null } else { json!(not_found) },
    }))
}

#[cfg(test)]
mod tests {
    use super::{body_snippet, highlight};

    #[test]
    fn highlights_whole_words_and_escapes() {
        let words = vec!["budget".to_owned(), "q3".to_owned()];
        assert_eq!(
            highlight("Q3 <Budget> & budgets", &words).as_deref(),
            Some("<mark>Q3</mark> &lt;<mark>Budget</mark>&gt; &amp; budgets")
        );
        assert_eq!(highlight("nothing here", &words), None);
    }

    #[test]
    fn body_snippet_starts_near_the_match() {
        let words = vec!["needle".to_owned()];
        let body = format!("{} the needle is here", "hay ".repeat(200));
        let s = body_snippet(&body, &words).expect("matches");
        assert!(s.contains("<mark>needle</mark>"), "{s}");
        assert!(s.chars().count() < 300, "{s}");
        assert_eq!(body_snippet("no match", &words), None);
    }
}
