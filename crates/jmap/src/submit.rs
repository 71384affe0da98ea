//! Putting mail in and sending it: `Email/import` (of uploaded blobs), `Identity/get`, and
//! `EmailSubmission/set`, which for now delivers between Keypost accounts only (remote delivery
//! arrives with SMTP; a submission to any other address is refused as a whole).

use audit::Operation;
use serde_json::{Map, Value, json};
use store::{EmailId, MailboxId};

use crate::methods::{Answer, MResult, MethodError, email_set, null_if_empty, set_error, state};
use crate::{Authed, Jmap, MAX_OBJECTS_IN_GET, now};

fn true_keys(v: Option<&Value>) -> Result<Vec<String>, Value> {
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

pub(crate) fn email_import(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
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
            let received_at = utc_date(spec.get("receivedAt"), "receivedAt")?.unwrap_or_else(now);
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
        j.audit.record(ev, now()).map_err(MethodError::server)?;
    }
    Ok(json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null_if_empty(created), "notCreated": null_if_empty(not_created),
    }))
}

/// The one identity an account sends as: its own address.
fn identity_id(a: &Authed) -> String {
    format!("i{}", a.account.id)
}

pub(crate) fn identity_get(_j: &Jmap, a: &Authed, _args: &Map<String, Value>) -> MResult {
    Ok(json!({
        "accountId": a.account.id, "state": "0", "notFound": [],
        "list": [{
            "id": identity_id(a), "name": a.account.display_name, "email": a.account.email,
            "replyTo": null, "bcc": null, "textSignature": "", "htmlSignature": "", "mayDelete": false,
        }],
    }))
}

pub(crate) fn submission_set(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> Answer {
    let old_state = state(j, a)?;
    let mut created = Map::new();
    let mut not_created = Map::new();
    let mut sent: Vec<(String, String)> = Vec::new(); // (creation id, email id)
    if let Some(create) = args.get("create").and_then(Value::as_object) {
        for (cid, spec) in create {
            match submit_one(j, a, spec) {
                Ok((email_id, v)) => {
                    sent.push((cid.clone(), email_id));
                    created.insert(cid.clone(), v);
                }
                Err(e) => {
                    not_created.insert(cid.clone(), e);
                }
            }
        }
    }
    let response = json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null_if_empty(created), "notCreated": null_if_empty(not_created),
    });
    // onSuccessUpdateEmail: {"#creationId": patch} applied to the submitted emails.
    let mut update = Map::new();
    if let Some(on_success) = args.get("onSuccessUpdateEmail").and_then(Value::as_object) {
        for (key, patch) in on_success {
            let target = key
                .strip_prefix('#')
                .and_then(|cid| sent.iter().find(|(c, _)| c == cid))
                .map(|(_, e)| e.clone());
            if let Some(email) = target {
                update.insert(email, patch.clone());
            }
        }
    }
    if update.is_empty() {
        return Ok((response, None));
    }
    let mut set_args = Map::new();
    set_args.insert("accountId".into(), json!(a.account.id));
    set_args.insert("update".into(), Value::Object(update));
    Ok((
        response,
        Some(("Email/set".to_owned(), email_set(j, a, &set_args)?)),
    ))
}

