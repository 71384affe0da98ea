//! The JMAP methods Keypost implements so far, and the session resource.
//!
//! Every method that returns mail content records `MailItemsAccessed` with the item ids before
//! the response leaves; methods that only list ids record `MailboxQueried`. If the audit write
//! fails, the method fails: mail is never served unaudited.

use audit::Operation;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use store::{EmailAddress, EmailId, MailboxId, ThreadId};

use crate::api::{CORE, MAIL, SUBMISSION, VACATION};
use crate::{
    Authed, Jmap, MAX_CALLS_IN_REQUEST, MAX_OBJECTS_IN_GET, MAX_QUERY_LIMIT, MAX_SIZE_REQUEST, now,
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
                "maxConcurrentUpload": 4,
                "maxSizeRequest": MAX_SIZE_REQUEST,
                "maxConcurrentRequests": 8,
                "maxCallsInRequest": MAX_CALLS_IN_REQUEST,
                "maxObjectsInGet": MAX_OBJECTS_IN_GET,
                "maxObjectsInSet": MAX_OBJECTS_IN_GET,
                "collationAlgorithms": ["i;ascii-casemap"],
            },
            MAIL: {},
            SUBMISSION: {},
            VACATION: {},
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
                        "emailQuerySortOptions": ["receivedAt"],
                        "mayCreateTopLevelMailbox": true,
                    },
                    SUBMISSION: {"maxDelayedSend": 0, "submissionExtensions": {}},
                    VACATION: {},
                },
            }
        },
        "primaryAccounts": {CORE: id, MAIL: id, SUBMISSION: id, VACATION: id},
        "username": a.account.email,
        "apiUrl": format!("{base}/jmap/api"),
        "downloadUrl": format!("{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}"),
        "uploadUrl": format!("{base}/jmap/upload/{{accountId}}/"),
        "eventSourceUrl": format!("{base}/jmap/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}"),
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
        "Mailbox/get" => plain(mailbox_get(j, a, args)),
        "Email/query" => plain(email_query(j, a, args)),
        "Email/get" => plain(email_get(j, a, args)),
        "Thread/get" => plain(thread_get(j, a, args)),
        "Email/set" => plain(email_set(j, a, args)),
        "Email/changes" => plain(changes(j, a, args, false)),
        "Mailbox/changes" => plain(changes(j, a, args, true)),
        "Email/import" => plain(crate::submit::email_import(j, a, args)),
        "Mailbox/set" => plain(mailbox_set(j, a, args)),
        // Our /query results report canCalculateChanges: false, and RFC 8620 §5.6 lets such a
        // server answer queryChanges this way; clients then simply run the query again.
        "Email/queryChanges" | "Mailbox/queryChanges" => Err(MethodError::new(
            "cannotCalculateChanges",
            "run the query again".into(),
        )),
        "VacationResponse/get" => plain(crate::submit::vacation_get(j, a, args)),
        "VacationResponse/set" => plain(crate::submit::vacation_set(j, a, args)),
        "Mailbox/query" => plain(mailbox_query(j, a, args)),
        "Identity/get" => plain(crate::submit::identity_get(j, a, args)),
        "EmailSubmission/set" => crate::submit::submission_set(j, a, args),
        _ => Err(MethodError::new(
            "unknownMethod",
            format!("{name} is not implemented"),
        )),
    }
}

pub(crate) fn state(j: &Jmap, a: &Authed) -> Result<String, MethodError> {
    Ok(j.mail
        .modseq(&a.account.id)
        .map_err(MethodError::server)?
        .to_string())
}

