//! Emails: `Email/get`, `Email/parse`, `Email/set`, `Email/import`, `Email/copy` and
//! `Thread/get`, and how an
//! email is shown: stored metadata for the cheap properties, the parsed message for headers,
//! body parts and body values.
//!
//! Every method that returns message content records `MailItemsAccessed` (with the item ids
//! and the properties read) before the response leaves.

use audit::Operation;
use mail::{HeaderForm, HeaderValue, Message};
use serde_json::{Map, Value, json};
use store::{BlobId, EmailAddress, EmailId, EmailRecord, MailboxId, ThreadId};

use super::{MResult, MethodError, ids_arg, null_if_empty, set_error, state, strings_arg, utc};
use crate::blob::{self, BlobRef};
use crate::limits::OutputBudget;
use crate::{Authed, Jmap, MAX_OBJECTS_IN_GET, now};

const EMAIL_PROPERTIES: [&str; 26] = [
    "id",
    "blobId",
    "threadId",
    "mailboxIds",
    "keywords",
    "size",
    "receivedAt",
    "messageId",
    "inReplyTo",
    "references",
    "sender",
    "from",
    "to",
    "cc",
    "bcc",
    "replyTo",
    "subject",
    "sentAt",
    "hasAttachment",
    "preview",
    "bodyValues",
    "textBody",
    "htmlBody",
    "attachments",
    "headers",
    "bodyStructure",
];
/// What `Email/get` returns when `properties` is null (RFC 8621 §4.2).
const EMAIL_DEFAULT_PROPERTIES: &[&str] = EMAIL_PROPERTIES.split_at(24).0;
/// Properties read from the message itself, not its stored metadata.
const MESSAGE_PROPERTIES: [&str; 11] = [
    "inReplyTo",
    "references",
    "sender",
    "bcc",
    "replyTo",
    "bodyValues",
    "textBody",
    "htmlBody",
    "attachments",
    "headers",
    "bodyStructure",
];
const PART_PROPERTIES: [&str; 12] = [
    "partId",
    "blobId",
    "size",
    "name",
    "type",
    "charset",
    "disposition",
    "cid",
    "language",
    "location",
    "headers",
    "subParts",
];
/// What each body part shows when `bodyProperties` is null.
const PART_DEFAULT_PROPERTIES: &[&str] = PART_PROPERTIES.split_at(10).0;

/// A `header:Name[:asForm][:all]` property (RFC 8621 §4.1.3).
struct HeaderProperty {
    name: String,
    form: HeaderForm,
    all: bool,
}

impl HeaderProperty {
    fn parse(p: &str) -> Option<Self> {
        let rest = p.strip_prefix("header:")?;
        let mut it = rest.split(':');
        let name = it
            .next()
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':'))?;
        let (mut form, mut all) = (HeaderForm::Raw, false);
        for (i, s) in it.enumerate() {
            match s {
                "all" => all = true,
                s if i == 0 => form = HeaderForm::from_suffix(s)?,
                _ => return None,
            }
        }
        Some(Self {
            name: name.to_owned(),
            form,
            all,
        })
    }
}

/// The `properties` of an Email/get or Email/parse (defaults when null).
fn email_properties(args: &Map<String, Value>) -> Result<Vec<String>, MethodError> {
    let props = match strings_arg(args, "properties")? {
        None => {
            return Ok(EMAIL_DEFAULT_PROPERTIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect());
        }
        Some(p) => p,
    };
    for p in &props {
        if !EMAIL_PROPERTIES.contains(&p.as_str()) && HeaderProperty::parse(p).is_none() {
            return Err(MethodError::invalid(format!("unknown property {p:?}")));
        }
    }
    Ok(props)
}

/// What an Email/get or Email/parse wants shown of each email.
struct Wanted {
    props: Vec<String>,
    part_props: Vec<String>,
    text: bool,
    html: bool,
    all: bool,
    max_bytes: usize,
}

/// Reads Email/get's arguments without fetching anything (fuzzing).
pub(super) fn check(args: &Map<String, Value>) -> bool {
    Wanted::from(args).is_ok()
}