fn submit_one(j: &Jmap, a: &Authed, spec: &Value) -> Result<(String, Value), Value> {
    if spec.get("identityId").and_then(Value::as_str) != Some(identity_id(a).as_str()) {
        return Err(set_error(
            "invalidProperties",
            "unknown identityId (see Identity/get)",
            &["identityId"],
        ));
    }
    let email_id = spec
        .get("emailId")
        .and_then(Value::as_str)
        .and_then(|e| EmailId::new(e).ok());
    let not_found = || set_error("invalidProperties", "no such email", &["emailId"]);
    let email_id = email_id.ok_or_else(not_found)?;
    let server = |e: mail::Error| set_error("serverFail", &e.to_string(), &[]);
    let (email, _) = j
        .mail
        .emails(&a.account.id, std::slice::from_ref(&email_id))
        .map_err(server)?
        .into_iter()
        .next()
        .ok_or_else(not_found)?;
    // No spoofing: the message must be from the account's own address.
    if !email
        .from
        .iter()
        .any(|f| f.email.eq_ignore_ascii_case(&a.account.email))
    {
        return Err(set_error(
            "forbiddenFrom",
            "the From address must be your own",
            &[],
        ));
    }
    let (_, raw) = j
        .mail
        .blob(&a.account.id, &email.blob_id)
        .map_err(server)?
        .ok_or_else(not_found)?;
    let mut recipients: Vec<String> = match spec
        .get("envelope")
        .and_then(|e| e.get("rcptTo"))
        .and_then(Value::as_array)
    {
        Some(list) => list
            .iter()
            .filter_map(|r| r.get("email").and_then(Value::as_str))
            .map(str::to_ascii_lowercase)
            .collect(),
        None => email
            .to
            .iter()
            .chain(&email.cc)
            .map(|r| r.email.to_ascii_lowercase())
            .collect(),
    };
    recipients.sort();
    recipients.dedup();
    if recipients.is_empty() {
        return Err(set_error(
            "noRecipients",
            "the message has no recipients",
            &[],
        ));
    }
    let mut local = Vec::new();
    let mut invalid = Vec::new();
    for r in &recipients {
        match j.store.find_account_by_email(r) {
            Ok(Some(acc)) if !acc.disabled => local.push(acc),
            Ok(_) => invalid.push(r.clone()),
            Err(e) => return Err(set_error("serverFail", &e.to_string(), &[])),
        }
    }
    if !invalid.is_empty() {
        let mut e = set_error(
            "invalidRecipients",
            "only Keypost accounts can be reached until outbound SMTP is available",
            &[],
        );
        e["invalidRecipients"] = json!(invalid);
        return Err(e);
    }
    let t = now();
    for acc in &local {
        let inbox = j.mail.mailbox_by_role(&acc.id, "inbox").map_err(server)?;
        let d = j
            .mail
            .deliver(&acc.id, &raw, &inbox.id, Vec::new(), t)
            .map_err(server)?;
        // The recipient's vacation response, if one is due, comes back to the sender.
        let reply = j
            .mail
            .vacation_reply(
                &acc.id,
                &acc.email,
                &acc.display_name,
                &a.account.email,
                &raw,
                t,
            )
            .map_err(server)?;
        if let Some(reply) = reply {
            let sender_inbox = j
                .mail
                .mailbox_by_role(&a.account.id, "inbox")
                .map_err(server)?;
            let r = j
                .mail
                .deliver(&a.account.id, &reply, &sender_inbox.id, Vec::new(), t)
                .map_err(server)?;
            let ev = audit::Event::success(Operation::MailDelivered)
                .realm(&a.account.realm)
                .actor(acc.email.clone())
                .target(a.account.email.clone())
                .detail("items", vec![r.id.to_string()])
                .detail("via", "VacationResponse");
            j.audit
                .record(ev, t)
                .map_err(|e| set_error("serverFail", &e.to_string(), &[]))?;
        }
        let ev = audit::Event::success(Operation::MailDelivered)
            .realm(&acc.realm)
            .actor(a.account.email.clone())
            .target(acc.email.clone())
            .detail("items", vec![d.id.to_string()])
            .detail("via", "EmailSubmission");
        j.audit
            .record(ev, t)
            .map_err(|e| set_error("serverFail", &e.to_string(), &[]))?;
    }
    let ev = a
        .event(Operation::MailSent)
        .detail("items", vec![email_id.to_string()])
        .detail("recipients", recipients.clone());
    j.audit
        .record(ev, t)
        .map_err(|e| set_error("serverFail", &e.to_string(), &[]))?;
    let id = format!("s{}", email_id);
    Ok((
        email_id.to_string(),
        json!({"id": id, "sendAt": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(), "undoStatus": "final"}),
    ))
}