/// The `ids` argument: `None` for null/absent, else the strings (at most MAX_OBJECTS_IN_GET).
fn ids_arg(args: &Map<String, Value>) -> Result<Option<Vec<String>>, MethodError> {
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
fn select(mut obj: Map<String, Value>, properties: &Option<Vec<String>>) -> Value {
    if let Some(props) = properties {
        obj.retain(|k, _| k == "id" || props.iter().any(|p| p == k));
    }
    Value::Object(obj)
}

fn properties_arg(
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

const MAILBOX_PROPERTIES: [&str; 11] = [
    "id",
    "name",
    "parentId",
    "role",
    "sortOrder",
    "totalEmails",
    "unreadEmails",
    "totalThreads",
    "unreadThreads",
    "myRights",
    "isSubscribed",
];

fn mailbox_get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let ids = ids_arg(args)?;
    let props = properties_arg(args, &MAILBOX_PROPERTIES)?;
    let boxes = j
        .mail
        .mailboxes(&a.account.id)
        .map_err(MethodError::server)?;
    let mut list = Vec::new();
    for m in boxes.iter().filter(|m| {
        ids.as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == m.id.as_str()))
    }) {
        let total = j
            .mail
            .count(&a.account.id, Some(&m.id))
            .map_err(MethodError::server)?;
        let unread = j
            .mail
            .unread(&a.account.id, &m.id)
            .map_err(MethodError::server)?;
        let obj = json!({
            "id": m.id, "name": m.name, "parentId": m.parent, "role": m.role, "sortOrder": m.sort_order,
            "totalEmails": total, "unreadEmails": unread, "totalThreads": total, "unreadThreads": unread,
            "myRights": {"mayReadItems": true, "mayAddItems": true, "mayRemoveItems": true, "maySetSeen": true,
                "maySetKeywords": true, "mayCreateChild": true, "mayRename": m.role.is_none(),
                "mayDelete": m.role.is_none(), "maySubmit": true},
            "isSubscribed": true,
        });
        if let Value::Object(o) = obj {
            list.push(select(o, &props));
        }
    }
    let not_found: Vec<&String> = ids
        .iter()
        .flatten()
        .filter(|i| !boxes.iter().any(|m| m.id.as_str() == i.as_str()))
        .collect();
    Ok(
        json!({"accountId": a.account.id, "state": state(j, a)?, "list": list, "notFound": not_found}),
    )
}

/// Reads an `Email/query` filter into an [`store::EmailFilter`]: a FilterCondition, or an AND
/// FilterOperator over conditions (each property at most once).
fn email_filter(v: Option<&Value>) -> Result<store::EmailFilter, MethodError> {
    let mut f = store::EmailFilter::default();
    let unsupported = |why: String| MethodError::new("unsupportedFilter", why);
    fn merge(f: &mut store::EmailFilter, cond: &Map<String, Value>) -> Result<(), MethodError> {
        for (k, v) in cond {
            let text = || {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| MethodError::invalid(format!("{k} must be a string")))
            };
            let slot = match k.as_str() {
                "inMailbox" => {
                    let id = MailboxId::new(text()?)
                        .map_err(|_| MethodError::invalid("inMailbox is not a valid id"))?;
                    if f.mailbox.replace(id).is_some() {
                        return Err(MethodError::new(
                            "unsupportedFilter",
                            "inMailbox given twice".into(),
                        ));
                    }
                    continue;
                }
                "text" => &mut f.text,
                "subject" => &mut f.subject,
                "from" => &mut f.from,
                "to" => &mut f.to,
                "body" => &mut f.body,
                "hasKeyword" => &mut f.has_keyword,
                "notKeyword" => &mut f.not_keyword,
                other => {
                    return Err(MethodError::new(
                        "unsupportedFilter",
                        format!("filter property {other} is not supported"),
                    ));
                }
            };
            if slot.replace(text()?).is_some() {
                return Err(MethodError::new(
                    "unsupportedFilter",
                    format!("{k} given twice"),
                ));
            }
        }
        Ok(())
    }
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) if o.contains_key("operator") => {
            if o.get("operator").and_then(Value::as_str) != Some("AND") {
                return Err(unsupported(
                    "only the AND operator is supported so far".into(),
                ));
            }
            for c in o
                .get("conditions")
                .and_then(Value::as_array)
                .ok_or_else(|| MethodError::invalid("conditions must be an array"))?
            {
                match c.as_object() {
                    Some(c) if !c.contains_key("operator") => merge(&mut f, c)?,
                    _ => {
                        return Err(unsupported(
                            "nested operators are not supported so far".into(),
                        ));
                    }
                }
            }
        }
        Some(Value::Object(o)) => merge(&mut f, o)?,
        Some(_) => return Err(MethodError::invalid("filter must be an object")),
    }
    Ok(f)
}

