//! The signer over its Unix socket: signs for a realm with that realm's active key only, as
//! the in-process signer does, and the client recovers from a restarted signer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keys::{Algorithm, Custody, Error, Kek, KeyPolicy, RemoteSigner, SignService};
use store::{KeyPurpose, Realm, RealmId, RealmKind, SqliteStore, Store};

fn now() -> i64 {
    store::clock::now()
}

fn realm(store: &Arc<dyn Store>, id: &str) -> RealmId {
    let r = RealmId::new(id).unwrap();
    store
        .create_realm(&Realm {
            id: r.clone(),
            kind: RealmKind::Tenant,
            display_name: id.into(),
            domains: vec![],
            access_token_alg: "EdDSA".into(),
            created_at: 0,
        })
        .unwrap();
    r
}

/// An in-memory store with the realm `id` holding an active key, and its custody.
fn custody_with_a_key(id: &str) -> (Arc<dyn Store>, RealmId, Custody) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let r = realm(&store, id);
    let custody = Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    );
    custody.ensure(&r, now()).unwrap();
    (store, r, custody)
}

/// What the signer process answers with; the token claims check is the binary's (tested in
/// `tokens`): here it refuses only payloads of `{"forbidden": ...}`, to see a refusal through.
fn service(signer: Arc<keys::Signer>, hook: keys::RefusalHook) -> keys::SignerService {
    let forbidden = B64.encode("{\"forbidden\":true}");
    keys::SignerService {
        signer,
        check: Arc::new(move |_, _, _, payload, _| {
            if payload == forbidden {
                Err(keys::PAYLOAD_REFUSALS[0])
            } else {
                Ok(())
            }
        }),
        on_refused: hook,
    }
}

