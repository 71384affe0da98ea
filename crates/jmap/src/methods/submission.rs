//! `EmailSubmission/get|set|query|queryChanges` (RFC 8621 §7): sending an email as one of the
//! account's identities, and the record of each sending.
//!
//! Delivery is between Keypost accounts only until outbound SMTP exists: a submission naming
//! any other recipient is refused as a whole (`invalidRecipients`), never half-sent. Each
//! delivery's outcome is kept per recipient (a full mailbox is `552 5.2.2`, not a failure of
//! the whole submission).

use audit::Operation;
use mail::Message;
use serde_json::{Map, Value, json};
use store::{Delivery, EmailId, IdentityId, Submission, SubmissionId};

use super::{Answer, MResult, MethodError, email_set, null_if_empty, set_error, state, utc};
use crate::{Authed, Jmap, now};

fn submission_json(s: &Submission) -> Value {
    let status: Map<String, Value> = s
        .delivery
        .iter()
        .map(|d| {
            (
                d.rcpt.clone(),
                json!({"smtpReply": d.smtp_reply, "delivered": d.delivered, "displayed": "unknown"}),
            )
        })
        .collect();
    json!({
        "id": s.id, "identityId": s.identity, "emailId": s.email, "threadId": s.thread,
        "envelope": {
            "mailFrom": {"email": s.mail_from, "parameters": null},
            "rcptTo": s.rcpt_to.iter().map(|r| json!({"email": r, "parameters": null})).collect::<Vec<_>>(),
        },
        "sendAt": utc(s.send_at), "undoStatus": "final", "deliveryStatus": status,
        "dsnBlobIds": [], "mdnBlobIds": [],
    })
}

pub(super) fn get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let all = j
        .mail
        .submissions(&a.account.id)
        .map_err(MethodError::server)?;
    super::get_from(j, a, args, &all, |s| s.id.as_str(), submission_json)
}