fn email_query(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let filter = email_filter(args.get("filter"))?;
    if let Some(sort) = args.get("sort").filter(|v| !v.is_null()) {
        let ok = sort.as_array().is_some_and(|s| {
            s.iter().all(|c| {
                c.get("property").and_then(Value::as_str) == Some("receivedAt")
                    && !c
                        .get("isAscending")
                        .and_then(Value::as_bool)
                        .unwrap_or(true)
            })
        });
        if !ok {
            return Err(MethodError::new(
                "unsupportedSort",
                "only receivedAt, newest first, is supported so far".into(),
            ));
        }
    }
    let position = match args.get("position") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| MethodError::invalid("position must be a non-negative integer"))?,
    };
    let limit = match args.get("limit") {
        None | Some(Value::Null) => MAX_QUERY_LIMIT,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| MethodError::invalid("limit must be a non-negative integer"))?
            .min(MAX_QUERY_LIMIT),
    };
    let (ids, total) = j
        .mail
        .query(&a.account.id, &filter, position, limit)
        .map_err(MethodError::server)?;
    let ev = a
        .event(Operation::MailboxQueried)
        .detail("operation", "Email/query")
        .detail("mailbox", filter.mailbox.as_ref().map(|m| m.to_string()))
        .detail(
            "searched",
            filter.text.is_some() || filter.subject.is_some() || filter.body.is_some(),
        )
        .detail(
            "items",
            ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        );
    j.audit.record(ev, now()).map_err(MethodError::server)?;
    let mut out = json!({
        "accountId": a.account.id, "queryState": state(j, a)?, "canCalculateChanges": false,
        "position": position, "ids": ids, "limit": limit,
    });
    if args
        .get("calculateTotal")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        out["total"] = json!(total);
    }
    Ok(out)
}

const EMAIL_PROPERTIES: [&str; 20] = [
    "id",
    "blobId",
    "threadId",
    "mailboxIds",
    "keywords",
    "size",
    "receivedAt",
    "messageId",
    "subject",
    "from",
    "to",
    "cc",
    "sentAt",
    "hasAttachment",
    "preview",
    "inReplyTo",
    "textBody",
    "htmlBody",
    "attachments",
    "bodyValues",
];
const BODY_PROPERTIES: [&str; 4] = ["textBody", "htmlBody", "attachments", "bodyValues"];
/// What `Email/get` returns when `properties` is null: everything but the body properties.
const EMAIL_DEFAULT_PROPERTIES: &[&str] = EMAIL_PROPERTIES.split_at(15).0;

fn utc(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
    )
    .to_string()
}

fn addresses(list: &[EmailAddress]) -> Value {
    Value::Array(
        list.iter()
            .map(|a| json!({"name": a.name, "email": a.email}))
            .collect(),
    )
}

fn email_get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let Some(ids) = ids_arg(args)? else {
        return Err(MethodError::new(
            "requestTooLarge",
            "give the ids to fetch (Email/query finds them)".into(),
        ));
    };
    let props = properties_arg(args, &EMAIL_PROPERTIES)?.unwrap_or_else(|| {
        EMAIL_DEFAULT_PROPERTIES
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    });
    let parsed: Vec<EmailId> = ids
        .iter()
        .filter_map(|i| EmailId::new(i.as_str()).ok())
        .collect();
    let found = j
        .mail
        .emails(&a.account.id, &parsed)
        .map_err(MethodError::server)?;
    // Recorded before the content leaves: MailItemsAccessed names every item and what of it.
    let ev = a
        .event(Operation::MailItemsAccessed)
        .detail("operation", "Email/get")
        .detail(
            "items",
            found
                .iter()
                .map(|(e, _)| e.id.to_string())
                .collect::<Vec<_>>(),
        )
        .detail("properties", props.clone());
    j.audit.record(ev, now()).map_err(MethodError::server)?;
    let body_opts = BodyOptions::from(args);
    let mut bodies = std::collections::HashMap::new();
    if props.iter().any(|p| BODY_PROPERTIES.contains(&p.as_str())) {
        for (e, _) in &found {
            if let Some(b) = j.mail.body(&a.account.id, e).map_err(MethodError::server)? {
                bodies.insert(e.id.to_string(), b);
            }
        }
    }
    let list: Vec<Value> = found
        .iter()
        .map(|(e, boxes)| {
            let mailbox_ids: Map<String, Value> = boxes.iter().map(|m| (m.to_string(), Value::Bool(true))).collect();
            let keywords: Map<String, Value> = e.keywords.iter().map(|k| (k.clone(), Value::Bool(true))).collect();
            let full = json!({
                "id": e.id, "blobId": e.blob_id, "threadId": e.thread_id, "mailboxIds": mailbox_ids,
                "keywords": keywords, "size": e.size, "receivedAt": utc(e.received_at),
                "messageId": e.message_id.as_ref().map(|m| vec![m]), "subject": e.subject,
                "from": addresses(&e.from), "to": addresses(&e.to), "cc": addresses(&e.cc),
                "sentAt": e.sent_at.map(utc), "hasAttachment": e.has_attachment, "preview": e.preview,
                "inReplyTo": Value::Null,
            });
            match full {
                Value::Object(mut o) => {
                    if let Some(b) = bodies.get(e.id.as_str()) {
                        add_body(&mut o, b, &body_opts);
                    }
                    select(o, &Some(props.clone()))
                }
                other => other,
            }
        })
        .collect();
    let not_found: Vec<&String> = ids
        .iter()
        .filter(|i| !found.iter().any(|(e, _)| e.id.as_str() == i.as_str()))
        .collect();
    Ok(
        json!({"accountId": a.account.id, "state": state(j, a)?, "list": list, "notFound": not_found}),
    )
}