/// A fresh directory for a test's socket.
fn socket_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keypost-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn signs_over_the_socket_with_the_realms_own_key_only() {
    let (store, contoso, custody) = custody_with_a_key("contoso");
    let keyless = realm(&store, "keyless");
    let dir = socket_dir("signer-test");
    let path = dir.join("signer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let signer = Arc::new(custody.signer());
    let refused: Arc<Mutex<Vec<keys::Refusal>>> = Arc::default();
    let hook: keys::RefusalHook = {
        let refused = refused.clone();
        Arc::new(move |r: &keys::Refusal| refused.lock().unwrap().push(r.clone()))
    };
    std::thread::spawn(move || keys::serve_signer(listener, service(signer, hook)));

    let client = RemoteSigner::new(&path);
    assert!(client.ping());
    let payload = B64.encode(br#"{"sub":"x"}"#);
    let (key, input, sig) = client
        .sign_jws(
            &contoso,
            KeyPurpose::AccessToken,
            Algorithm::EdDSA,
            "at+jwt",
            &payload,
            0,
        )
        .unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(input.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["kid"], key.kid.as_str());
    assert_eq!(header["typ"], "at+jwt");
    let verifying = custody.verifying_keys().unwrap();
    let vk = verifying.in_realm(&contoso, key.kid.as_str()).unwrap();
    assert!(
        vk.verify(input.as_bytes(), &sig.0),
        "a signature of what was asked, by the named key"
    );

    // A payload the signer's policy refuses is not signed, and the refusal is reported with
    // its reason.
    let refused_payload = B64.encode("{\"forbidden\":true}");
    let answer = client.sign_jws(
        &contoso,
        KeyPurpose::AccessToken,
        Algorithm::EdDSA,
        "at+jwt",
        &refused_payload,
        0,
    );
    assert!(
        matches!(answer, Err(Error::Refused(why)) if why == keys::PAYLOAD_REFUSALS[0]),
        "{answer:?}"
    );
    assert!(
        refused
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.reason == keys::PAYLOAD_REFUSALS[0] && r.realm == "contoso")
    );

    // The audit key never signs over the socket: a compromised web process cannot forge a
    // checkpoint or a tombstone.
    assert!(matches!(
        client.sign_raw(
            &contoso,
            KeyPurpose::Audit,
            Algorithm::EdDSA,
            b"checkpoint",
            0
        ),
        Err(Error::Refused(_))
    ));
    assert!(matches!(
        client.sign_jws(
            &contoso,
            KeyPurpose::Audit,
            Algorithm::EdDSA,
            "JWT",
            &payload,
            0
        ),
        Err(Error::Refused(_))
    ));

    assert!(matches!(
        client.sign_jws(
            &keyless,
            KeyPurpose::AccessToken,
            Algorithm::EdDSA,
            "at+jwt",
            &payload,
            0
        ),
        Err(Error::NoActiveKey { .. })
    ));

    // The refused payload and both audit-key asks reached the refusal hook (which the signer
    // process audits); the realm without a key is not a refusal, and neither was the signed
    // request.
    let refused = refused.lock().unwrap();
    let seen: Vec<(&str, &str, &str)> = refused
        .iter()
        .map(|r| (r.op, r.purpose.as_str(), r.reason))
        .collect();
    assert_eq!(
        seen,
        [
            ("jws", "access-token", keys::PAYLOAD_REFUSALS[0]),
            ("raw", "audit", "raw signing is not offered over the socket"),
            ("jws", "audit", "key is for another purpose"),
        ]
    );
    assert!(refused.iter().all(|r| r.realm == "contoso"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_absent_signer_is_unavailable_not_a_panic() {
    let client = RemoteSigner::new(std::path::Path::new("/nonexistent/keypost/signer.sock"));
    assert!(!client.ping());
    let r = RealmId::new("contoso").unwrap();
    assert!(matches!(
        client.sign_raw(&r, KeyPurpose::Audit, Algorithm::EdDSA, b"x", 0),
        Err(Error::Unavailable(_))
    ));
}

/// Async callers share one pipelined connection: many requests in flight at once each get
/// their own answer (an answer matched to the wrong request is refused by the client, so a
/// mix-up fails here), and a signer that dies with requests in flight costs them one retry on
/// a fresh connection, not an error.
#[test]
fn concurrent_async_requests_get_their_own_answers_and_survive_a_restart() {
    let (_, contoso, custody) = custody_with_a_key("contoso");
    let dir = socket_dir("signer-pipe");
    let path = dir.join("signer.sock");
    let signer = Arc::new(custody.signer());
    let no_hook: keys::RefusalHook = Arc::new(|_: &keys::Refusal| {});

    // The first "signer" takes one request and dies without answering, but only once its
    // successor listens at the same path (so the client's retry has somewhere to go).
    let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let successor = {
        let (path, signer, hook) = (path.clone(), signer.clone(), no_hook.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let (conn, _) = first.accept().unwrap();
            let mut request = [0; 4];
            (&conn).read_exact(&mut request).unwrap();
            drop(first);
            std::fs::remove_file(&path).unwrap();
            let next = std::os::unix::net::UnixListener::bind(&path).unwrap();
            std::thread::spawn(move || keys::serve_signer(next, service(signer, hook)));
            drop(conn);
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = Arc::new(RemoteSigner::new(&path));
    let sign = |client: Arc<RemoteSigner>, realm: RealmId, i: usize| async move {
        let payload = B64.encode(format!(r#"{{"n":{i}}}"#));
        let (key, input, sig) = client
            .sign_jws_async(
                &realm,
                KeyPurpose::AccessToken,
                Algorithm::EdDSA,
                "at+jwt",
                &payload,
                0,
            )
            .await
            .unwrap();
        assert!(input.ends_with(&format!(".{payload}")));
        (key, input, sig)
    };
    let many = |from: usize, to: usize| {
        rt.block_on(async {
            let tasks: Vec<_> = (from..to)
                .map(|i| tokio::spawn(sign(client.clone(), contoso.clone(), i)))
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.unwrap());
            }
            all
        })
    };
    // Forty requests race the first signer's death: whatever was in flight or queued when the
    // pipe closed is retried on the one fresh connection.
    let mut signed = many(0, 40);
    successor.join().unwrap();
    signed.extend(many(40, 340));
    let verifying = custody.verifying_keys().unwrap();
    for (i, (key, input, sig)) in signed.iter().enumerate() {
        let vk = verifying.in_realm(&contoso, key.kid.as_str()).unwrap();
        assert!(vk.verify(input.as_bytes(), &sig.0), "signature {i}");
        let payload = input.split('.').nth(1).unwrap();
        assert_eq!(
            B64.decode(payload).unwrap(),
            format!(r#"{{"n":{i}}}"#).as_bytes()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A frame of the signer protocol, built by hand from the format `keys::wire` documents (an
/// independent encoder, so the test also pins the wire format): `length:u32be body`, where a
/// body is an operation byte and u8-length-prefixed strings, then the rest.
fn frame(op: u8, fields: &[&str], rest: &[u8]) -> Vec<u8> {
    let mut body = vec![op];
    for f in fields {
        body.push(u8::try_from(f.len()).unwrap());
        body.extend_from_slice(f.as_bytes());
    }
    body.extend_from_slice(rest);
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

/// The signer answers pipelined requests in the order they came, all of them, even when
/// they arrive in one write; a request it cannot read gets a failure in its place, and a
/// frame too long to be a request ends the connection after a last failure.
#[test]
fn pipelined_requests_are_answered_in_order() {
    use std::io::{Read, Write};
    let (_, contoso, custody) = custody_with_a_key("contoso");
    let dir = socket_dir("signer-order");
    let path = dir.join("signer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let signer = Arc::new(custody.signer());
    let refused: Arc<Mutex<Vec<keys::Refusal>>> = Arc::default();
    let hook: keys::RefusalHook = {
        let refused = refused.clone();
        Arc::new(move |r: &keys::Refusal| refused.lock().unwrap().push(r.clone()))
    };
    std::thread::spawn(move || keys::serve_signer(listener, service(signer, hook)));
    let mut ours = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let payload = |n: u32| B64.encode(format!("{{\"n\":{n}}}"));
    let jws = |n: u32| {
        frame(
            0x01,
            &["contoso", "access-token", "EdDSA", "at+jwt"],
            payload(n).as_bytes(),
        )
    };
    let mut batch = jws(1);
    batch.extend(frame(0x03, &[], b"")); // ping
    batch.extend(frame(0x7f, &["what"], b"")); // no such operation
    batch.extend(jws(2));
    batch.extend((1u32 << 20).to_be_bytes()); // a megabyte announced
    batch.extend([0; 64]);
    ours.write_all(&batch).unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();

    let mut answers = Vec::new();
    ours.read_to_end(&mut answers).unwrap();
    let mut answers = &answers[..];
    let mut next = || {
        let len = u32::from_be_bytes(answers[..4].try_into().unwrap()) as usize;
        let body = answers[4..4 + len].to_vec();
        answers = &answers[4 + len..];
        body
    };
    let verifying = custody.verifying_keys().unwrap();
    let signed = |body: Vec<u8>, n: u32| {
        assert_eq!(body[0], 0x00, "signed");
        let mut at = 1;
        let mut short = || {
            let len = usize::from(body[at]);
            at += 1 + len;
            String::from_utf8(body[at - len..at].to_vec()).unwrap()
        };
        let (kid, alg) = (short(), short());
        assert_eq!(alg, "EdDSA");
        let len = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
        let header = std::str::from_utf8(&body[at + 2..at + 2 + len]).unwrap();
        let signature = &body[at + 2 + len..];
        let fields: serde_json::Value =
            serde_json::from_slice(&B64.decode(header).unwrap()).unwrap();
        assert_eq!(fields["kid"], kid.as_str());
        // What was signed: the header's own bytes, a dot, the payload asked for.
        let input = format!("{header}.{}", payload(n));
        let vk = verifying.in_realm(&contoso, &kid).unwrap();
        assert!(vk.verify(input.as_bytes(), signature), "answer {n}");
    };
    signed(next(), 1);
    assert_eq!(next(), [0x01], "pong");
    assert_eq!(next(), b"\x04bad message", "failed, in its place");
    signed(next(), 2);
    assert_eq!(next(), b"\x04bad message", "the oversized frame");
    assert!(answers.is_empty(), "and the connection closed");
    let reasons: Vec<_> = refused.lock().unwrap().iter().map(|r| r.op).collect();
    assert_eq!(reasons, ["malformed", "malformed"], "both audited");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The client takes nothing from the signer at face value: a header other than the one it
/// would write itself for the key named (it would be joined into the token as is), an answer
/// of no known kind, and a frame past the size limit all fail the signature; none becomes a
/// token — over the blocking client and over the pipelined one `serve` uses.
#[test]
fn a_signer_answering_nonsense_yields_no_token() {
    signer_answering_nonsense("signer-nonsense", |client, sign| sign(client));
}

#[test]
fn a_signer_answering_nonsense_yields_no_token_over_the_pipe() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    signer_answering_nonsense("signer-nonsense-pipe", |client, _| {
        rt.block_on(client.sign_jws_async(
            &RealmId::new("contoso").unwrap(),
            KeyPurpose::AccessToken,
            Algorithm::EdDSA,
            "at+jwt",
            &B64.encode(br#"{"sub":"x"}"#),
            0,
        ))
    });
}

type Signed = keys::Result<(keys::SigningKey, String, keys::Signature)>;

/// A fake signer giving one nonsensical answer per request; `ask` signs once through the
/// client (the second argument signs over the blocking path).
fn signer_answering_nonsense(
    name: &str,
    ask: impl Fn(&RemoteSigner, &dyn Fn(&RemoteSigner) -> Signed) -> Signed,
) {
    use std::io::{Read, Write};
    let dir = socket_dir(name);
    let path = dir.join("signer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // A "signed" answer: kid, alg, a u16-length header, then a signature.
    let signed = |header: &str| {
        let mut rest = u16::try_from(header.len()).unwrap().to_be_bytes().to_vec();
        rest.extend_from_slice(header.as_bytes());
        rest.extend_from_slice(&[7; 64]);
        frame(0x00, &["kid-1", "EdDSA"], &rest)
    };
    let header = |json: &str| B64.encode(json);
    let answers = vec![
        signed("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9"), // smuggles a payload
        signed(""),
        signed(&header(r#"{"alg":"none","typ":"at+jwt","kid":"kid-1"}"#)),
        // Well formed, but naming another key than the answer does.
        signed(&header(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"kid-2"}"#)),
        frame(0x7f, &[], b"what"),
        // A megabyte announced (and never sent).
        (1u32 << 20).to_be_bytes().to_vec(),
    ];
    let fake = std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        // The client may reconnect after a broken exchange: serve whoever connects.
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            loop {
                let mut len = [0; 4];
                if conn.read_exact(&mut len).is_err() {
                    break;
                }
                let mut request = vec![0; u32::from_be_bytes(len) as usize];
                conn.read_exact(&mut request).unwrap();
                let Some(answer) = answers.next() else {
                    return;
                };
                conn.write_all(&answer).unwrap();
            }
        }
    });
    let client = RemoteSigner::new(&path);
    let blocking = |client: &RemoteSigner| {
        client.sign_jws(
            &RealmId::new("contoso").unwrap(),
            KeyPurpose::AccessToken,
            Algorithm::EdDSA,
            "at+jwt",
            &B64.encode(br#"{"sub":"x"}"#),
            0,
        )
    };
    for case in [
        "a dot in the header",
        "no header",
        "alg none",
        "another kid",
        "an unknown answer",
        "an oversized frame",
    ] {
        let signed = ask(&client, &blocking);
        assert!(
            matches!(signed, Err(Error::Unavailable(_))),
            "{case}: {signed:?}"
        );
    }
    fake.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
