//! `Identity/get|set` (RFC 8621 §6): who the account sends as. Every identity carries the
//! account's own address; names, Reply-To/Bcc defaults and signatures are the user's to set.

use audit::Operation;
use serde_json::{Map, Value, json};
use store::{EmailAddress, Identity, IdentityId};

use super::{MResult, MethodError, null_if_empty, set_error, state};
use crate::{Authed, Jmap};

pub(super) fn identity_json(i: &Identity) -> Value {
    let addresses = |l: &Option<Vec<EmailAddress>>| {
        l.as_ref().map(|l| {
            l.iter()
                .map(|a| json!({"name": a.name, "email": a.email}))
                .collect::<Vec<_>>()
        })
    };
    json!({
        "id": i.id, "name": i.name, "email": i.email, "replyTo": addresses(&i.reply_to),
        "bcc": addresses(&i.bcc), "textSignature": i.text_signature,
        "htmlSignature": i.html_signature, "mayDelete": !i.is_primary,
    })
}

pub(super) fn get(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let all = j
        .mail
        .identities(&a.account.id)
        .map_err(MethodError::server)?;
    super::get_from(j, a, args, &all, |i| i.id.as_str(), identity_json)
}

fn invalid(property: &str, why: &str) -> Value {
    set_error("invalidProperties", why, &[property])
}

fn address_list(v: &Value, property: &str) -> Result<Option<Vec<EmailAddress>>, Value> {
    if v.is_null() {
        return Ok(None);
    }
    let list = v
        .as_array()
        .ok_or_else(|| invalid(property, "must be a list of addresses or null"))?;
    list.iter()
        .map(|x| {
            let email = x
                .get("email")
                .and_then(Value::as_str)
                .filter(|e| e.contains('@'))
                .ok_or_else(|| invalid(property, "each address needs an email"))?;
            Ok(EmailAddress {
                name: x.get("name").and_then(Value::as_str).map(str::to_owned),
                email: email.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Applies the settable properties of `spec` to `i`; `email` only when `creating`.
fn apply(i: &mut Identity, spec: &Map<String, Value>, creating: bool) -> Result<(), Value> {
    for (k, v) in spec {
        let text = || {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid(k, "must be a string"))
        };
        match k.as_str() {
            "name" => i.name = text()?,
            "email" if creating => i.email = text()?,
            "replyTo" => i.reply_to = address_list(v, k)?,
            "bcc" => i.bcc = address_list(v, k)?,
            "textSignature" => i.text_signature = text()?,
            "htmlSignature" => i.html_signature = text()?,
            "id" | "mayDelete" | "email" => {
                return Err(invalid(k, "this property cannot be changed"));
            }
            other => return Err(invalid(other, "unknown property")),
        }
    }
    Ok(())
}

pub(super) fn set(j: &Jmap, a: &Authed, args: &Map<String, Value>) -> MResult {
    let old_state = super::if_in_state(j, a, args)?;
    let acc = &a.account.id;
    let (mut created, mut not_created) = (Map::new(), Map::new());
    let (mut updated, mut not_updated) = (Map::new(), Map::new());
    let (mut destroyed, mut not_destroyed) = (Vec::new(), Map::new());
    let existing = j.mail.identities(acc).map_err(MethodError::server)?;
    let primary = existing.iter().find(|i| i.is_primary).cloned();
    for (cid, spec) in args
        .get("create")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(primary) = &primary else { break };
        let mut i = Identity {
            is_primary: false,
            text_signature: String::new(),
            html_signature: String::new(),
            reply_to: None,
            bcc: None,
            ..primary.clone()
        };
        let result = spec
            .as_object()
            .ok_or_else(|| invalid("", "an identity is an object"))
            .and_then(|spec| apply(&mut i, spec, true))
            .and_then(|()| match j.mail.create_identity(i) {
                Ok(i) => Ok(i),
                Err(mail::Error::Invalid(why)) => Err(set_error("forbiddenFrom", &why, &["email"])),
                Err(e) => Err(set_error("serverFail", &e.to_string(), &[])),
            });
        match result {
            Ok(i) => {
                created.insert(cid.clone(), json!({"id": i.id, "mayDelete": true}));
            }
            Err(e) => {
                not_created.insert(cid.clone(), e);
            }
        }
    }
    for (id, spec) in args
        .get("update")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(mut i) = existing.iter().find(|i| i.id.as_str() == id).cloned() else {
            not_updated.insert(id.clone(), set_error("notFound", "no such identity", &[]));
            continue;
        };
        let result = spec
            .as_object()
            .ok_or_else(|| set_error("invalidPatch", "a patch is an object", &[]))
            .and_then(|spec| apply(&mut i, spec, false))
            .and_then(|()| {
                j.mail
                    .update_identity(&i)
                    .map_err(|e| set_error("serverFail", &e.to_string(), &[]))
            });
        match result {
            Ok(()) => {
                updated.insert(id.clone(), Value::Null);
            }
            Err(e) => {
                not_updated.insert(id.clone(), e);
            }
        }
    }
    for id in args
        .get("destroy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        match existing.iter().find(|i| i.id.as_str() == id) {
            None => {
                not_destroyed.insert(
                    id.to_owned(),
                    set_error("notFound", "no such identity", &[]),
                );
            }
            Some(i) if i.is_primary => {
                not_destroyed.insert(
                    id.to_owned(),
                    set_error(
                        "forbidden",
                        "the account's own identity cannot be destroyed",
                        &[],
                    ),
                );
            }
            Some(i) => {
                let id_ = IdentityId::clone(&i.id);
                j.mail
                    .destroy_identity(acc, &id_)
                    .map_err(MethodError::server)?;
                destroyed.push(id.to_owned());
            }
        }
    }
    if !created.is_empty() || !updated.is_empty() || !destroyed.is_empty() {
        let ev = a
            .event(Operation::SettingsChanged)
            .detail("operation", "Identity/set")
            .detail(
                "created",
                created
                    .values()
                    .filter_map(|v| v.get("id").cloned())
                    .collect::<Vec<_>>(),
            )
            .detail("updated", updated.keys().cloned().collect::<Vec<_>>())
            .detail("destroyed", destroyed.clone());
        a.record(ev);
    }
    Ok(json!({
        "accountId": a.account.id, "oldState": old_state, "newState": state(j, a)?,
        "created": null_if_empty(created), "updated": null_if_empty(updated),
        "destroyed": if destroyed.is_empty() { Value::Null } else { json!(destroyed) },
        "notCreated": null_if_empty(not_created), "notUpdated": null_if_empty(not_updated),
        "notDestroyed": null_if_empty(not_destroyed),
    }))
}
