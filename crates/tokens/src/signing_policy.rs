//! What the signer process holds a token to before it signs it ([`keys::PayloadCheck`]): the
//! claims must be the ones the realm's own issuer writes. A web process taken over by an
//! attacker can still ask the signer for signatures — that is its job — but only for tokens
//! the issuer would issue: its own `iss` and tenant, audiences among Keypost's services, and
//! lifetimes within the realm's policy. It cannot have a realm's key sign for another realm,
//! an audience Keypost does not serve, or a year-long token.
//!
//! The check reads the payload the minter wrote ([`crate::AccessClaims`], the ID-token claims);
//! the ledger still decides whether a validly signed token was ever issued.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keys::{PAYLOAD_REFUSALS, PayloadCheck};
use serde_json::Value;
use store::{KeyPurpose, RealmId, UnixTime};

use crate::claims::{Audience, issuer_for};

/// The realm's lifetimes and the clock leeway the signer holds tokens to (seconds).
#[derive(Debug, Clone, Copy)]
pub struct SigningPolicy {
    /// Longest access-token lifetime.
    pub access_ttl: i64,
    /// Longest ID-token lifetime.
    pub id_ttl: i64,
    /// Tolerated difference between the token's `iat` and the signer's clock.
    pub leeway: i64,
}

/// Largest payload read (Keypost's tokens are far smaller; validation refuses 8 KiB tokens).
const MAX_PAYLOAD: usize = 8 * 1024;

const NOT_THE_REALMS: &str = PAYLOAD_REFUSALS[0];
const LIFETIME: &str = PAYLOAD_REFUSALS[1];
const AUDIENCE: &str = PAYLOAD_REFUSALS[2];

/// The check for realms issued at `{public_url}/realms/{realm}`.
pub fn payload_check(public_url: &str, policy: SigningPolicy) -> PayloadCheck {
    let public_url = public_url.trim_end_matches('/').to_owned();
    Arc::new(move |realm, purpose, typ, payload, now| {
        check(&public_url, policy, realm, purpose, typ, payload, now)
    })
}