fn thread_get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let Some(ids) = ids_arg(args)? else {
        return Err(MethodError::new(
            "requestTooLarge",
            "give the thread ids to fetch".into(),
        ));
    };
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    for id in &ids {
        let emails = match ThreadId::new(id.as_str()) {
            Ok(t) => j
                .mail
                .thread(&a.account.id, &t)
                .map_err(MethodError::server)?,
            Err(_) => Vec::new(),
        };
        if emails.is_empty() {
            not_found.push(id.clone());
        } else {
            list.push(json!({"id": id, "emailIds": emails}));
        }
    }
    let ev = a
        .event(Operation::MailboxQueried)
        .detail("operation", "Thread/get")
        .detail("items", ids.clone());
    j.audit.record(ev, now()).map_err(MethodError::server)?;
    Ok(
        json!({"accountId": a.account.id, "state": state(j, a)?, "list": list, "notFound": not_found}),
    )
}

/// RFC 8621 §4.1.1: keywords are 1–255 printable ASCII characters other than `( ) { ] % * " \`,
/// compared case-insensitively (stored lowercase).
fn keyword(k: &str) -> Option<String> {
    let ok = !k.is_empty()
        && k.len() <= 255
        && k.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !b"(){]%*\"\\".contains(&b));
    ok.then(|| k.to_ascii_lowercase())
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

/// Applies a JMAP PatchObject for `keywords` and `mailboxIds` to an email's current sets.
fn apply_patch(
    patch: &Map<String, Value>,
    keywords: &mut Vec<String>,
    mailboxes: &mut Vec<String>,
) -> Result<(bool, bool), Value> {
    let (mut k_changed, mut m_changed) = (false, false);
    let bool_map = |v: &Value, what: &str| -> Result<Vec<String>, Value> {
        let obj = v.as_object().ok_or_else(|| {
            set_error(
                "invalidProperties",
                &format!("{what} must be an object"),
                &[what],
            )
        })?;
        obj.iter()
            .map(|(k, v)| match v {
                Value::Bool(true) => Ok(k.clone()),
                _ => Err(set_error(
                    "invalidProperties",
                    &format!("{what} values must be true"),
                    &[what],
                )),
            })
            .collect()
    };
    for (path, value) in patch {
        let (head, tail) = match path.split_once('/') {
            Some((h, t)) => (h, Some(t)),
            None => (path.as_str(), None),
        };
        let (set, changed, name) = match head {
            "keywords" => (&mut *keywords, &mut k_changed, "keywords"),
            "mailboxIds" => (&mut *mailboxes, &mut m_changed, "mailboxIds"),
            other => {
                return Err(set_error(
                    "invalidProperties",
                    &format!("{other} cannot be changed"),
                    &[other],
                ));
            }
        };
        *changed = true;
        match tail {
            None => *set = bool_map(value, name)?,
            Some(item) => {
                let item = item.replace("~1", "/").replace("~0", "~");
                match value {
                    Value::Bool(true) => {
                        if !set.contains(&item) {
                            set.push(item);
                        }
                    }
                    Value::Null => set.retain(|x| x != &item),
                    _ => {
                        return Err(set_error(
                            "invalidPatch",
                            "patch values must be true or null",
                            &[name],
                        ));
                    }
                }
            }
        }
    }
    let mut normalised = Vec::new();
    for k in keywords.iter() {
        match keyword(k) {
            Some(k) if !normalised.contains(&k) => normalised.push(k),
            Some(_) => {}
            None => {
                return Err(set_error(
                    "invalidProperties",
                    &format!("{k:?} is not a valid keyword"),
                    &["keywords"],
                ));
            }
        }
    }
    *keywords = normalised;
    Ok((k_changed, m_changed))
}

