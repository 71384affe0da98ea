//! Compact JWS parsing, strictly: three canonical base64url segments, JSON objects with no
//! duplicate member names and bounded nesting, a bounded total size. Anything else is
//! malformed, before any key or signature is looked at.
//!
//! The header and claims are read straight into the few members the policy looks at
//! ([`Header`], [`Claims`]), borrowing their strings; every other member is walked only to
//! check its nesting and its own objects' member names. Nothing builds a general JSON tree:
//! parsing is most of what validation costs beyond the signature. Documents written the way
//! Keypost writes them take a one-pass path ([`plain`]) that declines everything else to the
//! general `serde_json` reading; a caller that recognises a header segment by its bytes can
//! skip it altogether ([`parse_compact_knowing`]).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

mod plain;

/// Largest token accepted, in bytes. Keypost's own tokens are well under 2 KiB.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Deepest JSON nesting accepted in a header or claims set (the top-level object is 1).
pub(crate) const MAX_DEPTH: usize = 8;

/// A parsed compact JWS; the signature is not yet verified. Its strings borrow from the token
/// and from the caller's decoding buffer (see [`parse_compact`]).
#[derive(Debug)]
pub struct CompactJws<'a> {
    /// Protected header.
    pub header: Header<'a>,
    /// Claims.
    pub claims: Claims<'a>,
    /// `base64url(header) '.' base64url(payload)`: what the signature covers.
    pub signing_input: &'a str,
    /// Decoded signature.
    pub signature: &'a [u8],
}

/// A member's value, as far as the policy reads it: a string, an integer (in `i64`), an array
/// (its string elements), or anything else.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Member<'a> {
    /// Not present.
    #[default]
    Absent,
    /// A JSON string.
    Str(Cow<'a, str>),
    /// A JSON integer that fits an `i64`.
    Int(i64),
    /// A JSON array; only its string elements are kept.
    List(Vec<Cow<'a, str>>),
    /// Any other value (`null`, a boolean, a fraction, an object, a huge integer).
    Other,
}

impl Member<'_> {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Member::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Member::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// The protected header members the policy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header<'a> {
    /// `alg`.
    pub alg: Member<'a>,
    /// `typ`.
    pub typ: Member<'a>,
    /// `kid`.
    pub kid: Member<'a>,
    /// Whether `crit` is present.
    pub crit: bool,
    /// Whether any of `jku`, `jwk`, `x5u`, `x5c` is present: a key offered by the token.
    pub key_material: bool,
}

/// The claims the policy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims<'a> {
    /// `iss`.
    pub iss: Member<'a>,
    /// `sub`.
    pub sub: Member<'a>,
    /// `aud`: a string or an array.
    pub aud: Member<'a>,
    /// `exp`.
    pub exp: Member<'a>,
    /// `nbf`.
    pub nbf: Member<'a>,
    /// `iat`.
    pub iat: Member<'a>,
    /// `jti`.
    pub jti: Member<'a>,
    /// `client_id`.
    pub client_id: Member<'a>,
    /// `scope`.
    pub scope: Member<'a>,
    /// `tid`.
    pub tid: Member<'a>,
}

/// Parses a compact JWS, decoding its header, payload and signature into `buf` (which the
/// result borrows; one buffer serves many parses, and one of the token's length is never
/// outgrown). Errors name the shape problem for the audit log.
pub fn parse_compact<'a>(
    raw: &'a str,
    buf: &'a mut Vec<u8>,
) -> Result<CompactJws<'a>, &'static str> {
    parse_compact_knowing(raw, buf, |_| None)
}

