//! Storage errors: what a caller can act on (a conflict, a missing row) apart from what it
//! cannot (the database itself failed).

/// An error from a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A row with the same unique key exists already.
    #[error("already exists: {0}")]
    Conflict(String),
    /// The row a mutation names does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Stored data does not decode into the model (a bug or a hand-edited database).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A write that consumes a single-use row (a refresh token being rotated) found it
    /// consumed already: nothing of that write was stored.
    #[error("used already: {0}")]
    Consumed(String),
    /// A write that issues tokens into a refresh family found the family revoked, or the
    /// refresh token it rotates no longer live (revoked, its session ended, its account
    /// disabled): nothing of that write was stored.
    #[error("token family revoked: {0}")]
    FamilyRevoked(String),
    /// A write under a sign-in session found the account's credentials changed since that
    /// sign-in (a new password, the account disabled), or the session ended: nothing of that
    /// write was stored. Whoever authenticated with the old credentials gets nothing more.
    #[error("credentials changed since the sign-in: {0}")]
    CredentialsChanged(String),
    /// The store configuration names no backend this build has (an unknown URL scheme).
    #[error("store configuration: {0}")]
    Config(String),
    /// The backend failed.
    #[error("database error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, msg)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::Conflict(msg.clone().unwrap_or_else(|| e.to_string()))
            }
            _ => Error::Backend(e.to_string()),
        }
    }
}