pub(crate) fn email_set(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let old_state = state(j, a)?;
    if let Some(expected) = args.get("ifInState").and_then(Value::as_str)
        && expected != old_state
    {
        return Err(MethodError::new(
            "stateMismatch",
            "the account changed since ifInState".into(),
        ));
    }
    let mut not_created = Map::new();
    if let Some(create) = args.get("create").and_then(Value::as_object) {
        for id in create.keys() {
            not_created.insert(id.clone(), set_error("forbidden", "creating emails with Email/set is not supported yet; upload and use Email/import", &[]));
        }
    }
    let mut updated = Map::new();
    let mut not_updated = Map::new();
    let mut touched: Vec<String> = Vec::new();
    if let Some(update) = args.get("update").and_then(Value::as_object) {
        if update.len() > MAX_OBJECTS_IN_GET {
            return Err(MethodError::new(
                "requestTooLarge",
                format!("at most {MAX_OBJECTS_IN_GET} updates per /set"),
            ));
        }
        for (id, patch) in update {
            let not_found = || set_error("notFound", "no such email", &[]);
            let Ok(email_id) = EmailId::new(id.as_str()) else {
                not_updated.insert(id.clone(), not_found());
                continue;
            };
            let Some(patch) = patch.as_object() else {
                not_updated.insert(
                    id.clone(),
                    set_error("invalidPatch", "a patch is an object", &[]),
                );
                continue;
            };
            let Some((current, boxes)) = j
                .mail
                .emails(&a.account.id, std::slice::from_ref(&email_id))
                .map_err(MethodError::server)?
                .into_iter()
                .next()
            else {
                not_updated.insert(id.clone(), not_found());
                continue;
            };
            let mut keywords = current.keywords.clone();
            let mut mailboxes: Vec<String> = boxes.iter().map(|m| m.to_string()).collect();
            let (k_changed, m_changed) = match apply_patch(patch, &mut keywords, &mut mailboxes) {
                Ok(c) => c,
                Err(e) => {
                    not_updated.insert(id.clone(), e);
                    continue;
                }
            };
            let mailbox_ids: Result<Vec<MailboxId>, _> = mailboxes
                .iter()
                .map(|m| MailboxId::new(m.as_str()))
                .collect();
            let Ok(mailbox_ids) = mailbox_ids else {
                not_updated.insert(
                    id.clone(),
                    set_error("invalidProperties", "unknown mailbox", &["mailboxIds"]),
                );
                continue;
            };
            let result = j.mail.update(
                &a.account.id,
                &email_id,
                k_changed.then_some(keywords.as_slice()),
                m_changed.then_some(mailbox_ids.as_slice()),
            );
            match result {
                Ok(_) => {
                    updated.insert(id.clone(), Value::Null);
                    touched.push(id.clone());
                }
                Err(mail::Error::NoMailbox(why)) => {
                    not_updated.insert(
                        id.clone(),
                        set_error("invalidProperties", &why, &["mailboxIds"]),
                    );
                }
                Err(mail::Error::Store(store::Error::NotFound(what)))
                    if what.starts_with("mailbox") =>
                {
                    not_updated.insert(
                        id.clone(),
                        set_error("invalidProperties", "unknown mailbox", &["mailboxIds"]),
                    );
                }
                Err(mail::Error::Store(store::Error::NotFound(_))) => {
                    not_updated.insert(id.clone(), not_found());
                }
                Err(e) => return Err(MethodError::server(e)),
            }
        }
    }
    let mut destroyed = Vec::new();
    let mut not_destroyed = Map::new();
    if let Some(destroy) = args.get("destroy").and_then(Value::as_array) {
        for id in destroy.iter().filter_map(Value::as_str) {
            let Ok(email_id) = EmailId::new(id) else {
                not_destroyed.insert(id.to_owned(), set_error("notFound", "no such email", &[]));
                continue;
            };
            match j.mail.destroy(&a.account.id, &email_id) {
                Ok(_) => destroyed.push(id.to_owned()),
                Err(mail::Error::Store(store::Error::NotFound(_))) => {
                    not_destroyed
                        .insert(id.to_owned(), set_error("notFound", "no such email", &[]));
                }
                Err(e) => return Err(MethodError::server(e)),
            }
        }
    }
    if !touched.is_empty() || !destroyed.is_empty() {
        let ev = a
            .event(Operation::MailItemsUpdated)
            .detail("operation", "Email/set")
            .detail("items", touched.clone())
            .detail("destroyed", destroyed.clone());
        j.audit.record(ev, now()).map_err(MethodError::server)?;
    }
    Ok(json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null, "updated": null_if_empty(updated), "destroyed": if destroyed.is_empty() { Value::Null } else { json!(destroyed) },
        "notCreated": null_if_empty(not_created), "notUpdated": null_if_empty(not_updated), "notDestroyed": null_if_empty(not_destroyed),
    }))
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

