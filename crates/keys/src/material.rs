//! Private key material in memory, public JWKs and RFC 7638 thumbprints.
//!
//! [`PrivateKey`] is crate-private: it is built from PKCS#8 bytes only inside the signer and
//! during generation/import, and dropped (AWS-LC cleanses freed key memory) as soon as it has
//! been sealed or loaded. It implements no `Debug` beyond its algorithm.

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPairComponents, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Algorithm, Error};

/// A public JSON Web Key as Keypost publishes it. Private members are not representable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP`, `EC` or `RSA`.
    pub kty: String,
    /// Key id (the RFC 7638 thumbprint).
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// The one algorithm this key is pinned to.
    pub alg: String,
    /// Curve (`Ed25519`, `P-256`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    /// OKP public key or EC x coordinate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
}

/// A JWK Set (RFC 7517 §5): what `{issuer}/jwks` serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl Jwk {
    /// The RFC 7638 thumbprint of this key: what its kid must be.
    pub fn thumbprint(&self) -> String {
        thumbprint(self)
    }

    /// The JWK of a public key of `alg`, with its RFC 7638 thumbprint as kid. `material` is
    /// the raw Ed25519 key, the uncompressed SEC1 P-256 point, or the RSA modulus and exponent
    /// (big-endian, leading zeros stripped).
    pub(crate) fn from_public(alg: Algorithm, material: &PublicMaterial) -> Jwk {
        let mut jwk = Jwk {
            kty: String::new(),
            kid: String::new(),
            use_: "sig".into(),
            alg: alg.as_str().into(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
        };
        match (alg, material) {
            (Algorithm::EdDSA, PublicMaterial::Raw(key)) => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(B64.encode(key));
            }
            (_, PublicMaterial::Raw(point)) => {
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = point.get(1..33).map(|x| B64.encode(x));
                jwk.y = point.get(33..65).map(|y| B64.encode(y));
            }
            (_, PublicMaterial::Rsa { n, e }) => {
                jwk.kty = "RSA".into();
                jwk.n = Some(B64.encode(n));
                jwk.e = Some(B64.encode(e));
            }
        }
        jwk.kid = thumbprint(&jwk);
        jwk
    }

    /// The raw public key bytes the verifier takes: the 32-byte Ed25519 key, the uncompressed
    /// SEC1 P-256 point, or (for RSA) the big-endian modulus and exponent.
    pub(crate) fn verification_material(&self) -> Option<PublicMaterial> {
        let dec = |s: &Option<String>| s.as_deref().and_then(|v| B64.decode(v).ok());
        match self.kty.as_str() {
            "OKP" => Some(PublicMaterial::Raw(dec(&self.x)?)),
            "EC" => {
                let (x, y) = (dec(&self.x)?, dec(&self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Some(PublicMaterial::Raw(point))
            }
            "RSA" => Some(PublicMaterial::Rsa {
                n: dec(&self.n)?,
                e: dec(&self.e)?,
            }),
            _ => None,
        }
    }
}

pub(crate) enum PublicMaterial {
    Raw(Vec<u8>),
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// A private key, usable for signing. Never leaves this crate.
pub(crate) enum PrivateKey {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
    Rsa(RsaKeyPair, Algorithm),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.alg())
    }
}

