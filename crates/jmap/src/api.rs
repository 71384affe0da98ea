//! The API endpoint: request validation and limits (RFC 8620 §3.3, §3.6.1), result references
//! (§3.7), and dispatch of each method call in order.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::methods::{self, MethodError};
use crate::{Authed, Jmap, MAX_CALLS_IN_REQUEST, problem};

pub(crate) const CORE: &str = "urn:ietf:params:jmap:core";
pub(crate) const MAIL: &str = "urn:ietf:params:jmap:mail";
pub(crate) const SUBMISSION: &str = "urn:ietf:params:jmap:submission";
pub(crate) const VACATION: &str = "urn:ietf:params:jmap:vacationresponse";
pub(crate) const QUOTA: &str = "urn:ietf:params:jmap:quota";
const KNOWN: [&str; 5] = [CORE, MAIL, SUBMISSION, VACATION, QUOTA];

/// The capability a method belongs to: the client must name it in `using`.
fn capability_of(method: &str) -> &'static str {
    match method.split_once('/').map_or(method, |(kind, _)| kind) {
        "Core" => CORE,
        "Identity" | "EmailSubmission" => SUBMISSION,
        "VacationResponse" => VACATION,
        "Quota" => QUOTA,
        _ => MAIL,
    }
}

/// A request's capabilities and method calls (name, arguments, call id), or the problem
/// response that refuses it (RFC 8620 §3.6.1).
#[allow(clippy::result_large_err)] // The refusal is the finished response, built once.
pub(crate) fn parse_request(
    body: &[u8],
) -> Result<(Vec<&'static str>, Vec<(String, Map<String, Value>, String)>), Response> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "notJSON",
            "the request body is not JSON",
        ));
    };
    let not_request = |why: &str| problem(StatusCode::BAD_REQUEST, "notRequest", why);
    let Some(obj) = request.as_object() else {
        return Err(not_request("the request is not a JSON object"));
    };
    let Some(using) = obj.get("using").and_then(Value::as_array) else {
        return Err(not_request("\"using\" must be an array of capability URIs"));
    };
    let mut using_caps = Vec::new();
    for u in using {
        let Some(u) = u.as_str() else {
            return Err(not_request("\"using\" must contain strings"));
        };
        if !KNOWN.contains(&u) {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "unknownCapability",
                &format!("unknown capability {u}"),
            ));
        }
        using_caps.push(KNOWN.iter().copied().find(|k| *k == u).unwrap_or(CORE));
    }
    let Some(calls) = obj.get("methodCalls").and_then(Value::as_array) else {
        return Err(not_request("\"methodCalls\" must be an array"));
    };
    if calls.len() > MAX_CALLS_IN_REQUEST {
        let body = json!({
            "type": "urn:ietf:params:jmap:error:limit", "status": 400, "limit": "maxCallsInRequest",
            "detail": format!("at most {MAX_CALLS_IN_REQUEST} method calls per request"),
        });
        let mut r = (StatusCode::BAD_REQUEST, Json(body)).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/problem+json"),
        );
        return Err(r);
    }
    let mut parsed = Vec::with_capacity(calls.len());
    for c in calls {
        match c.as_array().map(Vec::as_slice) {
            Some([Value::String(name), Value::Object(args), Value::String(id)]) => {
                parsed.push((name.clone(), args.clone(), id.clone()))
            }
            _ => {
                return Err(not_request(
                    "each method call is [name, arguments object, call id]",
                ));
            }
        }
    }

    Ok((using_caps, parsed))
}

/// Runs the argument readers a call would run, on nothing (for fuzzing).
pub(crate) fn check_arguments(name: &str, mut args: Map<String, Value>) {
    for v in args.values_mut() {
        substitute_creation_ids(v, &Map::new(), false);
    }
    if let Ok(args) = resolve_references(args, &[]) {
        methods::check_arguments(name, &args);
    }
}

pub(crate) fn handle(j: &Jmap, a: &Authed, body: &[u8]) -> Response {
    let (using_caps, parsed) = match parse_request(body) {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    let mut responses: Vec<Value> = Vec::new();
    // RFC 8620 §5.3: an object created earlier in the request can be named "#creationId".
    let mut created: Map<String, Value> = Map::new();
    for (name, mut args, call_id) in parsed {
        if !created.is_empty() {
            for v in args.values_mut() {
                substitute_creation_ids(v, &created, false);
            }
        }
        let result = resolve_references(args, &responses).and_then(|args| {
            let needs = capability_of(&name);
            if !using_caps.contains(&needs) {
                return Err(MethodError::new(
                    "unknownMethod",
                    format!("{name} needs {needs} in \"using\""),
                ));
            }
            methods::call(j, a, &name, &args)
        });
        match result {
            Ok((v, implicit)) => {
                for (cid, obj) in v
                    .get("created")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if let Some(id) = obj.get("id") {
                        created.insert(cid.clone(), id.clone());
                    }
                }
                responses.push(json!([name, v, call_id]));
                // RFC 8621 §7.5: onSuccessUpdateEmail answers with an implicit Email/set.
                if let Some((implicit_name, implicit_value)) = implicit {
                    responses.push(json!([implicit_name, implicit_value, call_id]));
                }
            }
            Err(e) => responses.push(json!(["error", e.to_json(), call_id])),
        }
    }
    let state = methods::session_state(j, a).unwrap_or_default();
    Json(json!({"methodResponses": responses, "sessionState": state})).into_response()
}