fn changes(j: &Jmap, a: &Authed, args: &Map<String, Value>, mailboxes: bool) -> MResult {
    let since_state = args
        .get("sinceState")
        .and_then(Value::as_str)
        .ok_or_else(|| MethodError::invalid("sinceState is required"))?;
    let cannot = || {
        MethodError::new(
            "cannotCalculateChanges",
            "unknown state; fetch everything again".into(),
        )
    };
    let since: i64 = since_state.parse().map_err(|_| cannot())?;
    let max = match args.get("maxChanges") {
        None | Some(Value::Null) => MAX_OBJECTS_IN_GET as u64,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => n,
            _ => {
                return Err(MethodError::invalid(
                    "maxChanges must be a positive integer",
                ));
            }
        },
    };
    let c = if mailboxes {
        j.mail
            .mailbox_changes(&a.account.id, since, max)
            .map(|c| c.map(strings))
    } else {
        j.mail
            .email_changes(&a.account.id, since, max)
            .map(|c| c.map(strings))
    };
    let store::Changes {
        created,
        updated,
        destroyed,
        new_modseq,
        has_more,
    } = c.map_err(MethodError::server)?.ok_or_else(cannot)?;
    let mut out = json!({
        "accountId": a.account.id, "oldState": since_state, "newState": new_modseq.to_string(),
        "hasMoreChanges": has_more, "created": created, "updated": updated, "destroyed": destroyed,
    });
    if mailboxes {
        out["updatedProperties"] = Value::Null;
    }
    Ok(out)
}

fn mailbox_fields(
    spec: &Map<String, Value>,
    current: Option<&store::Mailbox>,
) -> Result<(String, Option<MailboxId>, u32), Value> {
    for k in spec.keys() {
        match k.as_str() {
            "name" | "parentId" | "sortOrder" | "isSubscribed" => {}
            "role"
                if spec.get("role").is_none_or(|r| {
                    r.is_null() || current.is_some_and(|c| c.role.as_deref() == r.as_str())
                }) => {}
            other => {
                return Err(set_error(
                    "invalidProperties",
                    &format!("{other} cannot be set"),
                    &[other],
                ));
            }
        }
    }
    let name = match spec.get("name") {
        Some(Value::String(n)) => n.clone(),
        None => current
            .map(|c| c.name.clone())
            .ok_or_else(|| set_error("invalidProperties", "name is required", &["name"]))?,
        Some(_) => {
            return Err(set_error(
                "invalidProperties",
                "name must be a string",
                &["name"],
            ));
        }
    };
    let parent = match spec.get("parentId") {
        None => current.and_then(|c| c.parent.clone()),
        Some(Value::Null) => None,
        Some(Value::String(p)) => Some(
            MailboxId::new(p.as_str())
                .map_err(|_| set_error("invalidProperties", "unknown parentId", &["parentId"]))?,
        ),
        Some(_) => {
            return Err(set_error(
                "invalidProperties",
                "parentId must be an id or null",
                &["parentId"],
            ));
        }
    };
    let sort_order = match spec.get("sortOrder") {
        None => current.map(|c| c.sort_order).unwrap_or(100),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                set_error(
                    "invalidProperties",
                    "sortOrder must be a small non-negative integer",
                    &["sortOrder"],
                )
            })?,
    };
    Ok((name, parent, sort_order))
}

