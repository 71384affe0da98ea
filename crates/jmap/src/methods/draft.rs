//! `Email/set` create (RFC 8621 §4.6): an Email object from the client (header properties,
//! `textBody`/`htmlBody`/`attachments` with `bodyValues`) written as a message and stored.
//! Drafts may say anything; what leaves the account is checked at submission.

use serde_json::{Map, Value, json};
use store::{EmailAddress, MailboxId};

use super::email::{keyword, true_keys};
use super::set_error;
use crate::blob::{self, BlobRef};
use crate::{Authed, Jmap, now};

fn invalid(property: &str, why: &str) -> Value {
    set_error("invalidProperties", why, &[property])
}

fn addresses(v: &Value, property: &str) -> Result<Vec<EmailAddress>, Value> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(list) => list
            .iter()
            .map(|x| {
                let email = x
                    .get("email")
                    .and_then(Value::as_str)
                    .filter(|e| e.contains('@') && !e.contains(['\r', '\n', '<', '>']))
                    .ok_or_else(|| invalid(property, "each address needs a valid email"))?;
                Ok(EmailAddress {
                    name: x.get("name").and_then(Value::as_str).map(str::to_owned),
                    email: email.to_owned(),
                })
            })
            .collect(),
        _ => Err(invalid(property, "must be a list of addresses")),
    }
}

fn strings(v: &Value, property: &str) -> Result<Vec<String>, Value> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(list) => list
            .iter()
            .map(|x| {
                x.as_str()
                    .filter(|s| !s.is_empty() && !s.contains(['\r', '\n', '<', '>', ' ']))
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(property, "must be a list of Message-IDs"))
            })
            .collect(),
        _ => Err(invalid(property, "must be a list of Message-IDs")),
    }
}

/// The one body part of `textBody` or `htmlBody`, its text taken from `bodyValues`.
fn body_text(
    spec: &Map<String, Value>,
    property: &str,
    media_type: &str,
) -> Result<Option<String>, Value> {
    let parts = match spec.get(property) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(p)) => p,
        Some(_) => return Err(invalid(property, "must be a list of body parts")),
    };
    match parts.as_slice() {
        [] => Ok(None),
        [part] => {
            if part
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != media_type)
            {
                return Err(invalid(property, &format!("the part must be {media_type}")));
            }
            let id = part
                .get("partId")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(property, "the part needs a partId naming a bodyValue"))?;
            spec.get("bodyValues")
                .and_then(|v| v.get(id))
                .and_then(|v| v.get("value"))
                .and_then(Value::as_str)
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| invalid("bodyValues", &format!("no bodyValue for part {id}")))
        }
        _ => Err(invalid(property, "at most one part")),
    }
}

fn blob_id_of(part: &Value) -> String {
    part.get("blobId")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// A part naming a blob, as a file; `None` if the account has no such blob.
fn file(j: &Jmap, a: &Authed, part: &Value) -> Result<Option<mail::Attachment>, Value> {
    let fetched = match BlobRef::parse(&blob_id_of(part)) {
        Some(r) => {
            blob::fetch(j, a, &r).map_err(|e| set_error("serverFail", &e.to_string(), &[]))?
        }
        None => None,
    };
    let Some(fetched) = fetched else {
        return Ok(None);
    };
    let text = |name: &str| part.get(name).and_then(Value::as_str).map(str::to_owned);
    Ok(Some(mail::Attachment {
        media_type: text("type")
            .filter(|t| t.contains('/') && !t.contains(['\r', '\n', ';']))
            .unwrap_or_else(|| "application/octet-stream".into()),
        name: text("name").filter(|n| !n.contains(['\r', '\n'])),
        inline: text("disposition").as_deref() == Some("inline"),
        cid: text("cid").filter(|c| !c.contains(['\r', '\n', '<', '>'])),
        bytes: fetched.bytes,
    }))
}

/// A `bodyStructure` as a MIME tree: containers with `subParts`, text leaves with a `partId`
/// naming a bodyValue, file leaves with a `blobId`. At most 10 deep.
fn structure(
    j: &Jmap,
    a: &Authed,
    spec: &Map<String, Value>,
    part: &Value,
    depth: usize,
    missing: &mut Vec<String>,
) -> Result<mail::PartSpec, Value> {
    let bad = |why: &str| invalid("bodyStructure", why);
    if depth > 10 {
        return Err(bad("parts nest at most 10 deep"));
    }
    let media_type = part
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| t.contains('/') && !t.contains(['\r', '\n', ';']))
        .map(str::to_ascii_lowercase);
    if let Some(children) = part.get("subParts").and_then(Value::as_array) {
        let media_type = media_type
            .filter(|t| t.starts_with("multipart/"))
            .ok_or_else(|| bad("a part with subParts must be multipart/*"))?;
        let parts = children
            .iter()
            .map(|c| structure(j, a, spec, c, depth + 1, missing))
            .collect::<Result<_, _>>()?;
        return Ok(mail::PartSpec::Multipart { media_type, parts });
    }
    if let Some(id) = part.get("partId").and_then(Value::as_str) {
        let text = spec
            .get("bodyValues")
            .and_then(|v| v.get(id))
            .and_then(|v| v.get("value"))
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("bodyValues", &format!("no bodyValue for part {id}")))?;
        let media_type = media_type.unwrap_or_else(|| "text/plain".into());
        if !media_type.starts_with("text/") {
            return Err(bad("a part with a partId must be text/*"));
        }
        return Ok(mail::PartSpec::Text {
            media_type,
            text: text.to_owned(),
        });
    }
    match file(j, a, part)? {
        Some(f) => Ok(mail::PartSpec::File(f)),
        None => {
            missing.push(blob_id_of(part));
            // A placeholder; the missing blob fails the whole create below.
            Ok(mail::PartSpec::Text {
                media_type: "text/plain".into(),
                text: String::new(),
            })
        }
    }
}