impl Wanted {
    fn from(args: &Map<String, Value>) -> Result<Self, MethodError> {
        let part_props = match strings_arg(args, "bodyProperties")? {
            None => PART_DEFAULT_PROPERTIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            Some(p) => {
                if let Some(bad) = p.iter().find(|p| !PART_PROPERTIES.contains(&p.as_str())) {
                    return Err(MethodError::invalid(format!(
                        "unknown body property {bad:?}"
                    )));
                }
                p
            }
        };
        let flag = |k: &str| args.get(k).and_then(Value::as_bool).unwrap_or(false);
        Ok(Self {
            props: email_properties(args)?,
            part_props,
            text: flag("fetchTextBodyValues"),
            html: flag("fetchHTMLBodyValues"),
            all: flag("fetchAllBodyValues"),
            max_bytes: args
                .get("maxBodyValueBytes")
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        })
    }

    /// Whether showing these properties needs the message parsed.
    fn needs_message(&self) -> bool {
        self.props
            .iter()
            .any(|p| MESSAGE_PROPERTIES.contains(&p.as_str()) || p.starts_with("header:"))
    }
}

fn addresses(list: &[EmailAddress]) -> Value {
    Value::Array(
        list.iter()
            .map(|a| json!({"name": a.name, "email": a.email}))
            .collect(),
    )
}

fn header_json(v: HeaderValue) -> Value {
    match v {
        HeaderValue::Text(t) => json!(t),
        HeaderValue::Addresses(a) => addresses(&a),
        HeaderValue::Groups(g) => g
            .iter()
            .map(|g| json!({"name": g.name, "addresses": addresses(&g.addresses)}))
            .collect(),
        HeaderValue::Ids(ids) => json!(ids),
        HeaderValue::Date(t) => json!(utc(t)),
        HeaderValue::Urls(u) => json!(u),
        HeaderValue::Absent => Value::Null,
    }
}

fn raw_headers(headers: &[(String, String)]) -> Value {
    headers
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

fn part_json(p: &mail::Part, blob: &BlobId, props: &[String]) -> Value {
    let mut o = Map::new();
    for prop in props {
        let v = match prop.as_str() {
            "partId" => json!(p.part_id),
            "blobId" => json!(p.part_id.as_ref().map(|id| BlobRef::part_id(blob, id))),
            "size" => json!(p.size),
            "name" => json!(p.name),
            "type" => json!(p.media_type),
            "charset" => json!(p.charset),
            "disposition" => json!(p.disposition),
            "cid" => json!(p.cid),
            "language" => {
                if p.language.is_empty() {
                    Value::Null
                } else {
                    json!(p.language)
                }
            }
            "location" => json!(p.location),
            "headers" => raw_headers(&p.headers),
            "subParts" => {
                if p.part_id.is_some() {
                    Value::Null
                } else {
                    p.sub_parts
                        .iter()
                        .map(|c| part_json(c, blob, props))
                        .collect()
                }
            }
            _ => continue,
        };
        o.insert(prop.clone(), v);
    }
    Value::Object(o)
}

/// What is known of an email being shown: its stored record (absent for Email/parse) and,
/// when a property needs it, the parsed message.
struct Shown<'a> {
    record: Option<(&'a EmailRecord, &'a [MailboxId])>,
    blob: &'a BlobId,
    size: u64,
    msg: Option<&'a Message<'a>>,
}

