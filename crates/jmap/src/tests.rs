//! The JMAP service end to end in one process: a real gate (keys, a minted token, the ledger)
//! over an in-memory store, requests through the router. Here: the limits of what one request
//! and one account may make the server do, and that a panicking handler still answers.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use keys::{Algorithm, Custody, Kek, KeyPolicy};
use serde_json::{Value, json};
use store::{
    Account, AccountId, Client, ClientId, FsBlobStore, Realm, RealmId, RealmKind, Role,
    SqliteStore, Store,
};
use tower::ServiceExt;

use super::*;
use crate::limits::{Endpoint, Limits};

const URL: &str = "https://keypost.test";

pub(crate) struct Fx {
    pub(crate) jmap: Arc<Jmap>,
    pub(crate) token: String,
    pub(crate) account: AccountId,
    dir: std::path::PathBuf,
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Alice of contoso with a mail token, and JMAP over her store; `limits` for the request
/// limits (the defaults when `None`).
pub(crate) fn fx(name: &str, limits: Option<Limits>) -> Fx {
    let t = now();
    let dir = std::env::temp_dir().join(format!("keypost-jmap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let realm = RealmId::new("contoso").unwrap();
    store
        .create_realm(&Realm {
            id: realm.clone(),
            kind: RealmKind::Tenant,
            display_name: "Contoso".into(),
            domains: vec![],
            access_token_alg: "EdDSA".into(),
            created_at: t,
        })
        .unwrap();
    store
        .create_client(&Client {
            realm: realm.clone(),
            client_id: ClientId::new("app").unwrap(),
            name: "app".into(),
            secret_hash: None,
            redirect_uris: vec![],
            grant_types: vec![],
            first_party: false,
            id_token_alg: None,
            created_at: t,
            scopes: None,
        })
        .unwrap();
    let account = AccountId::new("u-alice").unwrap();
    store
        .create_account(&Account {
            id: account.clone(),
            realm: realm.clone(),
            email: "alice@contoso.test".into(),
            display_name: "Alice".into(),
            password_hash: "x".into(),
            must_change_password: false,
            credential_epoch: 0,
            disabled: false,
            role: Role::User,
            created_at: t,
        })
        .unwrap();
    let custody = Arc::new(Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    ));
    custody.ensure(&realm, t).unwrap();
    let minter = tokens::Minter::new(Arc::new(custody.signer()), store.clone(), URL);
    let issued = minter
        .mint(
            &tokens::MintRequest {
                realm: realm.clone(),
                access_alg: Algorithm::EdDSA,
                subject: account.as_str().into(),
                client_id: ClientId::new("app").unwrap(),
                scope: "mail".into(),
                audience: vec![format!("{URL}/mail")],
                session: None,
                access_ttl: 600,
                id_token: None,
                refresh: None,
                family: None,
                rotates: None,
            },
            t,
        )
        .unwrap();
    let gate = Arc::new(Gate::new(store.clone(), custody, URL, 600, 60));
    let blobs = Arc::new(FsBlobStore::open(&dir.join("blobs")).unwrap());
    let mail = Mail::new(store.clone(), blobs);
    let mut jmap = Jmap::new(gate, mail, store, URL);
    if let Some(limits) = limits {
        jmap.limits = limits;
    }
    Fx {
        jmap: Arc::new(jmap),
        token: issued.access_token,
        account,
        dir,
    }
}

impl Fx {
    /// POSTs `body` to `path` as Alice; the status and the body's bytes.
    pub(crate) async fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let request = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Body::from(body))
            .unwrap();
        let r = router(self.jmap.clone()).oneshot(request).await.unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    /// Runs method calls; the status and the raw response body.
    pub(crate) async fn api_raw(&self, calls: Value) -> (StatusCode, Vec<u8>) {
        let body = json!({"using": [api::CORE, api::MAIL], "methodCalls": calls});
        self.post("/jmap/api", serde_json::to_vec(&body).unwrap())
            .await
    }

    /// Runs method calls that must be answered 200; the method responses.
    pub(crate) async fn api(&self, calls: Value) -> Vec<Value> {
        let (status, body) = self.api_raw(calls).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["methodResponses"].as_array().unwrap().clone()
    }

    /// Uploads `bytes`; the blob id.
    pub(crate) async fn upload(&self, bytes: &[u8]) -> String {
        let path = format!("/jmap/upload/{}/", self.account);
        let (status, body) = self.post(&path, bytes.to_vec()).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["blobId"].as_str().unwrap().to_owned()
    }
}

fn echo_ref(of: &str, path: &str) -> Value {
    json!({"resultOf": of, "name": "Core/echo", "path": path})
}

/// The request of the finding: each echo names the previous one's whole response twice, so
/// without a bound the response doubles with every call (these 15 calls of 3 KB made 33 MB;
/// 32 would not fit in memory).
#[tokio::test]
async fn echoes_copying_whole_responses_do_not_double() {
    let f = fx("doubling", None);
    let mut calls = vec![json!(["Core/echo", {"seed": "x".repeat(1000)}, "c0"])];
    for i in 1..15 {
        let prev = format!("c{}", i - 1);
        calls.push(json!(["Core/echo", {"#a": echo_ref(&prev, ""), "#b": echo_ref(&prev, "")}, format!("c{i}")]));
    }
    let (status, body) = f.api_raw(json!(calls)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() < 64 * 1024, "{} bytes", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    let out = v["methodResponses"].as_array().unwrap();
    assert_eq!(out.len(), 15, "every call is answered");
    assert_eq!(out[0][0], "Core/echo");
    assert_eq!(out[1][0], "error");
    assert_eq!(out[1][1]["type"], "invalidResultReference");
}

/// Paths into the result that pick whole objects ("/" is the member named "") copy no more
/// than the reference budget per call, so repeating them many times over is refused too.
#[tokio::test]
async fn references_into_the_result_copy_at_most_the_budget() {
    let f = fx("budget", None);
    // 64 KB that every later call names 40 times: 2.5 MB per call, 80 MB over 31 calls.
    let mut calls = vec![json!(["Core/echo", {"": {"blob": "x".repeat(64 * 1024)}}, "c0"])];
    for i in 1..32 {
        let args: serde_json::Map<String, Value> = (0..40)
            .map(|k| (format!("#k{k}"), echo_ref("c0", "/")))
            .collect();
        calls.push(json!(["Core/echo", args, format!("c{i}")]));
    }
    let out = f.api(json!(calls)).await;
    assert_eq!(out.len(), 32);
    for r in &out[1..] {
        assert_eq!(r[0], "error");
        assert_eq!(r[1]["type"], "invalidResultReference");
    }
    // Within the budget a reference copies as before.
    let out = f
        .api(json!([
            ["Core/echo", {"": {"k": "v"}, "ids": ["a", "b"]}, "c0"],
            ["Core/echo", {"#whole": echo_ref("c0", "/"), "#ids": echo_ref("c0", "/ids")}, "c1"],
        ]))
        .await;
    assert_eq!(
        out[1],
        json!(["Core/echo", {"whole": {"k": "v"}, "ids": ["a", "b"]}, "c1"])
    );
}

/// Calls each within the budget but together over the response limit: the calls that do
/// not fit are answered `requestTooLarge`, and the response stays within the limit.
#[tokio::test]
async fn the_whole_response_is_capped() {
    let limits = Limits {
        response: 100_000,
        ..Limits::default()
    };
    let f = fx("response-cap", Some(limits));
    let mut calls = vec![json!(["Core/echo", {"a": "x".repeat(30_000)}, "c0"])];
    for i in 1..10 {
        calls.push(json!(["Core/echo", {"#a": echo_ref("c0", "/a")}, format!("c{i}")]));
    }
    let (status, body) = f.api_raw(json!(calls)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() < 100_000 + 10 * 300, "{} bytes", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    let out = v["methodResponses"].as_array().unwrap();
    assert_eq!(out.len(), 10);
    let names: Vec<&str> = out.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(&names[..3], ["Core/echo"; 3]);
    assert!(names[3..].iter().all(|n| *n == "error"), "{names:?}");
    assert_eq!(out[9][1]["type"], "requestTooLarge");
    assert_eq!(out[9][2], "c9");
    assert!(v["sessionState"].is_string());
}

/// One call whose response would be over the per-call limit is answered `requestTooLarge`;
/// the calls around it are answered as usual.
#[tokio::test]
async fn one_method_response_is_capped() {
    let limits = Limits {
        method_response: 10_000,
        ..Limits::default()
    };
    let f = fx("method-cap", Some(limits));
    let out = f
        .api(json!([
            ["Core/echo", {"a": "x".repeat(20_000)}, "big"],
            ["Core/echo", {"a": 1}, "small"],
        ]))
        .await;
    assert_eq!(out[0][0], "error");
    assert_eq!(out[0][1]["type"], "requestTooLarge");
    assert_eq!(out[0][2], "big");
    assert_eq!(out[1], json!(["Core/echo", {"a": 1}, "small"]));
}

/// An account with `maxConcurrentRequests` requests running is refused the next one with
/// the RFC 8620 §3.6.1 `limit` problem, and served again once one finishes; uploads have their
/// own limit.
#[tokio::test]
async fn the_concurrency_limits_are_enforced() {
    let f = fx("concurrency", None);
    let held: Vec<_> = (0..MAX_CONCURRENT_REQUESTS)
        .map(|_| f.jmap.running.admit(&f.account, Endpoint::Api).unwrap())
        .collect();
    let (status, body) = f.api_raw(json!([["Core/echo", {}, "c"]])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "urn:ietf:params:jmap:error:limit");
    assert_eq!(v["limit"], "maxConcurrentRequests");
    // Uploads count on their own.
    let blob = f.upload(b"hello").await;
    assert_eq!(blob.len(), 64);
    drop(held);
    let out = f.api(json!([["Core/echo", {}, "c"]])).await;
    assert_eq!(out[0][0], "Core/echo");

    let held: Vec<_> = (0..MAX_CONCURRENT_UPLOAD)
        .map(|_| f.jmap.running.admit(&f.account, Endpoint::Upload).unwrap())
        .collect();
    let path = format!("/jmap/upload/{}/", f.account);
    let (status, body) = f.post(&path, b"hello".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["limit"], "maxConcurrentUpload");
    drop(held);
    assert!(
        f.jmap.running.admit(&f.account, Endpoint::Api).is_some(),
        "every permit was released"
    );
}

fn message(n: usize, body: &str) -> Vec<u8> {
    format!(
        "From: bob@fabrikam.test\r\nTo: alice@contoso.test\r\nSubject: m{n}\r\n\
         Message-ID: <{n}@fabrikam.test>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// Naming one blob many times parses it once; blobs that total more than the call's budget
/// are refused with `requestTooLarge`, not held in memory together.
#[tokio::test]
async fn email_parse_reads_each_blob_once_within_a_budget() {
    let limits = Limits {
        parse_bytes: 10_000,
        ..Limits::default()
    };
    let f = fx("parse", Some(limits));
    let big = f.upload(&message(1, &"y".repeat(6_000))).await;
    let other = f.upload(&message(2, &"z".repeat(6_000))).await;
    let parse = |ids: Vec<&str>| json!([["Email/parse", {"accountId": f.account, "blobIds": ids, "properties": ["subject"]}, "p"]]);
    // The same 6 KB blob 500 times: within a 10 KB budget, since it is read once.
    let out = f.api(parse(vec![big.as_str(); 500])).await;
    assert_eq!(out[0][0], "Email/parse", "{:?}", out[0]);
    let parsed = out[0][1]["parsed"].as_object().unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[&big]["subject"], "m1");
    let missing = "0".repeat(64);
    let out = f.api(parse(vec![&missing, &missing])).await;
    assert_eq!(out[0][1]["notFound"], json!([missing]), "each id once");
    // Two different 6 KB blobs: over the budget.
    let out = f.api(parse(vec![&big, &other])).await;
    assert_eq!(out[0][0], "error");
    assert_eq!(out[0][1]["type"], "requestTooLarge");
}

/// An upload that does not fit the account's quota, even with no other upload pending, is
/// refused with an `overQuota` problem; one that fits after the older uploads go is taken.
#[tokio::test]
async fn uploads_count_against_the_quota() {
    let f = fx("upload-quota", None);
    f.jmap
        .mail
        .set_quota(&f.account, store::QuotaSetting::Limit(1000))
        .unwrap();
    let path = format!("/jmap/upload/{}/", f.account);
    let first = f.upload(&[b'a'; 600]).await;
    let second = f.upload(&[b'b'; 600]).await;
    assert_ne!(first, second);
    let (status, body) = f.post(&path, vec![b'c'; 1001]).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "urn:ietf:params:jmap:error:overQuota");
    let parse = json!([["Email/parse", {"accountId": f.account, "blobIds": [first, second]}, "p"]]);
    let out = f.api(parse).await;
    assert_eq!(
        out[0][1]["notFound"],
        json!([first]),
        "the older upload made room"
    );
}

/// `Email/get` and `Email/parse` stop building a response that would not fit one method
/// response, instead of holding the whole list until the response's own check refuses it.
#[test]
fn long_email_lists_stop_at_the_method_response_limit() {
    let limits = Limits {
        method_response: 5000,
        ..Limits::default()
    };
    let f = fx("email-get-cap", Some(limits));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", f.token)).unwrap(),
    );
    let a = authenticate(&f.jmap, &headers, source_of(&f.jmap, &headers, None)).unwrap();
    let inbox = f.jmap.mail.mailbox_by_role(&f.account, "inbox").unwrap().id;
    let mut ids = Vec::new();
    let mut blobs = Vec::new();
    for n in 0..3 {
        let raw = message(n, &"z".repeat(3000));
        let d = f
            .jmap
            .mail
            .deliver(&f.account, &raw, &inbox, vec![], now())
            .unwrap();
        ids.push(d.id.to_string());
        blobs.push(d.blob_id.to_string());
    }
    let call = |name: &str, args: Value| {
        methods::call(&f.jmap, &a, name, args.as_object().unwrap()).map(|(v, _)| v)
    };
    let get = |max: u64| {
        json!({"accountId": f.account, "ids": ids, "properties": ["bodyValues"],
               "fetchAllBodyValues": true, "maxBodyValueBytes": max})
    };
    let e = call("Email/get", get(100_000)).unwrap_err();
    assert_eq!(e.to_json()["type"], "requestTooLarge");
    assert_eq!(
        call("Email/get", get(100)).unwrap()["list"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let parse = json!({"accountId": f.account, "blobIds": blobs, "fetchAllBodyValues": true});
    let e = call("Email/parse", parse).unwrap_err();
    assert_eq!(e.to_json()["type"], "requestTooLarge");
}

/// A bug that panics in a handler still gets the client an answer: a problem document.
#[tokio::test]
async fn a_panicking_handler_answers_a_problem_document() {
    async fn bug() -> StatusCode {
        panic!("a bug")
    }
    let routes = Router::new().route("/p", get(bug));
    let request = Request::get("/p").body(Body::empty()).unwrap();
    let r = guard_panics(routes).oneshot(request).await.unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], "urn:ietf:params:jmap:error:serverFail");
}
