//! The JMAP methods: dispatch, the session resource, and what every method shares (argument
//! readers, method-level and /set errors, `/changes`). Each family lives in its own module.
//!
//! Every method that returns mail content records `MailItemsAccessed` with the item ids before
//! the response leaves; methods that only list ids record `MailboxQueried`. If the audit write
//! fails, the method fails: mail is never served unaudited.

mod draft;
mod email;
mod identity;
mod mailbox;
mod query;
mod quota;
mod submission;
mod vacation;

pub(crate) use email::email_set;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::api::{CORE, MAIL, QUOTA, SUBMISSION, VACATION};
use crate::{
    Authed, Jmap, MAX_CALLS_IN_REQUEST, MAX_CONCURRENT_REQUESTS, MAX_CONCURRENT_UPLOAD,
    MAX_OBJECTS_IN_GET, MAX_SIZE_REQUEST,
};

/// A method-level error (RFC 8620 §3.6.2).
#[derive(Debug)]
pub(crate) struct MethodError {
    kind: &'static str,
    description: String,
}

impl MethodError {
    pub(crate) fn new(kind: &'static str, description: String) -> Self {
        Self { kind, description }
    }

    pub(crate) fn invalid(description: impl Into<String>) -> Self {
        Self::new("invalidArguments", description.into())
    }

    pub(crate) fn server(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "JMAP method failed");
        Self::new("serverFail", "internal error".into())
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({"type": self.kind, "description": self.description})
    }
}

impl IntoResponse for MethodError {
    fn into_response(self) -> Response {
        crate::problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "serverFail",
            &self.description,
        )
    }
}

pub(crate) type MResult = Result<Value, MethodError>;

pub(crate) fn session_state(j: &Jmap, a: &Authed) -> Result<String, MethodError> {
    Ok(format!(
        "s{}",
        j.mail.modseq(&a.account.id).map_err(MethodError::server)?
    ))
}

pub(crate) fn session_object(j: &Jmap, a: &Authed) -> MResult {
    let id = a.account.id.as_str();
    let base = &j.public_url;
    Ok(json!({
        "capabilities": {
            CORE: {
                "maxSizeUpload": MAX_SIZE_REQUEST,
                "maxConcurrentUpload": MAX_CONCURRENT_UPLOAD,
                "maxSizeRequest": MAX_SIZE_REQUEST,
                "maxConcurrentRequests": MAX_CONCURRENT_REQUESTS,
                "maxCallsInRequest": MAX_CALLS_IN_REQUEST,
                "maxObjectsInGet": MAX_OBJECTS_IN_GET,
                "maxObjectsInSet": MAX_OBJECTS_IN_GET,
                "collationAlgorithms": ["i;ascii-casemap"],
            },
            MAIL: {},
            SUBMISSION: {},
            VACATION: {},
            QUOTA: {},
        },
        "accounts": {
            id: {
                "name": a.account.email,
                "isPersonal": true,
                "isReadOnly": false,
                "accountCapabilities": {
                    CORE: {},
                    MAIL: {
                        "maxMailboxesPerEmail": null,
                        "maxMailboxDepth": 10,
                        "maxSizeMailboxName": 255,
                        "maxSizeAttachmentsPerEmail": mail::MAX_MESSAGE_SIZE,
                        "emailQuerySortOptions": query::SORT_OPTIONS,
                        "mayCreateTopLevelMailbox": true,
                    },
                    SUBMISSION: {"maxDelayedSend": 0, "submissionExtensions": {}},
                    VACATION: {},
                    QUOTA: {},
                },
            }
        },
        "primaryAccounts": {CORE: id, MAIL: id, SUBMISSION: id, VACATION: id, QUOTA: id},
        "username": a.account.email,
        "apiUrl": format!("{base}/jmap/api"),
        "downloadUrl": format!("{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}"),
        "uploadUrl": format!("{base}/jmap/upload/{{accountId}}/"),
        "eventSourceUrl": format!("{base}{}?types={{types}}&closeafter={{closeafter}}&ping={{ping}}", crate::EVENTSOURCE_PATH),
        "state": session_state(j, a)?,
    }))
}

/// A method's response, and the implicit response some methods add (RFC 8621 §7.5).
pub(crate) type Answer = Result<(Value, Option<(String, Value)>), MethodError>;