impl Shown<'_> {
    fn property(&self, prop: &str, w: &Wanted) -> Value {
        let rec = self.record.map(|(r, _)| r);
        let msg = self.msg;
        let from_msg_addresses = |name: &str| {
            msg.and_then(|m| m.addresses(name))
                .map_or(Value::Null, |a| addresses(&a))
        };
        let from_msg_ids = |name: &str| {
            msg.and_then(|m| m.ids(name))
                .map_or(Value::Null, |i| json!(i))
        };
        match prop {
            "id" => json!(rec.map(|r| &r.id)),
            "blobId" => json!(self.blob),
            "threadId" => json!(rec.map(|r| &r.thread_id)),
            "mailboxIds" => self.record.map_or(Value::Null, |(_, boxes)| {
                boxes
                    .iter()
                    .map(|m| (m.to_string(), Value::Bool(true)))
                    .collect::<Map<_, _>>()
                    .into()
            }),
            "keywords" => rec.map_or(Value::Null, |r| {
                r.keywords
                    .iter()
                    .map(|k| (k.clone(), Value::Bool(true)))
                    .collect::<Map<_, _>>()
                    .into()
            }),
            "size" => json!(self.size),
            "receivedAt" => json!(rec.map(|r| utc(r.received_at))),
            "messageId" => match rec {
                Some(r) => json!(r.message_id.as_ref().map(|m| vec![m])),
                None => from_msg_ids("Message-ID"),
            },
            "inReplyTo" => from_msg_ids("In-Reply-To"),
            "references" => from_msg_ids("References"),
            "sender" => from_msg_addresses("Sender"),
            "bcc" => from_msg_addresses("Bcc"),
            "replyTo" => from_msg_addresses("Reply-To"),
            "from" | "to" | "cc" => match rec {
                Some(r) => addresses(match prop {
                    "from" => &r.from,
                    "to" => &r.to,
                    _ => &r.cc,
                }),
                None => from_msg_addresses(prop),
            },
            "subject" => match rec {
                Some(r) => json!(r.subject),
                None => json!(msg.and_then(Message::subject)),
            },
            "sentAt" => match rec {
                Some(r) => json!(r.sent_at.map(utc)),
                None => json!(msg.and_then(Message::sent_at).map(utc)),
            },
            "hasAttachment" => match rec {
                Some(r) => json!(r.has_attachment),
                None => json!(msg.is_some_and(Message::has_attachment)),
            },
            "preview" => match rec {
                Some(r) => json!(r.preview),
                None => json!(msg.map(Message::preview).unwrap_or_default()),
            },
            "headers" => msg.map_or(Value::Null, |m| raw_headers(&m.headers())),
            "bodyStructure" => msg
                .and_then(Message::structure)
                .map_or(Value::Null, |p| part_json(&p, self.blob, &w.part_props)),
            "textBody" | "htmlBody" | "attachments" | "bodyValues" => msg
                .map_or(Value::Null, |m| {
                    body_property(&m.body(), prop, self.blob, w)
                }),
            other => match (HeaderProperty::parse(other), msg) {
                (Some(h), Some(m)) => {
                    let mut values = m.header(&h.name, h.form).into_iter().map(header_json);
                    if h.all {
                        Value::Array(values.collect())
                    } else {
                        values.next_back().unwrap_or(Value::Null)
                    }
                }
                _ => Value::Null,
            },
        }
    }

    fn to_json(&self, w: &Wanted) -> Value {
        let mut o = Map::new();
        if self.record.is_some() {
            o.insert("id".into(), self.property("id", w));
        }
        for p in &w.props {
            o.insert(p.clone(), self.property(p, w));
        }
        Value::Object(o)
    }
}

fn body_property(b: &mail::Body, prop: &str, blob: &BlobId, w: &Wanted) -> Value {
    let parts = |list: &[mail::Part]| -> Value {
        list.iter()
            .map(|p| part_json(p, blob, &w.part_props))
            .collect()
    };
    match prop {
        "textBody" => parts(&b.text_body),
        "htmlBody" => parts(&b.html_body),
        "attachments" => parts(&b.attachments),
        _ => {
            let in_list = |list: &[mail::Part], id: &str| {
                list.iter().any(|p| p.part_id.as_deref() == Some(id))
            };
            let mut values = Map::new();
            for (id, text) in &b.values {
                let wanted = w.all
                    || (w.text && in_list(&b.text_body, id))
                    || (w.html && in_list(&b.html_body, id));
                if !wanted {
                    continue;
                }
                let mut cut = text.len().min(w.max_bytes);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                values.insert(id.clone(), json!({"value": &text[..cut], "isEncodingProblem": false, "isTruncated": cut < text.len()}));
            }
            Value::Object(values)
        }
    }
}

