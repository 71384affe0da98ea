//! The authorization endpoint: checking an authorization request and issuing the code a
//! signed-in session gets for it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use store::{AuthCode, RealmId, Session, UnixTime};

use super::{AuthRequest, Identity, random_b64, sha256};
use crate::Error;

impl Identity {
    /// Validates an authorization request (the parts that decide whether we may redirect at
    /// all come first: an unknown client or redirect URI is shown as a page, never redirected).
    pub(crate) fn check_authorize(
        &self,
        realm: &RealmId,
        p: &AuthorizeParams,
    ) -> Result<AuthRequest, AuthorizeError> {
        let client = p
            .client_id
            .as_deref()
            .and_then(|c| self.client(realm, c))
            .ok_or(AuthorizeError::Page("unknown client"))?;
        let redirect_uri = p
            .redirect_uri
            .clone()
            .ok_or(AuthorizeError::Page("redirect_uri is required"))?;
        if !client.redirect_uris.iter().any(|u| u == &redirect_uri) {
            return Err(AuthorizeError::Page(
                "redirect_uri is not registered for this client",
            ));
        }
        let redirect = |code: &'static str, d: &str| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.clone(),
            error: code,
            description: d.to_owned(),
            state: p.state.clone(),
        };
        if p.response_type.as_deref() != Some("code") {
            return Err(redirect(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        if !client.grant_types.iter().any(|g| g == "authorization_code") {
            return Err(redirect(
                "unauthorized_client",
                "client may not use the authorization code flow",
            ));
        }
        match (
            p.code_challenge.as_deref(),
            p.code_challenge_method.as_deref(),
        ) {
            (None, _) if client.secret_hash.is_none() => {
                return Err(redirect(
                    "invalid_request",
                    "PKCE (code_challenge, S256) is required for public clients",
                ));
            }
            (Some(_), m) if m != Some("S256") => {
                return Err(redirect(
                    "invalid_request",
                    "code_challenge_method must be S256",
                ));
            }
            (Some(c), _) if c.len() != 43 || B64.decode(c).is_err() => {
                return Err(redirect(
                    "invalid_request",
                    "code_challenge must be a base64url SHA-256",
                ));
            }
            _ => {}
        }
        let scope = self
            .scope(&client, p.scope.as_deref())
            .map_err(|e| redirect("invalid_scope", &e.description))?;
        self.audience(&p.resource)
            .map_err(|e| redirect("invalid_target", &e.description))?;
        Ok(AuthRequest {
            realm: realm.clone(),
            client,
            redirect_uri,
            scope,
            state: p.state.clone(),
            nonce: p.nonce.clone(),
            code_challenge: p.code_challenge.clone(),
            resource: p.resource.clone(),
        })
    }

    /// Issues an authorization code for a signed-in session; returns the code.
    pub(crate) fn issue_code(
        &self,
        req: &AuthRequest,
        session: &Session,
        now: UnixTime,
    ) -> Result<String, Error> {
        let code = random_b64(32)?;
        self.store.create_auth_code(&AuthCode {
            code_hash: sha256(code.as_bytes()),
            realm: req.realm.clone(),
            client_id: req.client.client_id.clone(),
            account: session.account.clone(),
            session_id: session.id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            scope: req.scope.clone(),
            nonce: req.nonce.clone(),
            code_challenge: req.code_challenge.clone(),
            resource: req.resource.clone(),
            created_at: now,
            expires_at: now + self.cfg.code_ttl,
            used_at: None,
            family_id: None,
        })?;
        Ok(code)
    }
}

impl From<Error> for AuthorizeError {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, "authorization request failed");
        AuthorizeError::Page("the server could not process this request")
    }
}

/// How an authorization request fails: shown as a page (when we cannot trust the redirect
/// URI), or redirected back to the client with an error code.
#[derive(Debug, Clone)]
pub(crate) enum AuthorizeError {
    Page(&'static str),
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

/// The parameters of an authorization request (RFC 6749 §4.1.1, OIDC, PKCE, RFC 8707).
/// The HTTP layer reads them from the query or the login form; the service only checks them.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthorizeParams {
    pub(crate) client_id: Option<String>,
    pub(crate) redirect_uri: Option<String>,
    pub(crate) response_type: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) nonce: Option<String>,
    pub(crate) code_challenge: Option<String>,
    pub(crate) code_challenge_method: Option<String>,
    pub(crate) prompt: Option<String>,
    pub(crate) max_age: Option<String>,
    pub(crate) resource: Vec<String>,
}
