//! Errors of the identity service, and their OAuth wire form (RFC 6749 §5.2).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A domain error (CLI and HTTP).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input that cannot be accepted; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Something with that name exists already.
    #[error("{0} already exists")]
    Conflict(String),
    /// Key custody failed.
    #[error(transparent)]
    Keys(#[from] keys::Error),
    /// Minting failed.
    #[error(transparent)]
    Tokens(#[from] tokens::Error),
    /// Storage failed.
    #[error(transparent)]
    Store(store::Error),
    /// The audit log could not be written.
    #[error(transparent)]
    Audit(#[from] audit::Error),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::Conflict(m) => Error::Conflict(m),
            store::Error::NotFound(m) => Error::NotFound(m),
            other => Error::Store(other),
        }
    }
}

/// An OAuth 2 error response: `{"error": ..., "error_description": ...}` with the status
/// RFC 6749 §5.2 prescribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: StatusCode,
    /// The `error` code.
    pub code: &'static str,
    /// Human-readable description (never secrets, never which validation check failed).
    pub description: String,
    /// `WWW-Authenticate` value, for 401s.
    pub www_authenticate: Option<String>,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            www_authenticate: None,
        }
    }
    /// `invalid_request` (400).
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    /// `invalid_grant` (400).
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }
    /// `invalid_client` (401, with a Basic challenge).
    pub fn invalid_client(realm: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
        e.www_authenticate = Some(format!("Basic realm=\"{realm}\""));
        e
    }
    /// `unauthorized_client` (400).
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", d)
    }
    /// `unsupported_grant_type` (400).
    pub fn unsupported_grant_type(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", d)
    }
    /// `invalid_scope` (400).
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }
    /// `invalid_target` (400, RFC 8707).
    pub fn invalid_target(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", d)
    }
    /// `not_found` (404) for an unknown realm.
    pub fn unknown_realm() -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request", "unknown realm")
    }
    /// `server_error` (500): a bug (a handler panicked); nothing the client can mend.
    pub fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error",
        )
    }
    /// `temporarily_unavailable` (503): signing or storage is down; nothing was issued.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "try again later",
        )
    }
    /// RFC 6750 `invalid_token` (401) for a resource request.
    pub fn invalid_token(realm: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the access token is not valid",
        );
        e.www_authenticate = Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\""));
        e
    }
    /// RFC 6750: no credentials presented at all (401, challenge without an error code).
    pub fn no_token(realm: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "bearer token required",
        );
        e.www_authenticate = Some(format!("Bearer realm=\"{realm}\""));
        e
    }
    /// 403: the principal is valid but may not see this (another tenant's audit log).
    pub fn forbidden(d: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", d)
    }
    /// RFC 6750 `insufficient_scope` (403).
    pub fn insufficient_scope(realm: &str, scope: &str) -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("requires scope {scope}"),
        );
        e.www_authenticate = Some(format!(
            "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\""
        ));
        e
    }
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => OAuthError::invalid_request(m),
            Error::NotFound(m) => OAuthError::invalid_request(format!("{m} not found")),
            Error::Conflict(m) => OAuthError::invalid_request(m),
            // A password reset or a disabled account committed between the sign-in's check
            // and the write of its session or tokens: nothing was created.
            Error::Store(store::Error::CredentialsChanged(_))
            | Error::Tokens(tokens::Error::Ledger(store::Error::CredentialsChanged(_))) => {
                OAuthError::invalid_grant("the account's credentials changed; sign in again")
            }
            other => {
                tracing::error!(error = %other, "request failed");
                OAuthError::unavailable()
            }
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "error_description": self.description});
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(v) = self
            .www_authenticate
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// A task a request waited on failed: a panic in it is a bug (`server_error`, 500, as a panic
/// on the request's own task answers); a task cancelled at shutdown is `temporarily_unavailable`.
impl From<tokio::task::JoinError> for OAuthError {
    fn from(e: tokio::task::JoinError) -> Self {
        if e.is_panic() {
            tracing::error!("a request's task panicked; answered server_error");
            Self::server_error()
        } else {
            Self::unavailable()
        }
    }
}