fn mail_set_error(e: mail::Error) -> Result<Value, MethodError> {
    Ok(match e {
        mail::Error::Invalid(why) => set_error("invalidProperties", &why, &[]),
        mail::Error::NoMailbox(_) => set_error("notFound", "no such mailbox", &[]),
        mail::Error::Store(store::Error::NotFound(_)) => {
            set_error("notFound", "no such mailbox", &[])
        }
        mail::Error::Store(store::Error::Conflict(kind)) if kind == "mailboxHasChild" => {
            set_error("mailboxHasChild", "the mailbox has child mailboxes", &[])
        }
        mail::Error::Store(store::Error::Conflict(kind)) if kind == "mailboxHasEmail" => set_error(
            "mailboxHasEmail",
            "the mailbox has emails (see onDestroyRemoveEmails)",
            &[],
        ),
        mail::Error::Store(store::Error::Conflict(_)) => {
            set_error("invalidProperties", "a sibling has that name", &["name"])
        }
        other => return Err(MethodError::server(other)),
    })
}

fn mailbox_set(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let old_state = state(j, a)?;
    if let Some(expected) = args.get("ifInState").and_then(Value::as_str)
        && expected != old_state
    {
        return Err(MethodError::new(
            "stateMismatch",
            "the account changed since ifInState".into(),
        ));
    }
    let acc = &a.account.id;
    let (mut created, mut not_created) = (Map::new(), Map::new());
    let (mut updated, mut not_updated) = (Map::new(), Map::new());
    let (mut destroyed, mut not_destroyed) = (Vec::new(), Map::new());
    let mut touched = Vec::new();
    for (cid, spec) in args
        .get("create")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let spec = spec.as_object().cloned().unwrap_or_default();
        match mailbox_fields(&spec, None) {
            Ok((name, parent, order)) => {
                match j.mail.create_mailbox(acc, &name, parent.as_ref(), order) {
                    Ok(m) => {
                        touched.push(m.id.to_string());
                        created.insert(cid.clone(), json!({"id": m.id, "totalEmails": 0, "unreadEmails": 0, "totalThreads": 0, "unreadThreads": 0, "isSubscribed": true}));
                    }
                    Err(e) => {
                        not_created.insert(cid.clone(), mail_set_error(e)?);
                    }
                }
            }
            Err(e) => {
                not_created.insert(cid.clone(), e);
            }
        }
    }
    if args
        .get("update")
        .and_then(Value::as_object)
        .is_some_and(|u| !u.is_empty())
    {
        let boxes = j.mail.mailboxes(acc).map_err(MethodError::server)?;
        for (id, spec) in args
            .get("update")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let Some(current) = boxes.iter().find(|m| m.id.as_str() == id) else {
                not_updated.insert(id.clone(), set_error("notFound", "no such mailbox", &[]));
                continue;
            };
            let spec = spec.as_object().cloned().unwrap_or_default();
            match mailbox_fields(&spec, Some(current)) {
                Ok((name, parent, order)) => {
                    match j
                        .mail
                        .update_mailbox(acc, &current.id, &name, parent.as_ref(), order)
                    {
                        Ok(()) => {
                            touched.push(id.clone());
                            updated.insert(id.clone(), Value::Null);
                        }
                        Err(e) => {
                            not_updated.insert(id.clone(), mail_set_error(e)?);
                        }
                    }
                }
                Err(e) => {
                    not_updated.insert(id.clone(), e);
                }
            }
        }
    }
    let remove = args
        .get("onDestroyRemoveEmails")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for id in args
        .get("destroy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let result = match MailboxId::new(id) {
            Ok(m) => j.mail.destroy_mailbox(acc, &m, remove),
            Err(_) => Err(mail::Error::NoMailbox(id.to_owned())),
        };
        match result {
            Ok(()) => {
                touched.push(id.to_owned());
                destroyed.push(id.to_owned());
            }
            Err(mail::Error::Invalid(why)) => {
                not_destroyed.insert(id.to_owned(), set_error("forbidden", &why, &[]));
            }
            Err(e) => {
                not_destroyed.insert(id.to_owned(), mail_set_error(e)?);
            }
        }
    }
    if !touched.is_empty() {
        let ev = a
            .event(Operation::MailItemsUpdated)
            .detail("operation", "Mailbox/set")
            .detail("mailboxes", touched);
        j.audit.record(ev, now()).map_err(MethodError::server)?;
    }
    Ok(json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null_if_empty(created), "updated": null_if_empty(updated), "destroyed": if destroyed.is_empty() { Value::Null } else { json!(destroyed) },
        "notCreated": null_if_empty(not_created), "notUpdated": null_if_empty(not_updated), "notDestroyed": null_if_empty(not_destroyed),
    }))
}