/// [`parse_compact`], except that a header segment `known` recognises (it is handed the
/// segment exactly as presented) is not decoded: `known` says what it reads as.
pub(crate) fn parse_compact_knowing<'a>(
    raw: &'a str,
    buf: &'a mut Vec<u8>,
    known: impl FnOnce(&str) -> Option<Header<'a>>,
) -> Result<CompactJws<'a>, &'static str> {
    if raw.len() > MAX_TOKEN_LEN {
        return Err("token too large");
    }
    // Exactly two dots (SIMD searches: std's split cost as much as decoding the header).
    let mut dots = memchr::memchr_iter(b'.', raw.as_bytes());
    let (Some(d1), Some(d2), None) = (dots.next(), dots.next(), dots.next()) else {
        return Err("not three segments");
    };
    let (h, p, s) = (&raw[..d1], &raw[d1 + 1..d2], &raw[d2 + 1..]);
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err("empty segment");
    }
    // The engine rejects padding and non-canonical trailing bits, so each token has exactly
    // one encoding and a signature cannot be "re-encoded" into a different string.
    buf.clear();
    let decoder = base64_simd::URL_SAFE_NO_PAD;
    let known = known(h);
    if known.is_none() {
        decoder
            .decode_append(h, buf)
            .map_err(|_| "header is not canonical base64url")?;
    }
    let header_len = buf.len();
    decoder
        .decode_append(p, buf)
        .map_err(|_| "payload is not canonical base64url")?;
    let payload_end = buf.len();
    decoder
        .decode_append(s, buf)
        .map_err(|_| "signature is not canonical base64url")?;
    let (header, rest) = buf.split_at(header_len);
    let (payload, signature) = rest.split_at(payload_end - header_len);
    // Filled in place: returned through serde's layers, the members (a few hundred bytes)
    // were copied several times over, a third of what parsing a token cost.
    let mut jws = CompactJws {
        header: Header::default(),
        claims: Claims::default(),
        signing_input: &raw[..h.len() + 1 + p.len()],
        signature,
    };
    match known {
        Some(h) => jws.header = h,
        None => read_object::<HeaderMembers>(header, &mut jws.header)
            .ok_or("header is not a strict JSON object")?,
    }
    read_object::<ClaimMembers>(payload, &mut jws.claims)
        .ok_or("claims are not a strict JSON object")?;
    Ok(jws)
}

/// Reads one top-level JSON object into `out`; `None` if the document is not a single strict
/// object. Documents written as Keypost writes them take the [`plain`] path.
fn read_object<'de, M: Members<'de>>(bytes: &'de [u8], out: &mut M::Out) -> Option<()> {
    // One UTF-8 check of the whole document is cheaper than serde_json's of each string.
    let text = std::str::from_utf8(bytes).ok()?;
    if plain::read::<M>(text, out).is_some() {
        return Some(());
    }
    // What the plain reading filled in before it declined is not the document's.
    *out = M::Out::default();
    strict_object::<M>(text, out)
}

/// Whether `payload` is one strict JSON object of claims, as validation reads them: no
/// duplicate member names (which `serde_json::Value` would resolve silently, to the last),
/// bounded nesting. What the signer holds a payload to before anything else.
pub(crate) fn is_strict_claims(payload: &[u8]) -> bool {
    let mut claims = Claims::default();
    read_object::<ClaimMembers>(payload, &mut claims).is_some()
}

/// Holds the [`plain`] reading of `doc`, as a header and as claims, to the general one:
/// wherever the plain reading accepts, the general one accepts too and reads the same members.
/// Panics otherwise (for tests and the fuzz target).
pub(crate) fn check_plain_reading(doc: &[u8]) {
    fn check<'de, M: Members<'de>>(text: &'de str)
    where
        M::Out: PartialEq + std::fmt::Debug,
    {
        let mut plain = M::Out::default();
        if plain::read::<M>(text, &mut plain).is_none() {
            return;
        }
        let mut general = M::Out::default();
        assert!(
            strict_object::<M>(text, &mut general).is_some(),
            "only the plain reading accepts {text:?}"
        );
        assert_eq!(plain, general, "the readings differ on {text:?}");
    }
    if let Ok(text) = std::str::from_utf8(doc) {
        check::<HeaderMembers>(text);
        check::<ClaimMembers>(text);
    }
}

/// The general reading: any JSON object, held to the rules at the top of this module.
fn strict_object<'de, M: Members<'de>>(text: &'de str, out: &mut M::Out) -> Option<()> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(ObjectVisitor::<M> { out }).ok()?;
    de.end().ok()
}

/// What an object visitor does with one member.
enum Slot<'s, 'de> {
    /// Read the value into this member. The bit marks it seen.
    Read(&'s mut Member<'de>, u32),
    /// A member the policy only tests for, or knows and ignores: walk the value. The bit marks
    /// it seen.
    Walk(u32),
    /// Not a member Keypost issues: walk the value, and remember the name.
    Unknown,
}

/// Which members of an object are read, and into what.
trait Members<'de> {
    type Out: Default;
    fn slot<'s>(out: &'s mut Self::Out, name: &str) -> Slot<'s, 'de>;
}

struct HeaderMembers;

