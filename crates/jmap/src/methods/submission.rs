//! `EmailSubmission/get|set|query|queryChanges` (RFC 8621 §7): sending an email as one of the
//! account's identities, and the record of each sending.
//!
//! Sending itself is [`mail::Mail::submit`], shared with SMTP submission: this module maps the
//! JMAP arguments to a [`mail::Submission`] and each [`mail::Refusal`] to its RFC 8621 §7.5
//! SetError (`forbiddenFrom`, `forbiddenMailFrom`, `invalidEmail`, `tooManyRecipients`, ...).
//! Each recipient's outcome is kept in the submission's `deliveryStatus`; whether a recipient
//! has an account never changes the answer to the request itself.

use mail::{Refusal, SubmitError};
use serde_json::{Map, Value, json};
use store::{EmailId, IdentityId, Submission, SubmissionId};

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

/// The JMAP SetError for a refused submission (RFC 8621 §7.5).
fn refusal_error(r: &Refusal) -> Value {
    let why = r.to_string();
    match r {
        Refusal::Malformed { property, .. } => set_error("invalidProperties", &why, &[property]),
        Refusal::UnknownIdentity => set_error(
            "invalidProperties",
            "unknown identityId (see Identity/get)",
            &["identityId"],
        ),
        Refusal::NoSuchEmail => set_error("invalidProperties", "no such email", &["emailId"]),
        Refusal::InvalidEmail { property, .. } => set_error("invalidEmail", &why, &[property]),
        Refusal::ForbiddenFrom { .. } => set_error("forbiddenFrom", &why, &[]),
        Refusal::ForbiddenMailFrom => set_error("forbiddenMailFrom", &why, &[]),
        Refusal::InvalidRecipients { addresses } => {
            let mut e = set_error("invalidRecipients", &why, &[]);
            e["invalidRecipients"] = json!(addresses);
            e
        }
        Refusal::NoRecipients => set_error("noRecipients", &why, &[]),
        Refusal::TooManyRecipients { max } => {
            let mut e = set_error("tooManyRecipients", &why, &[]);
            e["maxRecipients"] = json!(max);
            e
        }
        // Refusals added to mail later are still refusals.
        _ => set_error("forbidden", &why, &[]),
    }
}

fn malformed(property: &'static str, why: &str) -> Refusal {
    Refusal::Malformed {
        property,
        why: why.to_owned(),
    }
}

/// The JMAP EmailSubmission object as a [`mail::Submission`].
fn submission_of<'a>(a: &'a Authed, spec: &Value) -> Result<mail::Submission<'a>, Refusal> {
    let spec = spec
        .as_object()
        .ok_or_else(|| malformed("emailId", "an EmailSubmission is an object"))?;
    let identity = spec
        .get("identityId")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("identityId", "identityId is required"))?;
    // An id that cannot exist is an unknown identity, like any other.
    let identity = IdentityId::new(identity).map_err(|_| Refusal::UnknownIdentity)?;
    let email = spec
        .get("emailId")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("emailId", "emailId is required"))?;
    let email = EmailId::new(email).map_err(|_| Refusal::NoSuchEmail)?;
    let envelope = match spec.get("envelope") {
        None | Some(Value::Null) => None,
        Some(e) => {
            let address = |v: Option<&Value>| {
                v.and_then(|a| a.get("email"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let mail_from = address(e.get("mailFrom"))
                .ok_or_else(|| malformed("envelope", "envelope/mailFrom is an Address"))?;
            let rcpt_to = e
                .get("rcptTo")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed("envelope", "envelope/rcptTo is a list of Addresses"))?
                .iter()
                .map(|r| address(Some(r)))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| malformed("envelope", "envelope/rcptTo is a list of Addresses"))?;
            Some(mail::Envelope { mail_from, rcpt_to })
        }
    };
    Ok(mail::Submission {
        account: &a.account,
        identity: Some(identity),
        email,
        envelope,
        at: now(),
        via: "EmailSubmission",
    })
}

fn submit_one(j: &Jmap, a: &Authed, spec: &Value) -> Result<Submission, Value> {
    let submission = match submission_of(a, spec) {
        Ok(s) => s,
        Err(r) => {
            let email = spec
                .get("emailId")
                .and_then(Value::as_str)
                .and_then(|e| EmailId::new(e).ok());
            mail::record_refusal(a, &r, email.as_ref());
            return Err(refusal_error(&r));
        }
    };
    j.mail.submit(&submission, a).map_err(|e| match e {
        SubmitError::Refused(r) => refusal_error(&r),
        SubmitError::Failed(e) => set_error("serverFail", &e.to_string(), &[]),
    })
}
