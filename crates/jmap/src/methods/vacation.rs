//! `VacationResponse/get|set` (RFC 8621 §8): the account's one automatic reply.

use audit::Operation;
use serde_json::{Map, Value, json};

use super::{MResult, MethodError, null_if_empty, set_error, state, utc_date};
use crate::{Authed, Jmap};

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

pub(super) fn get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
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

pub(super) fn set(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
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
                let ev = a
                    .event(Operation::SettingsChanged)
                    .detail("operation", "VacationResponse/set")
                    .detail("patch", patch.clone());
                a.record(ev);
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
