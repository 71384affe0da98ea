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

use crate::api::{CORE, MAIL};
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

    fn invalid(description: impl Into<String>) -> Self {
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

type MResult = Result<Value, MethodError>;

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
                "maxSizeUpload": mail::MAX_MESSAGE_SIZE,
                "maxConcurrentUpload": 4,
                "maxSizeRequest": MAX_SIZE_REQUEST,
                "maxConcurrentRequests": 8,
                "maxCallsInRequest": MAX_CALLS_IN_REQUEST,
                "maxObjectsInGet": MAX_OBJECTS_IN_GET,
                "maxObjectsInSet": MAX_OBJECTS_IN_GET,
                "collationAlgorithms": ["i;ascii-casemap"],
            },
            MAIL: {},
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
                },
            }
        },
        "primaryAccounts": {CORE: id, MAIL: id},
        "username": a.account.email,
        "apiUrl": format!("{base}/jmap/api"),
        "downloadUrl": format!("{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}"),
        "uploadUrl": format!("{base}/jmap/upload/{{accountId}}/"),
        "eventSourceUrl": format!("{base}/jmap/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}"),
        "state": session_state(j, a)?,
    }))
}

pub(crate) fn call(j: &Jmap, a: &Authed, name: &str, args: &Map<String, Value>) -> MResult {
    if name == "Core/echo" {
        return Ok(Value::Object(args.clone()));
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
    match name {
        "Mailbox/get" => mailbox_get(j, a, args),
        "Email/query" => email_query(j, a, args),
        "Email/get" => email_get(j, a, args),
        "Thread/get" => thread_get(j, a, args),
        _ => Err(MethodError::new(
            "unknownMethod",
            format!("{name} is not implemented"),
        )),
    }
}

fn state(j: &Jmap, a: &Authed) -> Result<String, MethodError> {
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

fn email_query(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let mailbox = match args.get("filter") {
        None | Some(Value::Null) => None,
        Some(Value::Object(f)) => {
            if f.keys().any(|k| k != "inMailbox") {
                return Err(MethodError::new(
                    "unsupportedFilter",
                    "only the inMailbox filter is supported so far".into(),
                ));
            }
            let id = f
                .get("inMailbox")
                .and_then(Value::as_str)
                .ok_or_else(|| MethodError::invalid("inMailbox must be a mailbox id"))?;
            Some(
                MailboxId::new(id)
                    .map_err(|_| MethodError::invalid("inMailbox is not a valid id"))?,
            )
        }
        Some(_) => return Err(MethodError::invalid("filter must be an object")),
    };
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
        .query(&a.account.id, mailbox.as_ref(), position, limit)
        .map_err(MethodError::server)?;
    let ev = a
        .event(Operation::MailboxQueried)
        .detail("operation", "Email/query")
        .detail("mailbox", mailbox.as_ref().map(|m| m.to_string()))
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

const EMAIL_PROPERTIES: [&str; 16] = [
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
];
const EMAIL_DEFAULT_PROPERTIES: [&str; 15] = [
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
];

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
                Value::Object(o) => select(o, &Some(props.clone())),
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