pub(crate) fn call(j: &Jmap, a: &Authed, name: &str, args: &Map<String, Value>) -> Answer {
    if name == "Core/echo" {
        return Ok((Value::Object(args.clone()), None));
    }
    // Every other method is about one account, and a principal has exactly one.
    match args.get("accountId").and_then(Value::as_str) {
        Some(id) if id == a.account.id.as_str() => {}
        Some(_) => {
            return Err(MethodError::new(
                "accountNotFound",
                "no such account".into(),
            ));
        }
        None => return Err(MethodError::invalid("accountId is required")),
    }
    let plain = |r: MResult| r.map(|v| (v, None));
    match name {
        "Mailbox/get" => plain(mailbox::get(j, a, args)),
        "Mailbox/changes" => plain(changes(j, a, args, Kind::Mailbox)),
        "Mailbox/query" => plain(mailbox::query(j, a, args)),
        "Mailbox/queryChanges" => plain(mailbox::query_changes(j, a, args)),
        "Mailbox/set" => plain(mailbox::set(j, a, args)),
        "Thread/get" => plain(email::thread_get(j, a, args)),
        "Thread/changes" => plain(changes(j, a, args, Kind::Thread)),
        "Email/get" => plain(email::email_get(j, a, args)),
        "Email/changes" => plain(changes(j, a, args, Kind::Email)),
        "Email/query" => plain(query::email_query(j, a, args)),
        "Email/queryChanges" => plain(query::email_query_changes(j, a, args)),
        "Email/set" => plain(email_set(j, a, args)),
        "Email/copy" => plain(email::email_copy(j, a, args)),
        "Email/import" => plain(email::email_import(j, a, args)),
        "Email/parse" => plain(email::email_parse(j, a, args)),
        "SearchSnippet/get" => plain(query::search_snippet_get(j, a, args)),
        "VacationResponse/get" => plain(vacation::get(j, a, args)),
        "VacationResponse/set" => plain(vacation::set(j, a, args)),
        "Identity/get" => plain(identity::get(j, a, args)),
        "Identity/changes" => plain(changes(j, a, args, Kind::Identity)),
        "Identity/set" => plain(identity::set(j, a, args)),
        "EmailSubmission/get" => plain(submission::get(j, a, args)),
        "EmailSubmission/changes" => plain(changes(j, a, args, Kind::Submission)),
        "EmailSubmission/query" => plain(submission::query(j, a, args)),
        "EmailSubmission/queryChanges" => plain(submission::query_changes(j, a, args)),
        "EmailSubmission/set" => submission::set(j, a, args),
        "Quota/get" => plain(quota::get(j, a, args)),
        "Quota/changes" => plain(quota::changes(j, a, args)),
        "Quota/query" => plain(quota::query(j, a, args)),
        _ => Err(MethodError::new(
            "unknownMethod",
            format!("{name} is not implemented"),
        )),
    }
}

/// The pure argument readers of a method, for fuzzing: whatever the input, they answer with a
/// value or a method error, never a panic.
pub(crate) fn check_arguments(name: &str, args: &Map<String, Value>) {
    let _ = ids_arg(args);
    let _ = strings_arg(args, "properties");
    let _ = max_changes_arg(args, 10);
    let _ = since_arg(args, "sinceState");
    match name {
        "Email/query" | "Email/queryChanges" | "SearchSnippet/get" => {
            let _ = query::check(args);
        }
        "Email/get" | "Email/parse" => {
            let _ = email::check(args);
        }
        _ => {}
    }
}

pub(crate) fn state(j: &Jmap, a: &Authed) -> Result<String, MethodError> {
    Ok(j.mail
        .modseq(&a.account.id)
        .map_err(MethodError::server)?
        .to_string())
}

/// The `ids` argument: `None` for null/absent, else the strings (at most MAX_OBJECTS_IN_GET).
pub(super) fn ids_arg(args: &Map<String, Value>) -> Result<Option<Vec<String>>, MethodError> {
    match args.get("ids") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(ids)) => {
            if ids.len() > MAX_OBJECTS_IN_GET {
                return Err(MethodError::new(
                    "requestTooLarge",
                    format!("at most {MAX_OBJECTS_IN_GET} ids per /get"),
                ));
            }
            ids.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| MethodError::invalid("ids must be strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        Some(_) => Err(MethodError::invalid("ids must be an array or null")),
    }
}

/// Keeps `id` and the requested `properties` of each object (all when `properties` is null).
pub(super) fn select(mut obj: Map<String, Value>, properties: &Option<Vec<String>>) -> Value {
    if let Some(props) = properties {
        obj.retain(|k, _| k == "id" || props.iter().any(|p| p == k));
    }
    Value::Object(obj)
}

pub(super) fn properties_arg(
    args: &Map<String, Value>,
    known: &[&str],
) -> Result<Option<Vec<String>>, MethodError> {
    match args.get("properties") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(p)) => {
            let mut out = Vec::new();
            for v in p {
                let s = v
                    .as_str()
                    .ok_or_else(|| MethodError::invalid("properties must be strings"))?;
                if !known.contains(&s) {
                    return Err(MethodError::invalid(format!("unknown property {s:?}")));
                }
                out.push(s.to_owned());
            }
            Ok(Some(out))
        }
        Some(_) => Err(MethodError::invalid("properties must be an array or null")),
    }
}