/// The submission ids a query selects (newest first unless sorted otherwise).
fn query_ids(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> Result<Vec<String>, MethodError> {
    let mut all = j
        .mail
        .submissions(&a.account.id)
        .map_err(MethodError::server)?;
    let filter = args
        .get("filter")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in &filter {
        let list = || -> Result<Vec<String>, MethodError> {
            v.as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .ok_or_else(|| MethodError::invalid(format!("{k} must be a list of ids")))
        };
        let date = || {
            super::utc_date(Some(v), k)
                .map_err(|_| MethodError::invalid(format!("{k} must be a UTCDate")))
        };
        match k.as_str() {
            "identityIds" => {
                let l = list()?;
                all.retain(|s| l.iter().any(|x| x == s.identity.as_str()));
            }
            "emailIds" => {
                let l = list()?;
                all.retain(|s| l.iter().any(|x| x == s.email.as_str()));
            }
            "threadIds" => {
                let l = list()?;
                all.retain(|s| l.iter().any(|x| x == s.thread.as_str()));
            }
            "undoStatus" => {
                all.retain(|s| v.as_str() == Some("final") && !s.id.as_str().is_empty())
            }
            "before" => {
                let t = date()?.unwrap_or(i64::MAX);
                all.retain(|s| s.send_at < t);
            }
            "after" => {
                let t = date()?.unwrap_or(i64::MIN);
                all.retain(|s| s.send_at >= t);
            }
            other => {
                return Err(MethodError::new(
                    "unsupportedFilter",
                    format!("filter property {other} is not supported"),
                ));
            }
        }
    }
    if let Some(sort) = args.get("sort").and_then(Value::as_array) {
        for c in sort.iter().rev() {
            let asc = c
                .get("isAscending")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            match c.get("property").and_then(Value::as_str) {
                Some("sentAt") => all.sort_by_key(|s| s.send_at),
                Some("emailId") => all.sort_by(|x, y| x.email.as_str().cmp(y.email.as_str())),
                Some("threadId") => all.sort_by(|x, y| x.thread.as_str().cmp(y.thread.as_str())),
                other => {
                    return Err(MethodError::new(
                        "unsupportedSort",
                        format!("cannot sort submissions by {other:?}"),
                    ));
                }
            }
            if !asc {
                all.reverse();
            }
        }
    }
    Ok(all.into_iter().map(|s| s.id.to_string()).collect())
}

pub(super) fn query(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    super::list_query(j, a, query_ids(j, a, args)?)
}

pub(super) fn query_changes(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    super::list_query_changes(
        j,
        a,
        args,
        |since, max| j.mail.submission_changes(&a.account.id, since, max),
        || query_ids(j, a, args),
    )
}

pub(super) fn set(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> Answer {
    let old_state = super::if_in_state(j, a, args)?;
    let mut created = Map::new();
    let mut not_created = Map::new();
    let mut sent: Vec<(String, Submission)> = Vec::new();
    for (cid, spec) in args
        .get("create")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match submit_one(j, a, spec) {
            Ok(s) => {
                created.insert(
                    cid.clone(),
                    json!({"id": s.id, "threadId": s.thread, "sendAt": utc(s.send_at), "undoStatus": "final"}),
                );
                sent.push((cid.clone(), s));
            }
            Err(e) => {
                not_created.insert(cid.clone(), e);
            }
        }
    }
    let existing = j
        .mail
        .submissions(&a.account.id)
        .map_err(MethodError::server)?;
    let mut not_updated = Map::new();
    for (id, patch) in args
        .get("update")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let e = if !existing.iter().any(|s| s.id.as_str() == id) {
            set_error("notFound", "no such submission", &[])
        } else if patch.get("undoStatus").and_then(Value::as_str) == Some("canceled") {
            set_error(
                "cannotUnsend",
                "delivery is immediate: the message has been delivered",
                &[],
            )
        } else {
            set_error("invalidProperties", "only undoStatus can be changed", &[])
        };
        not_updated.insert(id.clone(), e);
    }
    let (mut destroyed, mut not_destroyed) = (Vec::new(), Map::new());
    for id in args
        .get("destroy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let target = existing
            .iter()
            .find(|s| s.id.as_str() == id)
            .map(|s| SubmissionId::clone(&s.id));
        match target {
            Some(sid) => {
                j.mail
                    .destroy_submission(&a.account.id, &sid)
                    .map_err(MethodError::server)?;
                destroyed.push(id.to_owned());
            }
            None => {
                not_destroyed.insert(
                    id.to_owned(),
                    set_error("notFound", "no such submission", &[]),
                );
            }
        }
    }
    let response = json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null_if_empty(created), "notCreated": null_if_empty(not_created),
        "updated": null, "notUpdated": null_if_empty(not_updated),
        "destroyed": if destroyed.is_empty() { Value::Null } else { json!(destroyed) },
        "notDestroyed": null_if_empty(not_destroyed),
    });
    // RFC 8621 §7.5: onSuccessUpdateEmail / onSuccessDestroyEmail name submissions by
    // "#creationId" (or id) and act on their emails through an implicit Email/set.
    let email_of = |key: &str| {
        key.strip_prefix('#')
            .and_then(|cid| sent.iter().find(|(c, _)| c == cid))
            .map(|(_, s)| s.email.to_string())
            .or_else(|| {
                existing
                    .iter()
                    .find(|s| s.id.as_str() == key)
                    .map(|s| s.email.to_string())
            })
    };
    let mut update = Map::new();
    for (key, patch) in args
        .get("onSuccessUpdateEmail")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(email) = email_of(key) {
            update.insert(email, patch.clone());
        }
    }
    let destroy: Vec<String> = args
        .get("onSuccessDestroyEmail")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(email_of)
        .collect();
    if update.is_empty() && destroy.is_empty() {
        return Ok((response, None));
    }
    let mut set_args = Map::new();
    set_args.insert("accountId".into(), json!(a.account.id));
    set_args.insert("update".into(), Value::Object(update));
    set_args.insert("destroy".into(), json!(destroy));
    Ok((
        response,
        Some(("Email/set".to_owned(), email_set(j, a, &set_args)?)),
    ))
}

fn invalid(property: &str, why: &str) -> Value {
    set_error("invalidProperties", why, &[property])
}

