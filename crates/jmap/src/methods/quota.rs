//! `Quota/get|changes|query` (RFC 9425): the account's mail storage, used and allowed. An
//! unlimited account has no Quota object.

use serde_json::{Map, Value, json};

use super::{MResult, MethodError, ids_arg, since_arg, state};
use crate::{Authed, Jmap};

/// The one quota an account has: its mail storage.
const MAIL_QUOTA: &str = "mail";

fn quota_json(a: &Authed, q: &mail::Quota) -> Option<Value> {
    let limit = q.limit?;
    Some(json!({
        "id": MAIL_QUOTA, "resourceType": "octets", "used": q.used, "hardLimit": limit,
        "warnLimit": limit / 10 * 9, "softLimit": null, "scope": "account",
        "name": format!("Mail storage of {}", a.account.email), "types": ["Mail"],
        "description": "All mail in the account, in bytes",
    }))
}

fn current(j: &Jmap, a: &Authed) -> Result<Option<Value>, MethodError> {
    let q = j.mail.quota(&a.account.id).map_err(MethodError::server)?;
    Ok(quota_json(a, &q))
}

pub(super) fn get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let ids = ids_arg(args)?;
    let quota = current(j, a)?;
    let wanted = |id: &str| ids.as_ref().is_none_or(|ids| ids.iter().any(|x| x == id));
    let list: Vec<Value> = quota.into_iter().filter(|_| wanted(MAIL_QUOTA)).collect();
    let not_found: Vec<&String> = ids
        .iter()
        .flatten()
        .filter(|x| x.as_str() != MAIL_QUOTA || list.is_empty())
        .collect();
    Ok(
        json!({"accountId": a.account.id, "state": state(j, a)?, "list": list, "notFound": not_found}),
    )
}

/// The quota's `used` moves with every change to the account, so any older state means it
/// was updated.
pub(super) fn changes(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let since = since_arg(args, "sinceState")?;
    let now_state = state(j, a)?;
    let now: i64 = now_state.parse().unwrap_or(0);
    if since > now || since < 0 {
        return Err(super::cannot_calculate());
    }
    let updated: Vec<&str> = if since < now && current(j, a)?.is_some() {
        vec![MAIL_QUOTA]
    } else {
        vec![]
    };
    Ok(json!({
        "accountId": a.account.id, "oldState": since.to_string(), "newState": now_state,
        "hasMoreChanges": false, "created": [], "updated": updated, "destroyed": [],
        "updatedProperties": null,
    }))
}

pub(super) fn query(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let quota = current(j, a)?;
    let filter = args
        .get("filter")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let matches = |q: &Value| {
        filter.iter().all(|(k, v)| match k.as_str() {
            "name" => v
                .as_str()
                .zip(q["name"].as_str())
                .is_some_and(|(want, name)| name.to_lowercase().contains(&want.to_lowercase())),
            "scope" | "resourceType" => q[k.as_str()] == *v,
            "type" => q["types"].as_array().is_some_and(|t| t.contains(v)),
            _ => false,
        })
    };
    if let Some(k) = filter
        .keys()
        .find(|k| !["name", "scope", "resourceType", "type"].contains(&k.as_str()))
    {
        return Err(MethodError::new(
            "unsupportedFilter",
            format!("filter property {k} is not supported"),
        ));
    }
    let ids: Vec<&str> = quota
        .iter()
        .filter(|q| matches(q))
        .map(|_| MAIL_QUOTA)
        .collect();
    Ok(json!({
        "accountId": a.account.id, "queryState": state(j, a)?, "canCalculateChanges": false,
        "position": 0, "ids": ids, "total": ids.len(),
    }))
}