/// A /set response map, or null when empty (RFC 8620 §5.3).
pub(crate) fn null_if_empty(m: Map<String, Value>) -> Value {
    if m.is_empty() {
        Value::Null
    } else {
        Value::Object(m)
    }
}

pub(crate) fn set_error(kind: &str, description: &str, properties: &[&str]) -> Value {
    let mut e = json!({"type": kind, "description": description});
    if !properties.is_empty() {
        e["properties"] = json!(properties);
    }
    e
}

pub(crate) fn utc(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
    )
    .to_string()
}

/// A `/get` over a small collection held in memory: the objects `ids` names (all when null)
/// and the ids not found.
pub(super) fn get_from<T>(
    j: &Jmap,
    a: &Authed,
    args: &Map<String, Value>,
    all: &[T],
    id_of: impl Fn(&T) -> &str,
    to_json: impl Fn(&T) -> Value,
) -> MResult {
    let ids = ids_arg(args)?;
    let list: Vec<Value> = all
        .iter()
        .filter(|x| {
            ids.as_ref()
                .is_none_or(|ids| ids.iter().any(|i| i == id_of(x)))
        })
        .map(to_json)
        .collect();
    let not_found: Vec<&String> = ids
        .iter()
        .flatten()
        .filter(|i| !all.iter().any(|x| id_of(x) == i.as_str()))
        .collect();
    Ok(
        json!({"accountId": a.account.id, "state": state(j, a)?, "list": list, "notFound": not_found}),
    )
}

/// Every id a change set names.
pub(super) fn changed_ids<T: std::fmt::Display>(c: &store::Changes<T>) -> Vec<String> {
    c.created
        .iter()
        .chain(&c.updated)
        .chain(&c.destroyed)
        .map(|x| x.to_string())
        .collect()
}

/// A `/query` over a small collection whose whole result list is computed in memory.
pub(super) fn list_query(j: &Jmap, a: &Authed, ids: Vec<String>) -> MResult {
    Ok(json!({
        "accountId": a.account.id, "queryState": state(j, a)?, "canCalculateChanges": true,
        "position": 0, "ids": ids, "total": ids.len(),
    }))
}

/// The `/queryChanges` of a [`list_query`]: `changes` gives what changed since a state,
/// `ids` the current results.
pub(super) fn list_query_changes<T: std::fmt::Display>(
    j: &Jmap,
    a: &Authed,
    args: &Map<String, Value>,
    changes: impl Fn(i64, u64) -> mail::Result<Option<store::Changes<T>>>,
    ids: impl Fn() -> Result<Vec<String>, MethodError>,
) -> MResult {
    let since = since_arg(args, "sinceQueryState")?;
    let max = max_changes_arg(args, MAX_QUERY_CHANGES)?;
    consistently(j, a, || {
        let c = changes(since, max)
            .map_err(MethodError::server)?
            .ok_or_else(cannot_calculate)?;
        if c.has_more {
            return Err(too_many_changes());
        }
        let answer = query_changes_answer(a, since, c.new_modseq, changed_ids(&c), &ids()?);
        Ok((c.new_modseq, answer))
    })
}

/// The account's current state, after checking `ifInState` against it (RFC 8620 §5.3).
pub(super) fn if_in_state(
    j: &Jmap,
    a: &Authed,
    args: &Map<String, Value>,
) -> Result<String, MethodError> {
    let current = state(j, a)?;
    match args.get("ifInState").and_then(Value::as_str) {
        Some(expected) if expected != current => Err(MethodError::new(
            "stateMismatch",
            "the account changed since ifInState".into(),
        )),
        _ => Ok(current),
    }
}

pub(super) fn utc_date(v: Option<&Value>, name: &str) -> Result<Option<i64>, Value> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => humantime::parse_rfc3339(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| Some(d.as_secs() as i64))
            .ok_or_else(|| {
                set_error(
                    "invalidProperties",
                    &format!("{name} must be a UTCDate"),
                    &[name],
                )
            }),
        Some(_) => Err(set_error(
            "invalidProperties",
            &format!("{name} must be a UTCDate"),
            &[name],
        )),
    }
}

/// An optional array-of-strings argument (`None` when absent or null).
pub(super) fn strings_arg(
    args: &Map<String, Value>,
    name: &str,
) -> Result<Option<Vec<String>>, MethodError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| MethodError::invalid(format!("{name} must hold strings")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(MethodError::invalid(format!(
            "{name} must be an array or null"
        ))),
    }
}

