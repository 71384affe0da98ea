//! Mailboxes: `Mailbox/get`, `Mailbox/set`, `Mailbox/query` and `Mailbox/queryChanges`.

use audit::Operation;
use serde_json::{Map, Value, json};
use store::MailboxId;

use super::{
    MResult, MethodError, ids_arg, null_if_empty, properties_arg, select, set_error, state,
};
use crate::{Authed, Jmap};

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

pub(super) fn get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
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

pub(super) fn set(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let old_state = super::if_in_state(j, a, args)?;
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
        a.record(ev);
    }
    Ok(json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null_if_empty(created), "updated": null_if_empty(updated), "destroyed": if destroyed.is_empty() { Value::Null } else { json!(destroyed) },
        "notCreated": null_if_empty(not_created), "notUpdated": null_if_empty(not_updated), "notDestroyed": null_if_empty(not_destroyed),
    }))
}

/// The mailbox ids a `Mailbox/query` selects, in its order (RFC 8621 §2.3).
fn query_ids(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> Result<Vec<String>, MethodError> {
    let mut boxes = j
        .mail
        .mailboxes(&a.account.id)
        .map_err(MethodError::server)?;
    let filter = match args.get("filter") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(f)) if !f.contains_key("operator") => f.clone(),
        Some(Value::Object(_)) => {
            return Err(MethodError::new(
                "unsupportedFilter",
                "Mailbox/query takes one FilterCondition".into(),
            ));
        }
        Some(_) => return Err(MethodError::invalid("filter must be an object")),
    };
    for k in filter.keys() {
        if !["parentId", "role", "hasAnyRole", "name", "isSubscribed"].contains(&k.as_str()) {
            return Err(MethodError::new(
                "unsupportedFilter",
                format!("filter property {k} is not supported"),
            ));
        }
    }
    boxes.retain(|m| {
        let parent_ok = match filter.get("parentId") {
            None => true,
            Some(Value::Null) => m.parent.is_none(),
            Some(p) => m.parent.as_ref().map(|x| x.as_str()) == p.as_str(),
        };
        parent_ok
            && filter
                .get("role")
                .is_none_or(|r| m.role.as_deref() == r.as_str())
            && filter
                .get("hasAnyRole")
                .and_then(Value::as_bool)
                .is_none_or(|h| m.role.is_some() == h)
            && filter
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(|n| m.name.to_lowercase().contains(&n.to_lowercase()))
            // Every mailbox is subscribed.
            && filter
                .get("isSubscribed")
                .and_then(Value::as_bool)
                .is_none_or(|s| s)
    });
    let mut keys: Vec<(&str, bool)> = Vec::new();
    for c in args
        .get("sort")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let property = c.get("property").and_then(Value::as_str).unwrap_or("");
        if !["sortOrder", "name"].contains(&property) {
            return Err(MethodError::new(
                "unsupportedSort",
                format!("cannot sort mailboxes by {property:?}"),
            ));
        }
        let ascending = c
            .get("isAscending")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        keys.push((property, ascending));
    }
    boxes.sort_by(|x, y| {
        let mut ord = std::cmp::Ordering::Equal;
        for (k, asc) in &keys {
            let o = if *k == "name" {
                x.name.to_lowercase().cmp(&y.name.to_lowercase())
            } else {
                x.sort_order.cmp(&y.sort_order)
            };
            ord = ord.then(if *asc { o } else { o.reverse() });
        }
        ord.then_with(|| x.id.as_str().cmp(y.id.as_str()))
    });
    Ok(boxes.into_iter().map(|m| m.id.to_string()).collect())
}

pub(super) fn query(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    super::list_query(j, a, query_ids(j, a, args)?)
}

pub(super) fn query_changes(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    super::list_query_changes(
        j,
        a,
        args,
        |since, max| j.mail.mailbox_changes(&a.account.id, since, max),
        || query_ids(j, a, args),
    )
}
