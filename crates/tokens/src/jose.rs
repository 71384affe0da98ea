//! Compact JWS parsing, strictly: three canonical base64url segments, JSON objects with no
//! duplicate member names and bounded nesting, a bounded total size. Anything else is
//! malformed, before any key or signature is looked at.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Largest token accepted, in bytes. Keypost's own tokens are well under 2 KiB.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Deepest JSON nesting accepted in a header or claims set.
pub(crate) const MAX_DEPTH: usize = 8;

/// A parsed compact JWS; the signature is not yet verified.
#[derive(Debug)]
pub struct CompactJws<'a> {
    /// Protected header.
    pub header: Map<String, Value>,
    /// Claims.
    pub claims: Map<String, Value>,
    /// `base64url(header) '.' base64url(payload)`: what the signature covers.
    pub signing_input: &'a str,
    /// Decoded signature.
    pub signature: Vec<u8>,
}

/// Parses a compact JWS. Errors name the shape problem for the audit log.
pub fn parse_compact(raw: &str) -> Result<CompactJws<'_>, &'static str> {
    if raw.len() > MAX_TOKEN_LEN {
        return Err("token too large");
    }
    let mut parts = raw.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three segments");
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err("empty segment");
    }
    // The engine rejects padding and non-canonical trailing bits, so each token has exactly
    // one encoding and a signature cannot be "re-encoded" into a different string.
    let header = B64
        .decode(h)
        .map_err(|_| "header is not canonical base64url")?;
    let payload = B64
        .decode(p)
        .map_err(|_| "payload is not canonical base64url")?;
    let signature = B64
        .decode(s)
        .map_err(|_| "signature is not canonical base64url")?;
    let header = strict_object(&header).ok_or("header is not a strict JSON object")?;
    let claims = strict_object(&payload).ok_or("claims are not a strict JSON object")?;
    Ok(CompactJws {
        header,
        claims,
        signing_input: &raw[..h.len() + 1 + p.len()],
        signature,
    })
}

fn strict_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    let StrictValue(v) = serde_json::from_slice(bytes).ok()?;
    if depth(&v) > MAX_DEPTH {
        return None;
    }
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A JSON value whose objects had no duplicate member names. serde_json keeps the last of
/// duplicates silently; a validator and a logger could then disagree about a claim, so we
/// refuse such documents outright (RFC 7515 §5.2 allows exactly this).
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(StrictValue(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.insert(k.clone(), v).is_some() {
                return Err(de::Error::custom(format!("duplicate member {k:?}")));
            }
        }
        Ok(StrictValue(Value::Object(out)))
    }
}

/// base64url without padding, for building tokens.
pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(h: &str, p: &str) -> String {
        format!(
            "{}.{}.{}",
            b64(h.as_bytes()),
            b64(p.as_bytes()),
            b64(b"sig")
        )
    }

    #[test]
    fn accepts_a_plain_token() {
        let t = tok(r#"{"alg":"EdDSA"}"#, r#"{"sub":"a","n":[1,{"x":2}]}"#);
        let jws = parse_compact(&t).unwrap();
        assert_eq!(jws.header["alg"], "EdDSA");
        assert_eq!(jws.signature, b"sig");
        assert_eq!(jws.signing_input, &t[..t.rfind('.').unwrap()]);
    }

    #[test]
    fn refuses_bad_shapes() {
        let good_h = b64(br#"{"alg":"EdDSA"}"#);
        let good_p = b64(br#"{"sub":"a"}"#);
        let cases = [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{good_h}.{good_p}."),
            format!("{good_h}.{good_p}.c2ln="), // padding
            format!("{good_h}.{good_p}.c2lh"),  // fine...
            format!("{good_h}.{good_p}.c2lz+"), // not url-safe
            format!("{good_h}=.{good_p}.c2lh"),
            format!("{}.{good_p}.c2lh", b64(b"[1,2]")),
            format!("{}.{good_p}.c2lh", b64(br#"{"alg":"a","alg":"b"}"#)),
            format!("{good_h}.{}.c2lh", b64(br#"{"a":{"b":1,"b":2}}"#)),
            format!(
                "{good_h}.{}.c2lh",
                b64(r#"{"a":[[[[[[[[[[1]]]]]]]]]]}"#.as_bytes())
            ),
            format!("{good_h}.{}.c2lh", b64(b"not json")),
            format!("{good_h}.{}.c2lh", b64(&vec![b' '; MAX_TOKEN_LEN])),
        ];
        for (i, c) in cases.iter().enumerate() {
            if i == 5 {
                assert!(parse_compact(c).is_ok());
                continue;
            }
            assert!(parse_compact(c).is_err(), "case {i} accepted: {c}");
        }
    }

    #[test]
    fn non_canonical_trailing_bits_are_refused() {
        // "c2lh" decodes to "sia"; "c2li" has the same 3 bytes? No: 4 chars = 3 bytes exactly,
        // so use a 2-byte signature where the last char carries 2 spare bits.
        let h = b64(br#"{"alg":"EdDSA"}"#);
        let p = b64(br#"{"sub":"a"}"#);
        assert!(parse_compact(&format!("{h}.{p}.AAA")).is_ok());
        assert!(parse_compact(&format!("{h}.{p}.AAB")).is_err());
    }
}