fn check(
    public_url: &str,
    policy: SigningPolicy,
    realm: &RealmId,
    purpose: KeyPurpose,
    typ: &str,
    payload: &str,
    now: UnixTime,
) -> Result<(), &'static str> {
    if payload.len() > MAX_PAYLOAD {
        return Err(NOT_THE_REALMS);
    }
    let bytes = B64.decode(payload).map_err(|_| NOT_THE_REALMS)?;
    // Read as validation reads a token: a payload with two `iss` (relying parties disagree on
    // which counts) is no token of the realm's.
    if !crate::jose::is_strict_claims(&bytes) {
        return Err(NOT_THE_REALMS);
    }
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| NOT_THE_REALMS)?;
    let claims = claims.as_object().ok_or(NOT_THE_REALMS)?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    let number = |k: &str| claims.get(k).and_then(Value::as_i64);
    if text("iss") != Some(issuer_for(public_url, realm).as_str()) {
        return Err(NOT_THE_REALMS);
    }
    let (Some(iat), Some(exp)) = (number("iat"), number("exp")) else {
        return Err(NOT_THE_REALMS);
    };
    if (iat - now).abs() > policy.leeway {
        return Err(LIFETIME);
    }
    let ttl = match (purpose, typ) {
        (KeyPurpose::AccessToken, "at+jwt") => {
            if text("tid") != Some(realm.as_str()) || text("jti").is_none() {
                return Err(NOT_THE_REALMS);
            }
            let served: Vec<String> = Audience::ALL.iter().map(|a| a.uri(public_url)).collect();
            let aud = claims
                .get("aud")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .ok_or(AUDIENCE)?;
            if !aud
                .iter()
                .all(|a| a.as_str().is_some_and(|a| served.iter().any(|s| s == a)))
            {
                return Err(AUDIENCE);
            }
            policy.access_ttl
        }
        (KeyPurpose::IdToken, "JWT") => {
            // An ID token's audience is the client it was issued to; the ledger and the
            // client's registration are the issuer's to check, not the signer's.
            if text("aud").is_none_or(str::is_empty) {
                return Err(AUDIENCE);
            }
            policy.id_ttl
        }
        _ => return Err(NOT_THE_REALMS),
    };
    if exp <= iat || exp - iat > ttl {
        return Err(LIFETIME);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const URL: &str = "https://keypost.test";
    const NOW: i64 = 1_800_000_000;
    const POLICY: SigningPolicy = SigningPolicy {
        access_ttl: 600,
        id_ttl: 600,
        leeway: 30,
    };

    fn access() -> Value {
        json!({"iss": "https://keypost.test/realms/contoso", "sub": "u1", "tid": "contoso",
            "aud": ["https://keypost.test/mail", "https://keypost.test/userinfo"],
            "iat": NOW, "nbf": NOW, "exp": NOW + 600, "jti": "j1", "client_id": "app", "scope": "mail"})
    }

    fn run(purpose: KeyPurpose, typ: &str, claims: &Value) -> Result<(), &'static str> {
        let realm = RealmId::new("contoso").unwrap();
        let payload = B64.encode(serde_json::to_vec(claims).unwrap());
        payload_check(URL, POLICY)(&realm, purpose, typ, &payload, NOW)
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    #[test]
    fn the_realms_own_access_token_is_signed() {
        assert_eq!(run(KeyPurpose::AccessToken, "at+jwt", &access()), Ok(()));
    }

    #[test]
    fn a_token_the_issuer_would_never_issue_is_refused() {
        let a = KeyPurpose::AccessToken;
        for (claims, why) in [
            (
                with(
                    access(),
                    "iss",
                    json!("https://keypost.test/realms/fabrikam"),
                ),
                NOT_THE_REALMS,
            ),
            (
                with(access(), "iss", json!("https://evil.test/realms/contoso")),
                NOT_THE_REALMS,
            ),
            (with(access(), "tid", json!("fabrikam")), NOT_THE_REALMS),
            (
                with(access(), "aud", json!(["https://other.test/api"])),
                AUDIENCE,
            ),
            (with(access(), "aud", json!([])), AUDIENCE),
            (
                with(access(), "aud", json!("https://keypost.test/mail")),
                AUDIENCE,
            ),
            (with(access(), "exp", json!(NOW + 365 * 86_400)), LIFETIME),
            (with(access(), "exp", json!(NOW)), LIFETIME),
            (with(access(), "iat", json!(NOW - 3600)), LIFETIME),
            (with(access(), "jti", json!(null)), NOT_THE_REALMS),
        ] {
            assert_eq!(run(a, "at+jwt", &claims), Err(why), "{claims}");
        }
        assert_eq!(run(a, "JWT", &access()), Err(NOT_THE_REALMS));
        assert_eq!(
            run(KeyPurpose::Audit, "at+jwt", &access()),
            Err(NOT_THE_REALMS)
        );
        let realm = RealmId::new("contoso").unwrap();
        let check = payload_check(URL, POLICY);
        assert_eq!(
            check(&realm, a, "at+jwt", "not base64!", NOW),
            Err(NOT_THE_REALMS)
        );
        assert_eq!(
            check(&realm, a, "at+jwt", &B64.encode("[1]"), NOW),
            Err(NOT_THE_REALMS)
        );
        // Two `iss`, the realm's last: read by serde_json alone, the last would count.
        let twice = access().to_string().replacen(
            '{',
            r#"{"iss":"https://keypost.test/realms/fabrikam","#,
            1,
        );
        assert_eq!(
            check(&realm, a, "at+jwt", &B64.encode(twice), NOW),
            Err(NOT_THE_REALMS)
        );
    }

    #[test]
    fn id_tokens_name_their_client_and_keep_their_lifetime() {
        let id = json!({"iss": "https://keypost.test/realms/contoso", "sub": "u1", "aud": "app",
            "iat": NOW, "exp": NOW + 600});
        assert_eq!(run(KeyPurpose::IdToken, "JWT", &id), Ok(()));
        assert_eq!(
            run(
                KeyPurpose::IdToken,
                "JWT",
                &with(id.clone(), "exp", json!(NOW + 86_400))
            ),
            Err(LIFETIME)
        );
        assert_eq!(
            run(KeyPurpose::IdToken, "JWT", &with(id, "aud", json!(""))),
            Err(AUDIENCE)
        );
    }
}