/// Replaces every `#name` argument by the value its ResultReference points at.
/// Replaces "#creationId" by the id it was given: as a string value anywhere, as a key of a
/// `mailboxIds` map, and in a `mailboxIds/#creationId` patch path.
fn substitute_creation_ids(v: &mut Value, created: &Map<String, Value>, in_mailbox_ids: bool) {
    let lookup = |s: &str| {
        s.strip_prefix('#')
            .and_then(|c| created.get(c))
            .and_then(Value::as_str)
    };
    match v {
        Value::String(s) => {
            if let Some(id) = lookup(s) {
                *s = id.to_owned();
            }
        }
        Value::Array(items) => {
            for item in items {
                substitute_creation_ids(item, created, false);
            }
        }
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut val) in old {
                let key = match k.split_once('/') {
                    Some(("mailboxIds", rest)) => lookup(rest).map(|id| format!("mailboxIds/{id}")),
                    _ if in_mailbox_ids => lookup(&k).map(str::to_owned),
                    _ => None,
                };
                substitute_creation_ids(&mut val, created, k == "mailboxIds");
                map.insert(key.unwrap_or(k), val);
            }
        }
        _ => {}
    }
}

fn resolve_references(
    args: Map<String, Value>,
    responses: &[Value],
) -> Result<Map<String, Value>, MethodError> {
    let mut out = Map::new();
    for (k, v) in args {
        let Some(plain) = k.strip_prefix('#') else {
            out.insert(k, v);
            continue;
        };
        let bad = |why: &str| MethodError::new("invalidResultReference", why.to_owned());
        if out.contains_key(plain) {
            return Err(MethodError::new(
                "invalidArguments",
                format!("both {plain} and #{plain} given"),
            ));
        }
        let (Some(result_of), Some(name), Some(path)) = (
            v.get("resultOf").and_then(Value::as_str),
            v.get("name").and_then(Value::as_str),
            v.get("path").and_then(Value::as_str),
        ) else {
            return Err(bad("a ResultReference needs resultOf, name and path"));
        };
        let source = responses
            .iter()
            .find(|r| r.get(2).and_then(Value::as_str) == Some(result_of))
            .ok_or_else(|| bad("no earlier call has that id"))?;
        if source.get(0).and_then(Value::as_str) != Some(name) {
            return Err(bad("the referenced call's response has another name"));
        }
        let value = source
            .get(1)
            .and_then(|r| pointer(r, path))
            .ok_or_else(|| bad("the path matches nothing"))?;
        out.insert(plain.to_owned(), value);
    }
    Ok(out)
}

/// JSON Pointer (RFC 6901) with JMAP's `*` wildcard over arrays (RFC 8620 §3.7): the results
/// of the rest of the path for every item, with arrays flattened one level.
fn pointer(v: &Value, path: &str) -> Option<Value> {
    let Some(rest) = path.strip_prefix('/') else {
        return if path.is_empty() {
            Some(v.clone())
        } else {
            None
        };
    };
    let (token, tail) = match rest.split_once('/') {
        Some((t, tail)) => (t, format!("/{tail}")),
        None => (rest, String::new()),
    };
    let token = token.replace("~1", "/").replace("~0", "~");
    if token == "*" {
        let items = v.as_array()?;
        let mut out = Vec::new();
        for item in items {
            match pointer(item, &tail)? {
                Value::Array(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        return Some(Value::Array(out));
    }
    let next = match v {
        Value::Object(m) => m.get(&token)?,
        Value::Array(a) => a.get(token.parse::<usize>().ok()?)?,
        _ => return None,
    };
    pointer(next, &tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_with_wildcards() {
        let v = json!({"list": [{"threadId": "t1", "emailIds": ["a", "b"]}, {"threadId": "t2", "emailIds": ["c"]}], "ids": ["x"]});
        assert_eq!(pointer(&v, "/ids"), Some(json!(["x"])));
        assert_eq!(pointer(&v, "/list/*/threadId"), Some(json!(["t1", "t2"])));
        assert_eq!(
            pointer(&v, "/list/*/emailIds"),
            Some(json!(["a", "b", "c"]))
        );
        assert_eq!(pointer(&v, "/list/1/threadId"), Some(json!("t2")));
        assert_eq!(pointer(&v, "/nope"), None);
        assert_eq!(pointer(&v, "ids"), None);
    }
}
