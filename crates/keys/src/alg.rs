//! The JOSE signature algorithms Keypost signs and verifies with. Anything else — `none`,
//! the HMAC family, ES384/512 — is not representable, so it cannot be allowed by mistake.

use std::fmt;

use aws_lc_rs::signature as sig;

/// A JWS algorithm Keypost supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037). The default for access tokens: fast, deterministic.
    EdDSA,
    /// ECDSA P-256 with SHA-256, JOSE raw `r‖s` signatures.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256. The OIDC default for ID tokens.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
}

impl Algorithm {
    /// All supported algorithms.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::PS256,
    ];

    /// The JOSE `alg` name. Matching is exact and case-sensitive (RFC 7515 §4.1.1).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }

    /// Parses a JOSE `alg` name, exactly.
    pub fn from_jose(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether this is an RSA algorithm (the key type is RSA).
    pub fn is_rsa(self) -> bool {
        matches!(self, Algorithm::RS256 | Algorithm::PS256)
    }

    pub(crate) fn verification(self) -> &'static dyn sig::VerificationAlgorithm {
        match self {
            Algorithm::EdDSA => &sig::ED25519,
            Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
            // 2048-bit minimum: weaker keys are refused at import, and again here.
            Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, crate::Error> {
        Self::from_jose(s).ok_or_else(|| crate::Error::UnsupportedAlgorithm(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_names_parse() {
        assert_eq!(Algorithm::from_jose("ES256"), Some(Algorithm::ES256));
        for bad in [
            "none", "None", "NONE", "HS256", "es256", "eddsa", "ES384", "",
        ] {
            assert_eq!(Algorithm::from_jose(bad), None, "{bad}");
        }
    }
}