impl<'de> Members<'de> for HeaderMembers {
    type Out = Header<'de>;
    fn slot<'s>(out: &'s mut Header<'de>, name: &str) -> Slot<'s, 'de> {
        match name {
            "alg" => Slot::Read(&mut out.alg, 1),
            "typ" => Slot::Read(&mut out.typ, 1 << 1),
            "kid" => Slot::Read(&mut out.kid, 1 << 2),
            "crit" => {
                out.crit = true;
                Slot::Walk(1 << 3)
            }
            "jku" | "jwk" | "x5u" | "x5c" => {
                out.key_material = true;
                Slot::Unknown
            }
            _ => Slot::Unknown,
        }
    }
}

struct ClaimMembers;

impl<'de> Members<'de> for ClaimMembers {
    type Out = Claims<'de>;
    fn slot<'s>(out: &'s mut Claims<'de>, name: &str) -> Slot<'s, 'de> {
        match name {
            "iss" => Slot::Read(&mut out.iss, 1),
            "sub" => Slot::Read(&mut out.sub, 1 << 1),
            "aud" => Slot::Read(&mut out.aud, 1 << 2),
            "exp" => Slot::Read(&mut out.exp, 1 << 3),
            "nbf" => Slot::Read(&mut out.nbf, 1 << 4),
            "iat" => Slot::Read(&mut out.iat, 1 << 5),
            "jti" => Slot::Read(&mut out.jti, 1 << 6),
            "client_id" => Slot::Read(&mut out.client_id, 1 << 7),
            "scope" => Slot::Read(&mut out.scope, 1 << 8),
            "tid" => Slot::Read(&mut out.tid, 1 << 9),
            "sid" => Slot::Walk(1 << 10),
            _ => Slot::Unknown,
        }
    }
}

/// Member names seen in one object, to refuse duplicates. serde_json would keep the last of
/// duplicates silently; a validator and a logger could then disagree about a claim, so such
/// documents are refused outright (RFC 7515 §5.2 allows exactly this). Names compare after
/// unescaping (`"a"` and `"\u0061"` are the same member). Known members are a bit each, so
/// an object of only those (every token Keypost issues) allocates nothing.
#[derive(Default)]
struct SeenNames<'de> {
    known: u32,
    /// The first few other names: compared one by one.
    few: Vec<Cow<'de, str>>,
    /// All other names once there are more than a few (a made-up token can carry hundreds,
    /// and comparing each with all before it would cost milliseconds before any signature
    /// check).
    many: Option<std::collections::HashSet<Cow<'de, str>>>,
}

/// Other member names compared one by one before they go into a set.
const FEW_NAMES: usize = 16;

impl<'de> SeenNames<'de> {
    fn known<E: de::Error>(&mut self, bit: u32) -> Result<(), E> {
        if self.known & bit != 0 {
            return Err(E::custom("duplicate member"));
        }
        self.known |= bit;
        Ok(())
    }

    fn other<E: de::Error>(&mut self, name: Cow<'de, str>) -> Result<(), E> {
        let fresh = match &mut self.many {
            Some(set) => set.insert(name),
            None if self.few.contains(&name) => false,
            None => {
                self.few.push(name);
                if self.few.len() > FEW_NAMES {
                    self.many = Some(self.few.drain(..).collect());
                }
                true
            }
        };
        if fresh {
            Ok(())
        } else {
            Err(E::custom("duplicate member"))
        }
    }
}

/// A string borrowed from the document unless it had escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level object: read members into `out`, walk the rest.
struct ObjectVisitor<'o, 'de, M: Members<'de>> {
    out: &'o mut M::Out,
}

impl<'de, M: Members<'de>> Visitor<'de> for ObjectVisitor<'_, 'de, M> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.out;
        let mut seen = SeenNames::default();
        let walk = Walk {
            levels: MAX_DEPTH - 1,
        };
        while let Some(Text(name)) = map.next_key()? {
            match M::slot(out, &name) {
                Slot::Read(member, bit) => {
                    seen.known(bit)?;
                    *member = map.next_value_seed(MemberSeed {
                        levels: MAX_DEPTH - 1,
                    })?;
                }
                Slot::Walk(bit) => {
                    seen.known(bit)?;
                    map.next_value_seed(walk)?;
                }
                Slot::Unknown => {
                    map.next_value_seed(walk)?;
                    seen.other(name)?;
                }
            }
        }
        Ok(())
    }
}