/// Reads the client's Email object into a draft, its mailboxes, keywords and arrival time.
fn read(
    j: &Jmap,
    a: &Authed,
    spec: &Map<String, Value>,
) -> Result<(mail::Draft, Vec<MailboxId>, Vec<String>, i64), Value> {
    let mut d = mail::Draft::default();
    let mut mailboxes = Vec::new();
    let mut keywords = Vec::new();
    let mut received_at = now();
    let mut missing_blobs = Vec::new();
    for (k, v) in spec {
        match k.as_str() {
            "mailboxIds" => {
                mailboxes = true_keys(Some(v))?
                    .iter()
                    .map(|m| MailboxId::new(m.as_str()).map_err(|_| invalid(k, "unknown mailbox")))
                    .collect::<Result<_, _>>()?
            }
            "keywords" => {
                keywords = true_keys(Some(v))?
                    .iter()
                    .map(|x| keyword(x).ok_or_else(|| invalid(k, "not a valid keyword")))
                    .collect::<Result<_, _>>()?
            }
            "receivedAt" => received_at = super::utc_date(Some(v), k)?.unwrap_or(received_at),
            "sentAt" => d.sent_at = super::utc_date(Some(v), k)?,
            "from" => d.from = addresses(v, k)?,
            "sender" => d.sender = addresses(v, k)?,
            "to" => d.to = addresses(v, k)?,
            "cc" => d.cc = addresses(v, k)?,
            "bcc" => d.bcc = addresses(v, k)?,
            "replyTo" => d.reply_to = addresses(v, k)?,
            "subject" => {
                d.subject = match v {
                    Value::Null => None,
                    Value::String(s) if !s.contains(['\r', '\n']) => Some(s.clone()),
                    _ => return Err(invalid(k, "must be one line of text")),
                }
            }
            "messageId" => {
                let ids = strings(v, k)?;
                if ids.len() > 1 {
                    return Err(invalid(k, "at most one Message-ID"));
                }
                d.message_id = ids.into_iter().next();
            }
            "inReplyTo" => d.in_reply_to = strings(v, k)?,
            "references" => d.references = strings(v, k)?,
            "textBody" | "htmlBody" | "bodyValues" => {}
            "attachments" => {
                for part in v
                    .as_array()
                    .ok_or_else(|| invalid(k, "must be a list of parts"))?
                {
                    match file(j, a, part)? {
                        Some(f) => d.attachments.push(f),
                        None => missing_blobs.push(blob_id_of(part)),
                    }
                }
            }
            "bodyStructure" => {
                d.structure = Some(structure(j, a, spec, v, 0, &mut missing_blobs)?);
            }
            other if other.starts_with("header:") => {
                let rest = &other["header:".len()..];
                let (name, form) = rest.split_once(':').unwrap_or((rest, "asRaw"));
                let value = v.as_str().filter(|s| !s.contains(['\r', '\n']));
                match (form, value) {
                    ("asRaw" | "asText", Some(value)) if mail::is_free_header(name) => {
                        d.headers.push((name.to_owned(), value.to_owned()))
                    }
                    _ => {
                        return Err(invalid(
                            other,
                            "set a free header field as one line of Raw or Text",
                        ));
                    }
                }
            }
            other => return Err(invalid(other, "cannot be set")),
        }
    }
    if !missing_blobs.is_empty() {
        let mut e = set_error(
            "blobNotFound",
            "no such blob in this account",
            &["attachments"],
        );
        e["notFound"] = json!(missing_blobs);
        return Err(e);
    }
    if mailboxes.is_empty() {
        return Err(invalid(
            "mailboxIds",
            "an email must be in at least one mailbox",
        ));
    }
    if d.structure.is_some()
        && ["textBody", "htmlBody", "attachments"]
            .iter()
            .any(|k| spec.get(*k).is_some_and(|v| !v.is_null()))
    {
        return Err(invalid(
            "bodyStructure",
            "give either bodyStructure or textBody/htmlBody/attachments",
        ));
    }
    d.text = body_text(spec, "textBody", "text/plain")?;
    d.html = body_text(spec, "htmlBody", "text/html")?;
    Ok((d, mailboxes, keywords, received_at))
}

/// Creates one email; the `created` entry (id, blobId, threadId, size) or the SetError.
pub(super) fn create(j: &Jmap, a: &Authed, spec: &Value) -> Result<Value, Value> {
    let spec = spec
        .as_object()
        .ok_or_else(|| invalid("", "an Email is an object"))?;
    let (draft, mailboxes, keywords, received_at) = read(j, a, spec)?;
    let raw = draft
        .write()
        .map_err(|e| set_error("invalidProperties", &e.to_string(), &[]))?;
    match j
        .mail
        .deliver_to(&a.account.id, &raw, &mailboxes, keywords, received_at)
    {
        Ok(d) => {
            Ok(json!({"id": d.id, "blobId": d.blob_id, "threadId": d.thread_id, "size": raw.len()}))
        }
        Err(mail::Error::NoMailbox(why)) => Err(invalid("mailboxIds", &why)),
        Err(e @ mail::Error::OverQuota { .. }) => Err(set_error("overQuota", &e.to_string(), &[])),
        Err(e @ mail::Error::NotAMessage(_)) => Err(set_error("tooLarge", &e.to_string(), &[])),
        Err(e) => Err(set_error("serverFail", &e.to_string(), &[])),
    }
}