/// A `sinceState`/`sinceQueryState` argument as the modseq it names.
pub(super) fn since_arg(args: &Map<String, Value>, name: &str) -> Result<i64, MethodError> {
    let s = args
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| MethodError::invalid(format!("{name} is required")))?;
    s.parse().map_err(|_| cannot_calculate())
}

pub(super) fn cannot_calculate() -> MethodError {
    MethodError::new(
        "cannotCalculateChanges",
        "unknown state; fetch everything again".into(),
    )
}

/// A `maxChanges` argument; `default` when absent.
pub(super) fn max_changes_arg(args: &Map<String, Value>, default: u64) -> Result<u64, MethodError> {
    match args.get("maxChanges") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(n),
            _ => Err(MethodError::invalid(
                "maxChanges must be a positive integer",
            )),
        },
    }
}

/// Most changes a `/queryChanges` considers before answering `tooManyChanges`.
pub(super) const MAX_QUERY_CHANGES: u64 = 10_000;

pub(super) fn too_many_changes() -> MethodError {
    MethodError::new(
        "tooManyChanges",
        "more changes than maxChanges; run the query again".into(),
    )
}

/// A `/queryChanges` answer (RFC 8620 §5.6) from the ids that changed since the old state and
/// the query's current results: every changed id is removed, and added back at its current
/// index if it is still a result. That is exact for the client's algorithm (remove, then
/// insert in index order) because every unchanged result kept its relative order.
pub(super) fn query_changes_answer(
    a: &Authed,
    since: i64,
    new_modseq: i64,
    mut changed: Vec<String>,
    results: &[String],
) -> Value {
    changed.sort();
    changed.dedup();
    let added: Vec<Value> = results
        .iter()
        .enumerate()
        .filter(|(_, id)| changed.binary_search(id).is_ok())
        .map(|(index, id)| json!({"id": id, "index": index}))
        .collect();
    json!({
        "accountId": a.account.id, "oldQueryState": since.to_string(),
        "newQueryState": new_modseq.to_string(), "total": results.len(),
        "removed": changed, "added": added,
    })
}

/// Runs a read of several steps until no write landed in between: `f` returns the state its
/// answer is for, and the answer stands if the account is still at that state afterwards.
/// After a few tries under constant writes, the last answer goes out; the client's next
/// `/queryChanges` from its state repairs what it missed.
pub(super) fn consistently(
    j: &Jmap,
    a: &Authed,
    mut f: impl FnMut() -> Result<(i64, Value), MethodError>,
) -> MResult {
    let mut tries = 0;
    loop {
        let (at, answer) = f()?;
        tries += 1;
        let now_at = j.mail.modseq(&a.account.id).map_err(MethodError::server)?;
        if now_at == at || tries == 3 {
            return Ok(answer);
        }
    }
}

/// The ids of a change set, as JMAP's strings.
fn strings<T: std::fmt::Display>(c: store::Changes<T>) -> store::Changes<String> {
    let s = |v: Vec<T>| v.into_iter().map(|i| i.to_string()).collect();
    store::Changes {
        created: s(c.created),
        updated: s(c.updated),
        destroyed: s(c.destroyed),
        new_modseq: c.new_modseq,
        has_more: c.has_more,
    }
}

/// What a `/changes` call is about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Email,
    Mailbox,
    Thread,
    Identity,
    Submission,
}

fn changes(j: &Jmap, a: &Authed, args: &Map<String, Value>, kind: Kind) -> MResult {
    let since = since_arg(args, "sinceState")?;
    let max = max_changes_arg(args, MAX_OBJECTS_IN_GET as u64)?;
    let acc = &a.account.id;
    let c = match kind {
        Kind::Mailbox => j
            .mail
            .mailbox_changes(acc, since, max)
            .map(|c| c.map(strings)),
        Kind::Email => j
            .mail
            .email_changes(acc, since, max)
            .map(|c| c.map(strings)),
        Kind::Thread => j
            .mail
            .thread_changes(acc, since, max)
            .map(|c| c.map(strings)),
        Kind::Identity => j
            .mail
            .identity_changes(acc, since, max)
            .map(|c| c.map(strings)),
        Kind::Submission => j
            .mail
            .submission_changes(acc, since, max)
            .map(|c| c.map(strings)),
    };
    let store::Changes {
        created,
        updated,
        destroyed,
        new_modseq,
        has_more,
    } = c
        .map_err(MethodError::server)?
        .ok_or_else(cannot_calculate)?;
    let mut out = json!({
        "accountId": a.account.id, "oldState": since.to_string(), "newState": new_modseq.to_string(),
        "hasMoreChanges": has_more, "created": created, "updated": updated, "destroyed": destroyed,
    });
    if kind == Kind::Mailbox {
        out["updatedProperties"] = Value::Null;
    }
    Ok(out)
}