/// The account's emails among `ids` (others are simply absent), recorded as read by
/// `operation` (MailItemsAccessed with every item and the properties shown) before any content
/// leaves.
pub(super) fn read_emails(
    j: &Jmap,
    a: &Authed,
    ids: &[String],
    operation: &str,
    properties: Value,
) -> Result<Vec<(EmailRecord, Vec<MailboxId>)>, MethodError> {
    let parsed: Vec<EmailId> = ids
        .iter()
        .filter_map(|i| EmailId::new(i.as_str()).ok())
        .collect();
    let found = j
        .mail
        .emails(&a.account.id, &parsed)
        .map_err(MethodError::server)?;
    let ev = a
        .event(Operation::MailItemsAccessed)
        .detail("operation", operation)
        .detail(
            "items",
            found
                .iter()
                .map(|(e, _)| e.id.to_string())
                .collect::<Vec<_>>(),
        )
        .detail("properties", properties);
    a.record(ev);
    Ok(found)
}

pub(super) fn email_get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let Some(ids) = ids_arg(args)? else {
        return Err(MethodError::new(
            "requestTooLarge",
            "give the ids to fetch (Email/query finds them)".into(),
        ));
    };
    let wanted = Wanted::from(args)?;
    let found = read_emails(j, a, &ids, "Email/get", json!(wanted.props))?;
    let mut list = Vec::with_capacity(found.len());
    let mut budget = OutputBudget::new(&j.limits);
    for (e, boxes) in &found {
        let raw = if wanted.needs_message() {
            j.mail
                .blob(&a.account.id, &e.blob_id)
                .map_err(MethodError::server)?
                .map(|(_, raw)| raw)
        } else {
            None
        };
        let msg = raw.as_deref().and_then(|r| Message::parse(r).ok());
        let shown = Shown {
            record: Some((e, boxes)),
            blob: &e.blob_id,
            size: e.size,
            msg: msg.as_ref(),
        };
        let v = shown.to_json(&wanted);
        if !budget.take(&v) {
            return Err(too_large(&j.limits));
        }
        list.push(v);
    }
    let not_found: Vec<&String> = ids
        .iter()
        .filter(|i| !found.iter().any(|(e, _)| e.id.as_str() == i.as_str()))
        .collect();
    Ok(
        json!({"accountId": a.account.id, "state": state(j, a)?, "list": list, "notFound": not_found}),
    )
}

/// The answer to a call whose emails would not fit one method response.
fn too_large(limits: &crate::limits::Limits) -> MethodError {
    MethodError::new(
        "requestTooLarge",
        format!(
            "the response to this call would exceed {} bytes; ask for fewer emails, fewer properties or a smaller maxBodyValueBytes",
            limits.method_response
        ),
    )
}