fn mailbox_query(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let boxes = j
        .mail
        .mailboxes(&a.account.id)
        .map_err(MethodError::server)?;
    let filter = args
        .get("filter")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for k in filter.keys() {
        if !["parentId", "role", "hasAnyRole", "name"].contains(&k.as_str()) {
            return Err(MethodError::new(
                "unsupportedFilter",
                format!("filter property {k} is not supported"),
            ));
        }
    }
    let ids: Vec<&str> = boxes
        .iter()
        .filter(|m| match filter.get("parentId") {
            None => true,
            Some(Value::Null) => m.parent.is_none(),
            Some(p) => m.parent.as_ref().map(|x| x.as_str()) == p.as_str(),
        })
        .filter(|m| {
            filter
                .get("role")
                .is_none_or(|r| m.role.as_deref() == r.as_str())
        })
        .filter(|m| {
            filter
                .get("hasAnyRole")
                .and_then(Value::as_bool)
                .is_none_or(|h| m.role.is_some() == h)
        })
        .filter(|m| {
            filter
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(|n| m.name.to_lowercase().contains(&n.to_lowercase()))
        })
        .map(|m| m.id.as_str())
        .collect();
    Ok(
        json!({"accountId": a.account.id, "queryState": state(j, a)?, "canCalculateChanges": false, "position": 0, "ids": ids, "total": ids.len()}),
    )
}

/// Which body values an `Email/get` asked for (RFC 8621 §4.2).
struct BodyOptions {
    text: bool,
    html: bool,
    all: bool,
    max_bytes: usize,
}

impl BodyOptions {
    fn from(args: &Map<String, Value>) -> Self {
        let flag = |k: &str| args.get(k).and_then(Value::as_bool).unwrap_or(false);
        Self {
            text: flag("fetchTextBodyValues"),
            html: flag("fetchHTMLBodyValues"),
            all: flag("fetchAllBodyValues"),
            max_bytes: args
                .get("maxBodyValueBytes")
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .map_or(usize::MAX, |n| n as usize),
        }
    }
}

fn part_json(p: &mail::Part) -> Value {
    // Parts are not separately addressable blobs yet: download the whole message instead.
    json!({"partId": p.part_id, "blobId": null, "size": p.size, "type": p.media_type, "charset": p.charset,
           "name": p.name, "disposition": p.disposition})
}

fn add_body(o: &mut Map<String, Value>, b: &mail::Body, opts: &BodyOptions) {
    o.insert(
        "textBody".into(),
        b.text_body.iter().map(part_json).collect(),
    );
    o.insert(
        "htmlBody".into(),
        b.html_body.iter().map(part_json).collect(),
    );
    o.insert(
        "attachments".into(),
        b.attachments.iter().map(part_json).collect(),
    );
    let wanted = |id: &str| {
        opts.all
            || (opts.text && b.text_body.iter().any(|p| p.part_id == id))
            || (opts.html && b.html_body.iter().any(|p| p.part_id == id))
    };
    let mut values = Map::new();
    for (id, text) in b.values.iter().filter(|(id, _)| wanted(id)) {
        let mut cut = text.len().min(opts.max_bytes);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        values.insert(id.clone(), json!({"value": &text[..cut], "isEncodingProblem": false, "isTruncated": cut < text.len()}));
    }
    o.insert("bodyValues".into(), Value::Object(values));
}