impl PrivateKey {
    /// Generates a key for `alg`, returning it with its PKCS#8 encoding (to be sealed).
    pub(crate) fn generate(alg: Algorithm) -> Result<(Self, Zeroizing<Vec<u8>>), Error> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Algorithm::EdDSA => {
                Zeroizing::new(Ed25519KeyPair::generate_pkcs8(&rng)?.as_ref().to_vec())
            }
            Algorithm::ES256 => Zeroizing::new(
                EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?
                    .as_ref()
                    .to_vec(),
            ),
            Algorithm::RS256 | Algorithm::PS256 => {
                let kp = RsaKeyPair::generate(KeySize::Rsa2048)?;
                Zeroizing::new(kp.as_der()?.as_ref().to_vec())
            }
        };
        Ok((Self::from_pkcs8(&pkcs8, alg)?, pkcs8))
    }

    /// Parses PKCS#8 DER for a known algorithm.
    pub(crate) fn from_pkcs8(der: &[u8], alg: Algorithm) -> Result<Self, Error> {
        let rej = |e: aws_lc_rs::error::KeyRejected| Error::KeyRejected(e.to_string());
        Ok(match alg {
            Algorithm::EdDSA => PrivateKey::Ed25519(Ed25519KeyPair::from_pkcs8(der).map_err(rej)?),
            Algorithm::ES256 => PrivateKey::P256(
                EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(rej)?,
            ),
            Algorithm::RS256 | Algorithm::PS256 => {
                let kp = RsaKeyPair::from_pkcs8(der).map_err(rej)?;
                check_rsa_size(&kp)?;
                PrivateKey::Rsa(kp, alg)
            }
        })
    }

    /// Parses an externally generated key: PKCS#8 PEM, or a private JWK. `rsa_alg` chooses
    /// between RS256 and PS256 for RSA keys (the key type alone cannot say).
    pub(crate) fn import(
        bytes: &[u8],
        rsa_alg: Algorithm,
    ) -> Result<(Self, Zeroizing<Vec<u8>>), Error> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| Error::KeyRejected("not UTF-8 text".into()))?;
        let der = if text.trim_start().starts_with('{') {
            jwk_to_pkcs8(text)?
        } else {
            let pem = pem::parse(text).map_err(|e| Error::KeyRejected(format!("PEM: {e}")))?;
            if pem.tag() != "PRIVATE KEY" {
                return Err(Error::KeyRejected(format!(
                    "expected a PKCS#8 \"PRIVATE KEY\" PEM block, found \"{}\" (convert with `openssl pkcs8 -topk8 -nocrypt`)",
                    pem.tag()
                )));
            }
            Zeroizing::new(pem.into_contents())
        };
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            if let Ok(k) = Self::from_pkcs8(&der, alg) {
                return Ok((k, der));
            }
        }
        match RsaKeyPair::from_pkcs8(&der) {
            Ok(kp) => {
                check_rsa_size(&kp)?;
                let alg = if rsa_alg.is_rsa() {
                    rsa_alg
                } else {
                    Algorithm::RS256
                };
                Ok((PrivateKey::Rsa(kp, alg), der))
            }
            Err(_) => Err(Error::KeyRejected(
                "not an Ed25519, P-256 or RSA private key".into(),
            )),
        }
    }

    pub(crate) fn alg(&self) -> Algorithm {
        match self {
            PrivateKey::Ed25519(_) => Algorithm::EdDSA,
            PrivateKey::P256(_) => Algorithm::ES256,
            PrivateKey::Rsa(_, a) => *a,
        }
    }

    /// The public half as a JWK, with its thumbprint as kid.
    pub(crate) fn public_jwk(&self) -> Jwk {
        let material = match self {
            PrivateKey::Ed25519(kp) => PublicMaterial::Raw(kp.public_key().as_ref().to_vec()),
            PrivateKey::P256(kp) => PublicMaterial::Raw(kp.public_key().as_ref().to_vec()),
            PrivateKey::Rsa(kp, _) => {
                let pk = kp.public_key();
                PublicMaterial::Rsa {
                    n: pk.modulus().big_endian_without_leading_zero().to_vec(),
                    e: pk.exponent().big_endian_without_leading_zero().to_vec(),
                }
            }
        };
        Jwk::from_public(self.alg(), &material)
    }

    /// Signs `input`, returning the JOSE signature encoding.
    pub(crate) fn sign(&self, input: &[u8]) -> Result<Vec<u8>, Error> {
        let rng = SystemRandom::new();
        Ok(match self {
            PrivateKey::Ed25519(kp) => kp.sign(input).as_ref().to_vec(),
            PrivateKey::P256(kp) => kp.sign(&rng, input)?.as_ref().to_vec(),
            PrivateKey::Rsa(kp, alg) => {
                let padding: &'static dyn sig::RsaEncoding = match alg {
                    Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0u8; kp.public_modulus_len()];
                kp.sign(padding, &rng, input, &mut out)?;
                out
            }
        })
    }
}

fn check_rsa_size(kp: &RsaKeyPair) -> Result<(), Error> {
    if kp.public_modulus_len() < 256 {
        return Err(Error::KeyRejected(format!(
            "RSA key of {} bits is too small; at least 2048 required",
            kp.public_modulus_len() * 8
        )));
    }
    Ok(())
}

/// RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order.
pub(crate) fn thumbprint(jwk: &Jwk) -> String {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    // The members are base64url or fixed names, so no JSON escaping is ever needed.
    let canonical = match jwk.kty.as_str() {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s(&jwk.crv),
            s(&jwk.x),
            s(&jwk.y)
        ),
        "OKP" => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            s(&jwk.crv),
            s(&jwk.x)
        ),
        _ => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s(&jwk.e), s(&jwk.n)),
    };
    B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// A private JWK as found in an import file. Its secret members are zeroized on drop.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