/// A read member's value (or an element of one that is an array). `levels` counts the
/// container levels it may still open, as [`Walk`]'s does: its nesting is checked like any
/// other member's.
#[derive(Clone, Copy)]
struct MemberSeed {
    levels: usize,
}

impl<'de> DeserializeSeed<'de> for MemberSeed {
    type Value = Member<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Member<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MemberSeed {
    type Value = Member<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Member<'de>, E> {
        Ok(Member::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Member<'de>, E> {
        Ok(i64::try_from(v).map_or(Member::Other, Member::Int))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member<'de>, A::Error> {
        let inner = Walk {
            levels: self.levels,
        }
        .enter::<A::Error>()?;
        let element = MemberSeed {
            levels: inner.levels,
        };
        // Only string elements count; any other is walked for its nesting and dropped.
        let mut strings = Vec::new();
        while let Some(e) = seq.next_element_seed(element)? {
            if let Member::Str(s) = e {
                strings.push(s);
            }
        }
        Ok(Member::List(strings))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Member<'de>, A::Error> {
        Walk {
            levels: self.levels,
        }
        .visit_map(map)?;
        Ok(Member::Other)
    }
}

/// Walks a value that is not read: an object or array here may open at most `levels` more
/// levels of nesting, and its objects may not repeat a member name.
#[derive(Clone, Copy)]
struct Walk {
    levels: usize,
}

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.enter::<A::Error>()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.enter::<A::Error>()?;
        let mut seen = SeenNames::default();
        while let Some(Text(name)) = map.next_key()? {
            map.next_value_seed(inner)?;
            seen.other(name)?;
        }
        Ok(())
    }
}

