//! Key custody errors. None of them carries key material.

/// An error from key custody.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The algorithm name is not one Keypost signs with.
    #[error("unsupported algorithm {0:?} (expected EdDSA, ES256, RS256 or PS256)")]
    UnsupportedAlgorithm(String),
    /// An imported key could not be parsed or is too weak.
    #[error("key rejected: {0}")]
    KeyRejected(String),
    /// A key with this kid exists already (possibly in another realm).
    #[error("key {0} already exists; a key is bound to exactly one realm")]
    DuplicateKey(String),
    /// The key-encryption key is missing, malformed or readable by others.
    #[error("key-encryption key: {0}")]
    Kek(String),
    /// A sealed key failed to open: wrong key-encryption key or tampered data.
    #[error("sealed key {0} does not open with this key-encryption key")]
    Unseal(String),
    /// The signer refused a request (other realm, revoked, not active, unknown).
    #[error("signer refused: {0}")]
    Refused(&'static str),
    /// No usable signing key for the realm and purpose.
    #[error("no active {purpose} key for realm {realm}")]
    NoActiveKey {
        /// Realm.
        realm: String,
        /// Purpose.
        purpose: String,
    },
    /// The realm does not exist.
    #[error("unknown realm {0}")]
    UnknownRealm(String),
    /// A cryptographic operation failed unexpectedly.
    #[error("cryptographic failure")]
    Crypto,
    /// The signer process cannot be reached (it is restarting, or down).
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    /// The PKCS#11 module or token failed or is misconfigured.
    #[error("HSM: {0}")]
    Hsm(String),
    /// The signer's TLS configuration (certificates, key, address) is unusable.
    #[error("signer TLS: {0}")]
    Tls(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl From<aws_lc_rs::error::Unspecified> for Error {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Error::Crypto
    }
}