struct PrivateJwk {
    #[zeroize(skip)]
    kty: String,
    #[zeroize(skip)]
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    p: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    dp: Option<String>,
    #[serde(default)]
    dq: Option<String>,
    #[serde(default)]
    qi: Option<String>,
}

fn jwk_to_pkcs8(text: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let jwk: PrivateJwk =
        serde_json::from_str(text).map_err(|e| Error::KeyRejected(format!("JWK: {e}")))?;
    let field = |v: &Option<String>, name: &str| -> Result<Zeroizing<Vec<u8>>, Error> {
        let v = v
            .as_deref()
            .ok_or_else(|| Error::KeyRejected(format!("JWK lacks \"{name}\"")))?;
        B64.decode(v)
            .map(Zeroizing::new)
            .map_err(|_| Error::KeyRejected(format!("JWK \"{name}\" is not base64url")))
    };
    let rej = |e: aws_lc_rs::error::KeyRejected| Error::KeyRejected(e.to_string());
    let der = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("OKP", Some("Ed25519")) => {
            let kp = Ed25519KeyPair::from_seed_and_public_key(
                &field(&jwk.d, "d")?,
                &field(&jwk.x, "x")?,
            )
            .map_err(rej)?;
            kp.to_pkcs8v1()?.as_ref().to_vec()
        }
        ("EC", Some("P-256")) => {
            let mut point = vec![4u8];
            point.extend_from_slice(&field(&jwk.x, "x")?);
            point.extend_from_slice(&field(&jwk.y, "y")?);
            let kp = EcdsaKeyPair::from_private_key_and_public_key(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                &field(&jwk.d, "d")?,
                &point,
            )
            .map_err(rej)?;
            kp.to_pkcs8v1()?.as_ref().to_vec()
        }
        ("RSA", _) => {
            let c = KeyPairComponents {
                public_key: PublicKeyComponents {
                    n: field(&jwk.n, "n")?,
                    e: field(&jwk.e, "e")?,
                },
                d: field(&jwk.d, "d")?,
                p: field(&jwk.p, "p")?,
                q: field(&jwk.q, "q")?,
                dP: field(&jwk.dp, "dp")?,
                dQ: field(&jwk.dq, "dq")?,
                qInv: field(&jwk.qi, "qi")?,
            };
            let kp = RsaKeyPair::from_components(&c).map_err(rej)?;
            kp.as_der()?.as_ref().to_vec()
        }
        (kty, crv) => {
            return Err(Error::KeyRejected(format!(
                "unsupported JWK kty {kty:?} crv {crv:?} (Ed25519, P-256 or RSA)"
            )));
        }
    };
    Ok(Zeroizing::new(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_generates_signs_and_publishes() {
        for alg in Algorithm::ALL {
            let (key, pkcs8) = PrivateKey::generate(alg).unwrap();
            assert_eq!(key.alg(), alg);
            let jwk = key.public_jwk();
            assert_eq!(jwk.alg, alg.as_str());
            assert_eq!(jwk.kid.len(), 43, "SHA-256 thumbprint, base64url");
            let sig = key.sign(b"input").unwrap();
            let pk = match jwk.verification_material().unwrap() {
                PublicMaterial::Raw(b) => b,
                PublicMaterial::Rsa { .. } => {
                    continue;
                }
            };
            sig::UnparsedPublicKey::new(alg.verification(), pk)
                .verify(b"input", &sig)
                .unwrap();
            // Re-parsing the sealed form gives the same public key.
            let again = PrivateKey::from_pkcs8(&pkcs8, alg).unwrap();
            assert_eq!(again.public_jwk(), jwk);
        }
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = Jwk {
            kty: "RSA".into(),
            kid: String::new(),
            use_: "sig".into(),
            alg: "RS256".into(),
            crv: None,
            x: None,
            y: None,
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
        };
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn import_rejects_garbage_and_foreign_formats() {
        assert!(PrivateKey::import(b"hello", Algorithm::RS256).is_err());
        assert!(
            PrivateKey::import(
                b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                Algorithm::RS256
            )
            .is_err()
        );
        assert!(PrivateKey::import(br#"{"kty":"oct","k":"AAAA"}"#, Algorithm::RS256).is_err());
    }

    #[test]
    fn import_round_trips_a_generated_pem() {
        for alg in Algorithm::ALL {
            let (key, der) = PrivateKey::generate(alg).unwrap();
            let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
            let (imported, _) = PrivateKey::import(pem.as_bytes(), alg).unwrap();
            assert_eq!(imported.public_jwk(), key.public_jwk());
        }
    }
}
