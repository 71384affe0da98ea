//! Taking apart what a client presents as its bearer token, in each protocol's framing: an
//! HTTP `Authorization` header (RFC 6750 §2.1), a SASL `OAUTHBEARER` client response
//! (RFC 7628 §3.1), or a SASL `XOAUTH2` one (Google's and Microsoft's older mechanism, which
//! mail clients still send). One reader for all of them, so that no protocol trims, splits or
//! forgets differently; what comes out goes to [`crate::Gate::authenticate`].

/// What a client presented, as its protocol framed it.
#[derive(Debug, Clone, Copy)]
pub enum Presentation<'a> {
    /// The value of an HTTP `Authorization` header; `None` if there was none.
    Authorization(Option<&'a str>),
    /// A SASL `OAUTHBEARER` initial client response (already base64-decoded).
    OAuthBearer(&'a [u8]),
    /// A SASL `XOAUTH2` initial client response (already base64-decoded).
    XOAuth2(&'a [u8]),
}

/// A bearer token taken out of its framing, with the user the framing names (SASL's
/// authorization identity or XOAUTH2's `user=`), which the protocol must hold to the
/// principal's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bearer<'a> {
    /// The token.
    pub token: &'a str,
    /// The user the framing names, if any (unescaped only when it needed no escapes).
    pub user: Option<&'a str>,
}

/// Why nothing usable came out of a presentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// No credential at all: the client should be asked for one (RFC 6750 §3, a challenge
    /// without an error code). Not a refused token.
    #[error("no credential presented")]
    Missing,
    /// Another scheme (`Basic`, ...): not a bearer token.
    #[error("not a bearer credential")]
    NotBearer,
    /// A bearer credential that does not follow its framing's grammar.
    #[error("malformed credential")]
    Malformed,
}

/// Longest token read (Keypost's tokens are far shorter; validation refuses 8 KiB+).
const MAX_TOKEN: usize = 16 * 1024;

impl<'a> Presentation<'a> {
    /// The bearer token inside.
    pub fn bearer(self) -> Result<Bearer<'a>, CredentialError> {
        match self {
            Presentation::Authorization(None) => Err(CredentialError::Missing),
            Presentation::Authorization(Some(v)) => authorization(v),
            Presentation::OAuthBearer(m) => oauthbearer(m),
            Presentation::XOAuth2(m) => xoauth2(m),
        }
    }
}

/// RFC 6750 §2.1: `Bearer 1*SP b64token` (the scheme case-insensitive, RFC 7235).
fn authorization(value: &str) -> Result<Bearer<'_>, CredentialError> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.is_empty() {
        return Err(CredentialError::Missing);
    }
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(CredentialError::NotBearer);
    }
    let token = rest.trim_start_matches(' ');
    b64token(token).map(|token| Bearer { token, user: None })
}

/// RFC 6750's `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn b64token(t: &str) -> Result<&str, CredentialError> {
    let body = t.trim_end_matches('=');
    let ok = !body.is_empty()
        && t.len() <= MAX_TOKEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if ok {
        Ok(t)
    } else {
        Err(CredentialError::Malformed)
    }
}

/// The `auth` value of SASL key/value pairs (`key=value` separated by `^A`, ending `^A^A`):
/// `Bearer <token>`.
fn auth_pair(pairs: &[u8]) -> Result<&str, CredentialError> {
    let pairs = std::str::from_utf8(pairs).map_err(|_| CredentialError::Malformed)?;
    let body = pairs
        .strip_suffix("\u{1}\u{1}")
        .ok_or(CredentialError::Malformed)?;
    let mut auth = None;
    for pair in body.split('\u{1}') {
        let (key, value) = pair.split_once('=').ok_or(CredentialError::Malformed)?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(CredentialError::Malformed);
        }
        if key == "auth" {
            if auth.is_some() {
                return Err(CredentialError::Malformed);
            }
            auth = Some(value);
        }
    }
    let auth = auth.ok_or(CredentialError::Malformed)?;
    match authorization(auth) {
        Ok(b) => Ok(b.token),
        // Inside SASL, anything but a bearer token is a broken client response.
        Err(_) => Err(CredentialError::Malformed),
    }
}

/// RFC 7628 §3.1: `gs2-header ^A *(kvpair ^A) ^A`, the GS2 header `n,` or `y,` (no channel
/// binding), an optional `a=` authorization identity, then `,`.
fn oauthbearer(m: &[u8]) -> Result<Bearer<'_>, CredentialError> {
    if m.is_empty() {
        return Err(CredentialError::Missing);
    }
    let rest = m
        .strip_prefix(b"n,")
        .or_else(|| m.strip_prefix(b"y,"))
        .ok_or(CredentialError::Malformed)?;
    let comma = rest
        .iter()
        .position(|&b| b == b',')
        .ok_or(CredentialError::Malformed)?;
    let (authzid, rest) = (&rest[..comma], &rest[comma + 1..]);
    let user = match authzid {
        [] => None,
        [b'a', b'=', name @ ..] => {
            let name = std::str::from_utf8(name).map_err(|_| CredentialError::Malformed)?;
            // RFC 5801 saslname: `=2C` and `=3D` escape `,` and `=`; an address never holds
            // either, so an escaped name is refused rather than unescaped into a copy.
            if name.is_empty() || name.contains('=') {
                return Err(CredentialError::Malformed);
            }
            Some(name)
        }
        _ => return Err(CredentialError::Malformed),
    };
    let pairs = rest
        .strip_prefix(b"\x01")
        .ok_or(CredentialError::Malformed)?;
    Ok(Bearer {
        token: auth_pair(pairs)?,
        user,
    })
}