/// `Email/parse` (RFC 8621 §4.9): blobs shown as emails without storing them, typically an
/// attached message (a part blob) or an upload.
pub(super) fn email_parse(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let blob_ids =
        strings_arg(args, "blobIds")?.ok_or_else(|| MethodError::invalid("blobIds is required"))?;
    if blob_ids.len() > MAX_OBJECTS_IN_GET {
        return Err(MethodError::new(
            "requestTooLarge",
            format!("at most {MAX_OBJECTS_IN_GET} blobs per Email/parse"),
        ));
    }
    let mut wanted = Wanted::from(args)?;
    if args.get("properties").is_none_or(Value::is_null) {
        // RFC 8621 §4.9: the default omits what only a stored email has.
        // RFC 8621 §4.9: the default omits what only a stored email has (the first seven).
        wanted.props = EMAIL_DEFAULT_PROPERTIES[7..]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    }
    // Each blob once, however often it is named, and one at a time: a blob's bytes are
    // dropped once its Email is built, and the call reads at most `parse_bytes` in all.
    let mut unique: Vec<&String> = Vec::with_capacity(blob_ids.len());
    for id in &blob_ids {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    let budget = j.limits.parse_bytes;
    let mut read = 0usize;
    let mut output = OutputBudget::new(&j.limits);
    let (mut emails, mut blobs) = (Vec::new(), Vec::new());
    let mut parsed = Map::new();
    let mut not_parsable = Vec::new();
    let mut not_found = Vec::new();
    for id in unique {
        let got = match BlobRef::parse(id) {
            Some(r) => blob::fetch(j, a, &r).map_err(MethodError::server)?,
            None => None,
        };
        let Some(f) = got else {
            not_found.push(id);
            continue;
        };
        read = read.saturating_add(f.read);
        if read > budget {
            // Refused whole, before any of it is answered: RFC 8621 §4.9 has no way to say
            // "not parsed this time", and notParsable would tell the client the blob is broken.
            return Err(MethodError::new(
                "requestTooLarge",
                format!("these blobs total more than {budget} bytes; parse fewer at once"),
            ));
        }
        blobs.push(id.as_str());
        emails.extend(f.email.as_ref().map(|e| e.to_string()));
        let Ok(msg) = Message::parse(&f.bytes) else {
            not_parsable.push(id);
            continue;
        };
        // The id a client names the blob by; a part has no BlobId of its own.
        let blob = match BlobRef::parse(id) {
            Some(BlobRef::Whole(b)) => b,
            _ => store::blob_id(&f.bytes),
        };
        let shown = Shown {
            record: None,
            blob: &blob,
            size: f.bytes.len() as u64,
            msg: Some(&msg),
        };
        let mut v = shown.to_json(&wanted);
        if let Some(o) = v.as_object_mut()
            && o.contains_key("blobId")
        {
            o.insert("blobId".into(), json!(id));
        }
        if !output.take(&v) {
            return Err(too_large(&j.limits));
        }
        parsed.insert(id.clone(), v);
    }
    let ev = a
        .event(Operation::MailItemsAccessed)
        .detail("operation", "Email/parse")
        .detail("items", emails)
        .detail("blobs", blobs);
    a.record(ev);
    Ok(json!({
        "accountId": a.account.id, "parsed": null_if_empty(parsed),
        "notParsable": if not_parsable.is_empty() { Value::Null } else { json!(not_parsable) },
        "notFound": if not_found.is_empty() { Value::Null } else { json!(not_found) },
    }))
}

/// `Email/copy` (RFC 8621 §4.7) copies between two accounts. A Keypost principal has exactly
/// one account and no account is shared, so there is never a second account to copy from.
pub(super) fn email_copy(_j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    match args.get("fromAccountId").and_then(Value::as_str) {
        None => Err(MethodError::invalid("fromAccountId is required")),
        Some(from) if from == a.account.id.as_str() => Err(MethodError::invalid(
            "fromAccountId must differ from accountId (use Email/set to file an email in more mailboxes)",
        )),
        Some(_) => Err(MethodError::new(
            "fromAccountNotFound",
            "no such account is shared with you".into(),
        )),
    }
}

pub(super) fn thread_get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
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
    a.record(ev);
    Ok(
        json!({"accountId": a.account.id, "state": state(j, a)?, "list": list, "notFound": not_found}),
    )
}

/// RFC 8621 §4.1.1: keywords are 1–255 printable ASCII characters other than `( ) { ] % * " \`,
/// compared case-insensitively (stored lowercase).
pub(super) fn keyword(k: &str) -> Option<String> {
    let ok = !k.is_empty()
        && k.len() <= 255
        && k.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !b"(){]%*\"\\".contains(&b));
    ok.then(|| k.to_ascii_lowercase())
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
    let old_state = super::if_in_state(j, a, args)?;
    let (mut created, mut not_created) = (Map::new(), Map::new());
    let mut touched: Vec<String> = Vec::new();
    for (cid, spec) in args
        .get("create")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match super::draft::create(j, a, spec) {
            Ok(v) => {
                if let Some(id) = v.get("id").and_then(Value::as_str) {
                    touched.push(id.to_owned());
                }
                created.insert(cid.clone(), v);
            }
            Err(e) => {
                not_created.insert(cid.clone(), e);
            }
        }
    }
    let mut updated = Map::new();
    let mut not_updated = Map::new();
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
        a.record(ev);
    }
    Ok(json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null_if_empty(created), "updated": null_if_empty(updated), "destroyed": if destroyed.is_empty() { Value::Null } else { json!(destroyed) },
        "notCreated": null_if_empty(not_created), "notUpdated": null_if_empty(not_updated), "notDestroyed": null_if_empty(not_destroyed),
    }))
}