fn utc_date(v: Option<&Value>, name: &str) -> Result<Option<i64>, Value> {
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

fn vacation_json(v: &store::Vacation) -> Value {
    let date = |t: Option<i64>| {
        t.map(|t| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
            )
            .to_string()
        })
    };
    json!({"id": "singleton", "isEnabled": v.enabled, "fromDate": date(v.from_date), "toDate": date(v.to_date),
           "subject": v.subject, "textBody": v.text_body, "htmlBody": v.html_body})
}

pub(crate) fn vacation_get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let v = j
        .mail
        .vacation(&a.account.id)
        .map_err(MethodError::server)?;
    let wanted = match args.get("ids") {
        None | Some(Value::Null) => true,
        Some(Value::Array(ids)) => ids.iter().any(|i| i.as_str() == Some("singleton")),
        Some(_) => return Err(MethodError::invalid("ids must be an array or null")),
    };
    let not_found: Vec<&Value> = args
        .get("ids")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| i.as_str() != Some("singleton"))
        .collect();
    let list = if wanted {
        vec![vacation_json(&v)]
    } else {
        vec![]
    };
    Ok(
        json!({"accountId": a.account.id, "state": state(j, a)?, "list": list, "notFound": not_found}),
    )
}

pub(crate) fn vacation_set(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let old_state = state(j, a)?;
    let mut updated = Map::new();
    let mut not_updated = Map::new();
    let mut not_created = Map::new();
    for cid in args
        .get("create")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        not_created.insert(
            cid.clone(),
            set_error(
                "singleton",
                "the VacationResponse is a singleton: update it",
                &[],
            ),
        );
    }
    for (id, patch) in args
        .get("update")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if id != "singleton" {
            not_updated.insert(
                id.clone(),
                set_error(
                    "notFound",
                    "the only VacationResponse is \"singleton\"",
                    &[],
                ),
            );
            continue;
        }
        let result = (|| -> Result<(), Value> {
            let patch = patch
                .as_object()
                .ok_or_else(|| set_error("invalidPatch", "a patch is an object", &[]))?;
            let mut v = j
                .mail
                .vacation(&a.account.id)
                .map_err(|e| set_error("serverFail", &e.to_string(), &[]))?;
            for (k, val) in patch {
                let text = || match val {
                    Value::Null => Ok(None),
                    Value::String(s) => Ok(Some(s.clone())),
                    _ => Err(set_error(
                        "invalidProperties",
                        &format!("{k} must be a string or null"),
                        &[k.as_str()],
                    )),
                };
                match k.as_str() {
                    "isEnabled" => {
                        v.enabled = val.as_bool().ok_or_else(|| {
                            set_error(
                                "invalidProperties",
                                "isEnabled must be a boolean",
                                &["isEnabled"],
                            )
                        })?
                    }
                    "fromDate" => v.from_date = utc_date(Some(val), "fromDate")?,
                    "toDate" => v.to_date = utc_date(Some(val), "toDate")?,
                    "subject" => v.subject = text()?,
                    "textBody" => v.text_body = text()?,
                    "htmlBody" => v.html_body = text()?,
                    other => {
                        return Err(set_error(
                            "invalidProperties",
                            &format!("{other} cannot be set"),
                            &[other],
                        ));
                    }
                }
            }
            j.mail
                .set_vacation(&a.account.id, &v)
                .map_err(|e| set_error("serverFail", &e.to_string(), &[]))
        })();
        match result {
            Ok(()) => {
                updated.insert(id.clone(), Value::Null);
            }
            Err(e) => {
                not_updated.insert(id.clone(), e);
            }
        }
    }
    Ok(
        json!({"accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
              "updated": null_if_empty(updated), "notUpdated": null_if_empty(not_updated), "notCreated": null_if_empty(not_created),
              "created": null, "destroyed": null, "notDestroyed": null}),
    )
}