fn submit_one(j: &Jmap, a: &Authed, spec: &Value) -> Result<Submission, Value> {
    let server = |e: mail::Error| set_error("serverFail", &e.to_string(), &[]);
    let identity = spec
        .get("identityId")
        .and_then(Value::as_str)
        .and_then(|id| IdentityId::new(id).ok());
    let identities = j.mail.identities(&a.account.id).map_err(server)?;
    let identity = identity
        .and_then(|id| identities.into_iter().find(|i| i.id == id))
        .ok_or_else(|| invalid("identityId", "unknown identityId (see Identity/get)"))?;
    let not_found = || invalid("emailId", "no such email");
    let email_id = spec
        .get("emailId")
        .and_then(Value::as_str)
        .and_then(|e| EmailId::new(e).ok())
        .ok_or_else(not_found)?;
    let (email, _) = j
        .mail
        .emails(&a.account.id, std::slice::from_ref(&email_id))
        .map_err(server)?
        .into_iter()
        .next()
        .ok_or_else(not_found)?;
    // No spoofing: the message is from the identity's address, which is the account's own.
    if !email
        .from
        .iter()
        .any(|f| f.email.eq_ignore_ascii_case(&identity.email))
    {
        return Err(set_error(
            "forbiddenFrom",
            "the From address must be the identity's",
            &[],
        ));
    }
    let (_, raw) = j
        .mail
        .blob(&a.account.id, &email.blob_id)
        .map_err(server)?
        .ok_or_else(not_found)?;
    let envelope = spec.get("envelope").filter(|e| !e.is_null());
    if let Some(from) = envelope
        .and_then(|e| e.get("mailFrom"))
        .and_then(|m| m.get("email"))
        .and_then(Value::as_str)
        && !from.eq_ignore_ascii_case(&identity.email)
    {
        return Err(set_error(
            "forbiddenMailFrom",
            "MAIL FROM must be the identity's address",
            &[],
        ));
    }
    let mut recipients: Vec<String> = match envelope
        .and_then(|e| e.get("rcptTo"))
        .and_then(Value::as_array)
    {
        Some(list) => list
            .iter()
            .filter_map(|r| r.get("email").and_then(Value::as_str))
            .map(str::to_ascii_lowercase)
            .collect(),
        None => {
            // RFC 8621 §7: To, Cc and Bcc of the message.
            let bcc = Message::parse(&raw)
                .ok()
                .and_then(|m| m.addresses("Bcc"))
                .unwrap_or_default();
            email
                .to
                .iter()
                .chain(&email.cc)
                .chain(&bcc)
                .map(|r| r.email.to_ascii_lowercase())
                .collect()
        }
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
    let mut invalid_rcpts = Vec::new();
    for r in &recipients {
        match j.store.find_account_by_email(r) {
            Ok(Some(acc)) if !acc.disabled => local.push(acc),
            Ok(_) => invalid_rcpts.push(r.clone()),
            Err(e) => return Err(set_error("serverFail", &e.to_string(), &[])),
        }
    }
    if !invalid_rcpts.is_empty() {
        let mut e = set_error(
            "invalidRecipients",
            "only Keypost accounts can be reached until outbound SMTP is available",
            &[],
        );
        e["invalidRecipients"] = json!(invalid_rcpts);
        return Err(e);
    }
    let t = now();
    let mut delivery = Vec::new();
    for acc in &local {
        let inbox = j.mail.mailbox_by_role(&acc.id, "inbox").map_err(server)?;
        let d = match j.mail.deliver(&acc.id, &raw, &inbox.id, Vec::new(), t) {
            Ok(d) => d,
            Err(mail::Error::OverQuota { .. }) => {
                delivery.push(Delivery {
                    rcpt: acc.email.clone(),
                    smtp_reply: "552 5.2.2 Mailbox full".into(),
                    delivered: "no".into(),
                });
                continue;
            }
            Err(e) => return Err(server(e)),
        };
        delivery.push(Delivery {
            rcpt: acc.email.clone(),
            smtp_reply: "250 2.1.5 Delivered to mailbox".into(),
            delivered: "yes".into(),
        });
        let ev = audit::Event::success(Operation::MailDelivered)
            .realm(&acc.realm)
            .actor(a.account.email.clone())
            .target(acc.email.clone())
            .detail("items", vec![d.id.to_string()])
            .detail("via", "EmailSubmission");
        a.record(ev);
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
            if let Ok(r) = j
                .mail
                .deliver(&a.account.id, &reply, &sender_inbox.id, Vec::new(), t)
            {
                let ev = audit::Event::success(Operation::MailDelivered)
                    .realm(&a.account.realm)
                    .actor(acc.email.clone())
                    .target(a.account.email.clone())
                    .detail("items", vec![r.id.to_string()])
                    .detail("via", "VacationResponse");
                a.record(ev);
            }
        }
    }
    let submission = j
        .mail
        .record_submission(Submission {
            id: SubmissionId::new("pending")
                .map_err(|e| set_error("serverFail", &e.to_string(), &[]))?,
            account: a.account.id.clone(),
            identity: identity.id,
            email: email_id.clone(),
            thread: email.thread_id.clone(),
            mail_from: identity.email,
            rcpt_to: recipients.clone(),
            send_at: t,
            delivery,
        })
        .map_err(server)?;
    let ev = a
        .event(Operation::MailSent)
        .detail("items", vec![email_id.to_string()])
        .detail("submission", submission.id.to_string())
        .detail("recipients", recipients);
    a.record(ev);
    Ok(submission)
}