pub(super) fn true_keys(v: Option<&Value>) -> Result<Vec<String>, Value> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                if v == &Value::Bool(true) {
                    Ok(k.clone())
                } else {
                    Err(set_error("invalidProperties", "values must be true", &[]))
                }
            })
            .collect(),
        Some(_) => Err(set_error("invalidProperties", "must be an object", &[])),
    }
}

pub(super) fn email_import(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let old_state = state(j, a)?;
    let emails = args
        .get("emails")
        .and_then(Value::as_object)
        .ok_or_else(|| MethodError::invalid("emails must be an object"))?;
    if emails.len() > MAX_OBJECTS_IN_GET {
        return Err(MethodError::new(
            "requestTooLarge",
            format!("at most {MAX_OBJECTS_IN_GET} emails per import"),
        ));
    }
    let mut created = Map::new();
    let mut not_created = Map::new();
    for (cid, spec) in emails {
        let result = (|| -> Result<Value, Value> {
            let not_found =
                || set_error("blobNotFound", "no such blob in this account", &["blobId"]);
            let blob = spec
                .get("blobId")
                .and_then(Value::as_str)
                .and_then(crate::blob::BlobRef::parse)
                .ok_or_else(not_found)?;
            let raw = crate::blob::fetch(j, a, &blob)
                .map_err(|e| set_error("serverFail", &e.to_string(), &[]))?
                .ok_or_else(not_found)?
                .bytes;
            let mailboxes: Vec<MailboxId> = true_keys(spec.get("mailboxIds"))?
                .iter()
                .map(|m| {
                    MailboxId::new(m.as_str()).map_err(|_| {
                        set_error("invalidProperties", "unknown mailbox", &["mailboxIds"])
                    })
                })
                .collect::<Result<_, _>>()?;
            let keywords = true_keys(spec.get("keywords"))?
                .into_iter()
                .map(|k| k.to_ascii_lowercase())
                .collect();
            let received_at =
                super::utc_date(spec.get("receivedAt"), "receivedAt")?.unwrap_or_else(now);
            match j
                .mail
                .deliver_to(&a.account.id, &raw, &mailboxes, keywords, received_at)
            {
                Ok(d) => Ok(
                    json!({"id": d.id, "blobId": d.blob_id, "threadId": d.thread_id, "size": raw.len()}),
                ),
                Err(mail::Error::NoMailbox(why)) => {
                    Err(set_error("invalidProperties", &why, &["mailboxIds"]))
                }
                Err(mail::Error::NotAMessage(why)) => {
                    Err(set_error("invalidEmail", &why, &["blobId"]))
                }
                Err(e @ mail::Error::OverQuota { .. }) => {
                    Err(set_error("overQuota", &e.to_string(), &[]))
                }
                Err(e) => Err(set_error("serverFail", &e.to_string(), &[])),
            }
        })();
        match result {
            Ok(v) => {
                created.insert(cid.clone(), v);
            }
            Err(e) => {
                not_created.insert(cid.clone(), e);
            }
        }
    }
    if !created.is_empty() {
        let items: Vec<Value> = created
            .values()
            .filter_map(|v| v.get("id").cloned())
            .collect();
        let ev = a
            .event(Operation::MailItemsUpdated)
            .detail("operation", "Email/import")
            .detail("items", items);
        a.record(ev);
    }
    Ok(json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null_if_empty(created), "notCreated": null_if_empty(not_created),
    }))
}
