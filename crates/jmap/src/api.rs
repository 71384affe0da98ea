//! The API endpoint: request validation and limits (RFC 8620 §3.3, §3.6.1), result references
//! (§3.7), and dispatch of each method call in order.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::limits::{Limits, append_within, size_within};
use crate::methods::{self, MethodError};
use crate::{Authed, Jmap, MAX_CALLS_IN_REQUEST, limit_problem, problem};

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
        return Err(limit_problem(
            "maxCallsInRequest",
            &format!("at most {MAX_CALLS_IN_REQUEST} method calls per request"),
        ));
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
    if let Ok(args) = resolve_references(args, &[], Limits::default().reference_bytes) {
        methods::check_arguments(name, &args);
    }
}

pub(crate) fn handle(j: &Jmap, a: &Authed, body: &[u8]) -> Response {
    let (using_caps, parsed) = match parse_request(body) {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    let mut responses = Responses::new(j.limits);
    // RFC 8620 §5.3: an object created earlier in the request can be named "#creationId".
    let mut created: Map<String, Value> = Map::new();
    for (name, mut args, call_id) in parsed {
        if !created.is_empty() {
            for v in args.values_mut() {
                substitute_creation_ids(v, &created, false);
            }
        }
        let result = resolve_references(args, &responses.values, j.limits.reference_bytes)
            .and_then(|args| {
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
                responses.push(name, v, &call_id);
                // RFC 8621 §7.5: onSuccessUpdateEmail answers with an implicit Email/set.
                if let Some((implicit_name, implicit_value)) = implicit {
                    responses.push(implicit_name, implicit_value, &call_id);
                }
            }
            Err(e) => responses.push_error(&e, &call_id),
        }
    }
    let state = methods::session_state(j, a).unwrap_or_default();
    responses.finish(&state)
}

/// The method responses of a request so far: as values, for the result references of later
/// calls, and as the response body's text, written once as each call is answered (which is
/// how its size is known without serialising anything twice).
struct Responses {
    values: Vec<Value>,
    body: Vec<u8>,
    limits: Limits,
}

impl Responses {
    const START: &[u8] = b"{\"methodResponses\":[";

    fn new(limits: Limits) -> Self {
        Self {
            values: Vec::new(),
            body: Self::START.to_vec(),
            limits,
        }
    }

    fn separate(&mut self) {
        if self.body.len() > Self::START.len() {
            self.body.push(b',');
        }
    }

    /// Adds a method's response, or, if it would make the call's response larger than
    /// `method_response` or the whole response larger than `response`, a `requestTooLarge`
    /// error in its place: the client learns to ask for less, not to try again as is.
    fn push(&mut self, name: String, args: Value, call_id: &str) {
        let mark = self.body.len();
        self.separate();
        let room = self
            .limits
            .method_response
            .min(self.limits.response.saturating_sub(self.body.len()));
        let item = json!([name, args, call_id]);
        if append_within(&item, &mut self.body, room) {
            self.values.push(item);
            return;
        }
        self.body.truncate(mark);
        let (method, total) = (self.limits.method_response, self.limits.response);
        let why = if room == self.limits.method_response {
            format!(
                "the response to this call would exceed {method} bytes; ask for fewer objects or properties"
            )
        } else {
            format!(
                "the responses to this request would exceed {total} bytes; send this call in another request"
            )
        };
        self.push_error(&MethodError::new("requestTooLarge", why), call_id);
    }

    /// Adds a method-level error. Errors are not held to the size limits: each is a short
    /// description and the call's own id, so they add at most about the request's size.
    fn push_error(&mut self, e: &MethodError, call_id: &str) {
        self.separate();
        let item = json!(["error", e.to_json(), call_id]);
        if serde_json::to_writer(&mut self.body, &item).is_ok() {
            self.values.push(item);
        }
    }

    /// The response body (RFC 8620 §3.4).
    fn finish(mut self, session_state: &str) -> Response {
        self.body.extend_from_slice(b"],\"sessionState\":");
        if serde_json::to_writer(&mut self.body, session_state).is_err() {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "serverFail",
                "internal error",
            );
        }
        self.body.push(b'}');
        (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            self.body,
        )
            .into_response()
    }
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

/// Replaces every `#name` argument by the value its ResultReference points at (RFC 8620
/// §3.7). The references of one call copy at most `budget` bytes between them: without a bound,
/// a chain of calls each copying earlier responses several times over grows the response
/// exponentially from a request of a few kilobytes.
fn resolve_references(
    args: Map<String, Value>,
    responses: &[Value],
    budget: usize,
) -> Result<Map<String, Value>, MethodError> {
    let mut out = Map::new();
    let mut copied = 0;
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
        if path.is_empty() {
            // "" would name the whole response, which is never an argument of another call.
            return Err(bad(
                "the path must point into the result (a JSON Pointer starting with /)",
            ));
        }
        let source = responses
            .iter()
            .find(|r| r.get(2).and_then(Value::as_str) == Some(result_of))
            .ok_or_else(|| bad("no earlier call has that id"))?;
        if source.get(0).and_then(Value::as_str) != Some(name) {
            return Err(bad("the referenced call's response has another name"));
        }
        let found = source
            .get(1)
            .and_then(|r| pointer(r, path))
            .ok_or_else(|| bad("the path matches nothing"))?;
        // Measured before it is copied, and only as far as the budget goes.
        copied += size_within(&found, budget - copied).ok_or_else(|| {
            MethodError::new(
                "invalidResultReference",
                format!("the references of one call may copy at most {budget} bytes"),
            )
        })?;
        out.insert(plain.to_owned(), found.to_value());
    }
    Ok(out)
}