/// XOAUTH2: `user=<address>^Aauth=Bearer <token>^A^A`.
fn xoauth2(m: &[u8]) -> Result<Bearer<'_>, CredentialError> {
    if m.is_empty() {
        return Err(CredentialError::Missing);
    }
    let rest = m.strip_prefix(b"user=").ok_or(CredentialError::Malformed)?;
    let end = rest
        .iter()
        .position(|&b| b == 1)
        .ok_or(CredentialError::Malformed)?;
    let user = std::str::from_utf8(&rest[..end]).map_err(|_| CredentialError::Malformed)?;
    if user.is_empty() {
        return Err(CredentialError::Malformed);
    }
    Ok(Bearer {
        token: auth_pair(&rest[end + 1..])?,
        user: Some(user),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CredentialError::*;

    fn header(v: &str) -> Result<Bearer<'_>, CredentialError> {
        Presentation::Authorization(Some(v)).bearer()
    }

    #[test]
    fn authorization_headers() {
        let t = "eyJh.eyJi.c2ln";
        let ok = Ok(Bearer {
            token: t,
            user: None,
        });
        assert_eq!(header("Bearer eyJh.eyJi.c2ln"), ok);
        assert_eq!(header("bearer   eyJh.eyJi.c2ln "), ok);
        assert_eq!(header("BEARER eyJh.eyJi.c2ln"), ok);
        assert_eq!(Presentation::Authorization(None).bearer(), Err(Missing));
        assert_eq!(header(""), Err(Missing));
        assert_eq!(header("Basic dXNlcjpwYXNz"), Err(NotBearer));
        assert_eq!(header("Bearerx abc"), Err(NotBearer));
        assert_eq!(header("Bearer"), Err(Malformed));
        assert_eq!(header("Bearer a b"), Err(Malformed));
        assert_eq!(header("Bearer a\"b"), Err(Malformed));
        assert_eq!(header("Bearer ==="), Err(Malformed));
        assert_eq!(
            header(&format!("Bearer {}", "a".repeat(MAX_TOKEN + 1))),
            Err(Malformed)
        );
        assert_eq!(
            header("Bearer abc=="),
            Ok(Bearer {
                token: "abc==",
                user: None
            })
        );
    }

    #[test]
    fn oauthbearer_client_responses() {
        let m = b"n,a=alice@contoso.test,\x01host=mail\x01port=993\x01auth=Bearer tok.en\x01\x01";
        assert_eq!(
            Presentation::OAuthBearer(m).bearer(),
            Ok(Bearer {
                token: "tok.en",
                user: Some("alice@contoso.test")
            })
        );
        let anonymous = b"n,,\x01auth=Bearer tok\x01\x01";
        assert_eq!(
            Presentation::OAuthBearer(anonymous).bearer(),
            Ok(Bearer {
                token: "tok",
                user: None
            })
        );
        for bad in [
            &b"p=tls-unique,,\x01auth=Bearer t\x01\x01"[..],
            b"n,a=x,\x01auth=Bearer t\x01",
            b"n,a=x,\x01host=h\x01\x01",
            b"n,a=x,auth=Bearer t\x01\x01",
            b"n,a=x=2Cy,\x01auth=Bearer t\x01\x01",
            b"n,b=x,\x01auth=Bearer t\x01\x01",
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",
            b"n,,\x01auth=Bearer \xff\x01\x01",
            b"n,,\x01=v\x01auth=Bearer t\x01\x01",
        ] {
            assert_eq!(
                Presentation::OAuthBearer(bad).bearer(),
                Err(Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(Presentation::OAuthBearer(b"").bearer(), Err(Missing));
    }

    #[test]
    fn xoauth2_client_responses() {
        let m = b"user=alice@contoso.test\x01auth=Bearer tok\x01\x01";
        assert_eq!(
            Presentation::XOAuth2(m).bearer(),
            Ok(Bearer {
                token: "tok",
                user: Some("alice@contoso.test")
            })
        );
        for bad in [
            &b"user=\x01auth=Bearer tok\x01\x01"[..],
            b"auth=Bearer tok\x01\x01",
            b"user=alice\x01auth=Bearer tok\x01",
            b"user=alice",
        ] {
            assert_eq!(
                Presentation::XOAuth2(bad).bearer(),
                Err(Malformed),
                "{bad:?}"
            );
        }
    }
}