impl Walk {
    fn enter<E: de::Error>(self) -> Result<Walk, E> {
        match self.levels.checked_sub(1) {
            Some(levels) => Ok(Walk { levels }),
            None => Err(E::custom("nested too deeply")),
        }
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
        let mut buf = Vec::new();
        let jws = parse_compact(&t, &mut buf).unwrap();
        assert_eq!(jws.header.alg.as_str(), Some("EdDSA"));
        assert_eq!(jws.claims.sub.as_str(), Some("a"));
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
                assert!(parse_compact(c, &mut Vec::new()).is_ok());
                continue;
            }
            assert!(
                parse_compact(c, &mut Vec::new()).is_err(),
                "case {i} accepted: {c}"
            );
        }
    }

    /// Past the first few, other member names are kept in a set: duplicates are still found
    /// (after unescaping, at the top level and nested), and hundreds of names are fine.
    #[test]
    fn duplicates_are_found_among_many_members() {
        let h = br#"{"alg":"EdDSA"}"#;
        let members: Vec<String> = (0..300).map(|i| format!(r#""m{i}":{i}"#)).collect();
        let object = |extra: &str| format!("{{{}{extra}}}", members.join(","));
        let parses =
            |claims: &str| parse_compact(&tok_bytes(h, claims.as_bytes()), &mut Vec::new()).is_ok();
        assert!(parses(&object("")));
        assert!(!parses(&object(r#","m3":0"#)), "an early name repeated");
        assert!(!parses(&object(r#","m250":0"#)), "a late name repeated");
        assert!(
            !parses(&object(r#","m\u0031":0"#)),
            "an escaped repeat of m1"
        );
        let nested = format!(r#"{{"x":{}}}"#, object(r#","m299":0"#));
        assert!(
            !parses(&nested),
            "a repeat inside a member the policy does not read"
        );
    }

    /// A member the policy reads is held to the same depth as any other: eight levels in all,
    /// the top-level object included, and its array elements count only if they are strings.
    #[test]
    fn read_members_are_held_to_the_same_depth() {
        let h = br#"{"alg":"EdDSA"}"#;
        let nested = |n: usize| format!("{}\"x\"{}", "[".repeat(n), "]".repeat(n));
        let parse = |member: &str, n: usize| {
            let claims = format!(r#"{{"{member}":{}}}"#, nested(n));
            let token = tok_bytes(h, claims.as_bytes());
            // The string elements of `aud`, owned.
            parse_compact(&token, &mut Vec::new()).map(|j| match j.claims.aud {
                Member::List(l) => Some(l.into_iter().map(|s| s.into_owned()).collect::<Vec<_>>()),
                _ => None,
            })
        };
        for member in ["aud", "other"] {
            assert!(parse(member, 7).is_ok(), "{member}: eight levels");
            assert!(parse(member, 8).is_err(), "{member}: nine levels");
        }
        assert_eq!(parse("aud", 1).unwrap(), Some(vec!["x".to_owned()]));
        assert_eq!(parse("aud", 2).unwrap(), Some(vec![]));
    }

    fn tok_bytes(h: &[u8], p: &[u8]) -> String {
        format!("{}.{}.{}", b64(h), b64(p), b64(b"sig"))
    }

    /// A deterministic stream of pseudo-random numbers (xorshift64).
    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Reads `doc` as claims in a token, through [`parse_compact`] (plain reading first),
    /// after holding the plain reading to the general one on it.
    fn claims(doc: &str) -> Option<Claims<'_>> {
        check_plain_reading(doc.as_bytes());
        let mut out = Claims::default();
        read_object::<ClaimMembers>(doc.as_bytes(), &mut out).map(|()| out)
    }

    /// Keypost's own layout takes the plain path; what it declines still reads (or is refused)
    /// as before, whatever the plain reading had filled in when it stopped.
    #[test]
    fn plain_reading_of_keypost_claims_and_what_it_declines() {
        let issued = r#"{"iss":"https://k.test/realms/c","sub":"u1","aud":["https://k.test/mail","https://k.test/userinfo"],"exp":1796632420,"iat":-5,"nbf":0,"jti":"01a2","client_id":"app","scope":"mail","tid":"c","sid":"s1"}"#;
        let mut out = Claims::default();
        assert!(
            plain::read::<ClaimMembers>(issued, &mut out).is_some(),
            "plain"
        );
        assert_eq!(claims(issued), Some(out.clone()));
        assert_eq!(out.exp, Member::Int(1796632420));
        assert_eq!(out.iat, Member::Int(-5));
        assert_eq!(
            out.aud,
            Member::List(vec![
                "https://k.test/mail".into(),
                "https://k.test/userinfo".into()
            ])
        );

        assert!(claims("{}").is_some_and(|c| c == Claims::default()));
        // Each of these leaves the plain path part-way; the general reading decides.
        let declined = [
            (r#"{"sub":"a","exp":1, "iss":"x"}"#, true), // whitespace
            (r#"{"sub":"a","iss":"\u0078"}"#, true),     // an escape
            (r#"{"sub":"a","other":1}"#, true),          // a member the policy does not read
            (r#"{"sub":"a","exp":1.5}"#, true),          // a fraction
            (r#"{"sub":"a","exp":-0}"#, true),           // a float to serde_json
            (r#"{"sub":"a","exp":12345678901234567890}"#, true), // past i64
            (r#"{"sub":"a","aud":["x",1]}"#, true),      // a non-string element
            (r#"{"sub":"a","exp":null}"#, true),
            (r#"{"sub":"a","aud":[]} "#, true),
            (r#"{"sub":"a","sub":"b"}"#, false), // a repeat
            (r#"{"sub":"a","exp":01}"#, false),  // a leading zero
            (r#"{"sub":"a","iss":"x"}x"#, false),
            (r#"{"sub":"a","aud":["x",]}"#, false),
            ("{\"sub\":\"a\u{1}\"}", false), // a control character
        ];
        for (doc, valid) in declined {
            assert!(
                plain::read::<ClaimMembers>(doc, &mut Claims::default()).is_none(),
                "{doc}"
            );
            let read = claims(doc);
            assert_eq!(read.is_some(), valid, "{doc}");
            if valid {
                assert_eq!(read.unwrap().sub, Member::Str("a".into()), "{doc}");
            }
        }
        // At the plain reading's edges: what it accepts, it reads as the general one does
        // (`claims` checks); what it declines, the general one decides.
        let plain_ok =
            |doc: &str| plain::read::<ClaimMembers>(doc, &mut Claims::default()).is_some();
        for (doc, plain, valid) in [
            (r#"{"exp":999999999999999999}"#, true, true), // 18 digits
            (r#"{"exp":1234567890123456789}"#, false, true), // 19: the general reading's
            (r#"{"exp":-9223372036854775808}"#, false, true),
            (r#"{"exp":-}"#, false, false),
            (r#"{"exp":-1}"#, true, true),
            ("{\"sub\":\"\u{e9}\u{7f}\u{1f600}\"}", true, true),
            (r#"{"":1}"#, false, true),
            (r#"{"aud":[]}"#, true, true),
            (r#"{"aud":["a"]}"#, true, true),
            (r#"{"aud":["a""b"]}"#, false, false),
            (r#"{"sub":"a""#, false, false),
            (r#"{"sub""a"}"#, false, false),
        ] {
            assert_eq!(plain_ok(doc), plain, "{doc}");
            assert_eq!(claims(doc).is_some(), valid, "{doc}");
        }
        assert_eq!(
            claims(r#"{"exp":-9223372036854775808}"#).unwrap().exp,
            Member::Int(i64::MIN)
        );

        // `crit` is noted even on the plain path; a key offered in the header declines it.
        let mut h = Header::default();
        assert!(
            plain::read::<HeaderMembers>(r#"{"alg":"EdDSA","crit":["exp"]}"#, &mut h).is_some()
        );
        assert!(h.crit);
        let mut h = Header::default();
        assert!(plain::read::<HeaderMembers>(r#"{"alg":"EdDSA","jwk":"k"}"#, &mut h).is_none());
        let mut h = Header::default();
        assert!(read_object::<HeaderMembers>(br#"{"alg":"EdDSA","jwk":"k"}"#, &mut h).is_some());
        assert!(h.key_material);
    }

    /// Random edits of a header and claims Keypost writes (a byte dropped, doubled, or replaced
    /// by one that matters to JSON): the plain reading never accepts what the general one
    /// refuses or reads differently.
    #[test]
    fn plain_reading_agrees_with_the_general_one_on_edited_documents() {
        let seeds = [
            r#"{"alg":"RS256","typ":"at+jwt","kid":"Bgt9pUOW7jeKOCKY32fJAM2Eo3ky0EeuvskO6o0roh8"}"#,
            r#"{"iss":"https://keypost.test/realms/contoso","sub":"u1","aud":["https://keypost.test/mail"],"exp":1796632420,"iat":1796631820,"nbf":1796631820,"jti":"01a24f99fafbu0svFa8RM41N9A","client_id":"app","scope":"mail","tid":"contoso","sid":"x"}"#,
        ];
        let alphabet = b"{}[]\":,\\ -0123456789.eEaxn";
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let (mut plain, mut general) = (0, 0);
        for i in 0..20_000 {
            let mut doc = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + next() % 2 {
                let at = (next() % doc.len() as u64) as usize;
                let b = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => drop(doc.remove(at)),
                    1 => doc.insert(at, doc[at]),
                    _ => doc[at] = b,
                }
            }
            let doc = String::from_utf8(doc).unwrap();
            plain +=
                usize::from(plain::read::<ClaimMembers>(&doc, &mut Claims::default()).is_some());
            general += usize::from(claims(&doc).is_some());
        }
        // Both readings must see plenty of accepted documents for the agreement to mean much.
        assert!(plain > 1_000 && general > plain, "{plain} {general}");
    }

    #[test]
    fn non_canonical_trailing_bits_are_refused() {
        // Three characters encode two bytes with two bits to spare, which must be zero.
        let h = b64(br#"{"alg":"EdDSA"}"#);
        let p = b64(br#"{"sub":"a"}"#);
        assert!(parse_compact(&format!("{h}.{p}.AAA"), &mut Vec::new()).is_ok());
        assert!(parse_compact(&format!("{h}.{p}.AAB"), &mut Vec::new()).is_err());
    }

    /// The SIMD decoder accepts exactly what the `base64` crate's strict unpadded base64url
    /// engine accepts, to the byte: mostly well-formed segments of every length modulo 4,
    /// with padding, the other alphabet's characters, dots, spaces and bytes past ASCII mixed in.
    #[test]
    fn decoding_is_exactly_the_strict_base64url_engine() {
        let h = b64(br#"{"alg":"EdDSA"}"#);
        let p = b64(br#"{"sub":"a"}"#);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let junk = ["=", "+", "/", " ", "\n", "\u{e9}", "%"];
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = 1 + (next() % 90) as usize;
            let segment: String = (0..len)
                .map(|_| {
                    let r = next();
                    if r.is_multiple_of(200) {
                        junk[(r / 200) as usize % junk.len()].to_owned()
                    } else {
                        char::from(alphabet[(r >> 8) as usize % 64]).to_string()
                    }
                })
                .collect();
            let ours = parse_compact(&format!("{h}.{p}.{segment}"), &mut Vec::new())
                .map(|j| j.signature.to_vec())
                .ok();
            assert_eq!(ours, B64.decode(&segment).ok(), "{segment:?}");
            accepted += usize::from(ours.is_some());
        }
        assert!(accepted > 5_000, "{accepted}");
    }
}