/// What a path points at: one value, or (through a `*`) the list of values it collects.
#[derive(Debug, PartialEq)]
enum Found<'a> {
    One(&'a Value),
    Many(Vec<&'a Value>),
}

impl Found<'_> {
    fn to_value(&self) -> Value {
        match self {
            Found::One(v) => (*v).clone(),
            Found::Many(items) => Value::Array(items.iter().map(|v| (*v).clone()).collect()),
        }
    }
}

impl serde::Serialize for Found<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Found::One(v) => v.serialize(s),
            Found::Many(items) => items.serialize(s),
        }
    }
}

/// JSON Pointer (RFC 6901) with JMAP's `*` wildcard over arrays (RFC 8620 §3.7): the results
/// of the rest of the path for every item, with arrays flattened one level. Nothing is copied:
/// the caller measures what was found before it copies it.
fn pointer<'a>(v: &'a Value, path: &str) -> Option<Found<'a>> {
    let Some(rest) = path.strip_prefix('/') else {
        return path.is_empty().then_some(Found::One(v));
    };
    let (token, tail) = rest
        .split_once('/')
        .map_or((rest, ""), |(t, _)| (t, &rest[t.len()..]));
    let token = token.replace("~1", "/").replace("~0", "~");
    if token == "*" {
        let items = v.as_array()?;
        let mut out = Vec::new();
        for item in items {
            match pointer(item, tail)? {
                Found::One(Value::Array(inner)) => out.extend(inner),
                Found::One(other) => out.push(other),
                Found::Many(inner) => out.extend(inner),
            }
        }
        return Some(Found::Many(out));
    }
    let next = match v {
        Value::Object(m) => m.get(&token)?,
        Value::Array(a) => a.get(token.parse::<usize>().ok()?)?,
        _ => return None,
    };
    pointer(next, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_with_wildcards() {
        let v = json!({"list": [{"threadId": "t1", "emailIds": ["a", "b"]}, {"threadId": "t2", "emailIds": ["c"]}], "ids": ["x"], "": {"k": 1}});
        let at = |path| pointer(&v, path).map(|f| f.to_value());
        assert_eq!(at("/ids"), Some(json!(["x"])));
        assert_eq!(at("/list/*/threadId"), Some(json!(["t1", "t2"])));
        assert_eq!(at("/list/*/emailIds"), Some(json!(["a", "b", "c"])));
        assert_eq!(at("/list/1/threadId"), Some(json!("t2")));
        assert_eq!(
            at("/"),
            Some(json!({"k": 1})),
            "\"/\" is the member named \"\""
        );
        assert_eq!(at("/nope"), None);
        assert_eq!(at("ids"), None);
    }

    #[test]
    fn a_reference_to_the_whole_response_is_refused() {
        let responses = [json!(["Core/echo", {"a": 1}, "c0"])];
        let args = |path: &str| {
            let mut m = Map::new();
            m.insert(
                "#x".into(),
                json!({"resultOf": "c0", "name": "Core/echo", "path": path}),
            );
            m
        };
        let e = resolve_references(args(""), &responses, 1000).unwrap_err();
        assert_eq!(e.to_json()["type"], "invalidResultReference");
        let ok = resolve_references(args("/a"), &responses, 1000).unwrap();
        assert_eq!(ok["x"], 1);
    }

    #[test]
    fn the_references_of_one_call_copy_at_most_the_budget() {
        let responses = [json!(["Core/echo", {"a": "x".repeat(100)}, "c0"])];
        let one = size_within(&json!("x".repeat(100)), usize::MAX).unwrap();
        let refs = |n: usize| {
            (0..n)
                .map(|i| {
                    (
                        format!("#k{i}"),
                        json!({"resultOf": "c0", "name": "Core/echo", "path": "/a"}),
                    )
                })
                .collect::<Map<_, _>>()
        };
        assert!(resolve_references(refs(3), &responses, 3 * one).is_ok());
        let e = resolve_references(refs(4), &responses, 3 * one).unwrap_err();
        assert_eq!(e.to_json()["type"], "invalidResultReference");
    }
}
