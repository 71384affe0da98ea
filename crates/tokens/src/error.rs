//! Minting errors. Validation failures are not errors but [`crate::Rejection`]s.

/// An error while minting tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Key custody failed or refused (no active key, signer refused).
    #[error(transparent)]
    Keys(#[from] keys::Error),
    /// The ledger write failed: the token was not issued.
    #[error("issuance ledger: {0}")]
    Ledger(#[from] store::Error),
    /// A claim could not be encoded.
    #[error("encoding claims: {0}")]
    Encoding(String),
}
