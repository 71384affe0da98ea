//! The resource side: access tokens presented to Keypost itself (userinfo, the gate's
//! refusal summaries), token revocation and logout.

use audit::{Event, Operation, Source};
use serde_json::{Value, json};
use store::{Client, Jti, RealmId, TokenKind, UnixTime};
use tokens::{Principal, RefreshToken};

use super::{Identity, ct_eq, session_id_of};
use crate::{Error, OAuthError};

impl Identity {
    /// Writes the summaries of refused-token windows that ended ([`tokens::Gate`]).
    pub fn flush_refusal_summaries(&self, now: UnixTime) -> Result<usize, tokens::GateError> {
        self.gate.flush_refusal_summaries(now)
    }

    /// Writes every refused-token summary, ended or not (at shutdown).
    pub fn flush_all_refusal_summaries(&self, now: UnixTime) -> Result<usize, tokens::GateError> {
        self.gate.flush_all_refusal_summaries(now)
    }

    /// The one token edge ([`tokens::Gate::authenticate`], which audits every refusal), in
    /// OAuth's error form: `challenge` names the protected resource in `WWW-Authenticate`.
    pub(crate) fn authenticate(
        &self,
        presented: tokens::Presentation<'_>,
        access: &tokens::Access<'_>,
        challenge: &str,
    ) -> Result<Principal, OAuthError> {
        match self.gate.authenticate(presented, access) {
            Ok(a) => Ok(a.principal),
            Err(tokens::GateError::NoCredential) => Err(OAuthError::no_token(challenge)),
            Err(tokens::GateError::Rejected(tokens::Rejection::InsufficientScope)) => Err(
                OAuthError::insufficient_scope(challenge, access.scope.unwrap_or_default()),
            ),
            Err(tokens::GateError::Rejected(_)) => Err(OAuthError::invalid_token(challenge)),
            Err(other) => {
                tracing::error!(error = %other, "bearer validation unavailable");
                Err(OAuthError::unavailable())
            }
        }
    }

    /// OIDC userinfo for a validated principal.
    pub(crate) fn userinfo(&self, p: &Principal) -> Result<Value, OAuthError> {
        let mut out = json!({"sub": p.subject()});
        if let Some(id) = p.account() {
            let a = self
                .store
                .get_account(&id)
                .map_err(Error::from)?
                .ok_or_else(|| OAuthError::invalid_token(p.realm().as_str()))?;
            if p.has_scope("email") {
                out["email"] = json!(a.email);
                out["email_verified"] = json!(true);
            }
            if p.has_scope("profile") {
                out["name"] = json!(a.display_name);
                out["preferred_username"] = json!(a.email);
            }
        }
        Ok(out)
    }

    /// RFC 7009 revocation. Unknown or foreign tokens are ignored (the response is the same).
    pub(crate) fn revoke(
        &self,
        realm: &RealmId,
        client: &Client,
        token: &str,
        source: &Source,
        now: UnixTime,
    ) -> Result<(), OAuthError> {
        let jti = match RefreshToken::parse(token) {
            Some(rt) => Some(rt.jti),
            // An access or ID token: find its jti without trusting anything else in it; the
            // ledger hash comparison below decides whether it is really ours.
            None => tokens::fuzzing::parse_compact(token, &mut Vec::new())
                .ok()
                .and_then(|j| j.claims.jti.as_str().and_then(|s| Jti::new(s).ok())),
        };
        let Some(jti) = jti else { return Ok(()) };
        let Some(e) = self.store.get_token(&jti).map_err(Error::from)? else {
            return Ok(());
        };
        if !ct_eq(&e.token_hash, &tokens::token_hash(token))
            || &e.realm != realm
            || e.client_id != client.client_id
        {
            return Ok(());
        }
        // Revoking a refresh token ends the grant: its family's access tokens go too.
        match (&e.kind, &e.family_id) {
            (TokenKind::Refresh, Some(f)) => {
                self.store.revoke_family(f, now).map_err(Error::from)?;
            }
            _ => {
                self.store.revoke_token(&jti, now).map_err(Error::from)?;
            }
        }
        self.audit
            .record(
                Event::success(Operation::TokenRevoked)
                    .realm(realm)
                    .client(client.client_id.as_str())
                    .jti(jti.as_str())
                    .source(source)
                    .detail("kind", e.kind.as_str()),
                now,
            )
            .map_err(Error::from)?;
        Ok(())
    }

    /// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) for the browser holding
    /// `cookie`: its session ends if the user `confirmed` (our own form, CSRF-checked), or if
    /// a valid `id_token_hint` names that very session (the application the user signs out of,
    /// in the same browser). Anything else would let whoever holds a user's ID token, or any
    /// site linking here, sign them out of everything: the browser is asked to confirm
    /// instead, and a hinted session other than the browser's own is never ended here.
    pub(crate) fn logout(
        &self,
        realm: &RealmId,
        cookie: Option<&str>,
        id_token_hint: Option<&str>,
        confirmed: bool,
        source: &Source,
        now: UnixTime,
    ) -> Result<Logout, OAuthError> {
        let mut hinted_session = None;
        let mut client = None;
        if let Some(hint) = id_token_hint
            && let Ok(j) = tokens::fuzzing::parse_compact(hint, &mut Vec::new())
        {
            let jti = j.claims.jti.as_str().and_then(|s| Jti::new(s).ok());
            if let Some(e) = jti.and_then(|jti| self.store.get_token(&jti).ok().flatten())
                && ct_eq(&e.token_hash, &tokens::token_hash(hint))
                && e.kind == TokenKind::Id
                && &e.realm == realm
            {
                hinted_session = e.session_id.clone();
                client = self.store.get_client(realm, &e.client_id).ok().flatten();
            }
        }
        let browser = cookie
            .and_then(session_id_of)
            .and_then(|sid| self.store.get_session(&sid).ok().flatten())
            .filter(|s| &s.realm == realm && s.revoked_at.is_none() && s.expires_at > now);
        let Some(session) = browser else {
            return Ok(Logout {
                client,
                outcome: LogoutOutcome::NothingToEnd,
            });
        };
        if !confirmed && hinted_session.as_ref() != Some(&session.id) {
            return Ok(Logout {
                client,
                outcome: LogoutOutcome::AskFirst,
            });
        }
        // The application's own session too, if the hint names another of the same user
        // (one this browser signed in to before a fresh sign-in replaced its cookie).
        let hinted_too = hinted_session
            .filter(|h| h != &session.id)
            .and_then(|h| self.store.get_session(&h).ok().flatten())
            .filter(|h| &h.realm == realm && h.account == session.account);
        for s in std::iter::once(&session).chain(hinted_too.as_ref()) {
            if self.store.revoke_session(&s.id, now).map_err(Error::from)? {
                self.audit
                    .record(
                        Event::success(Operation::SessionEnded)
                            .realm(realm)
                            .target(s.account.as_str())
                            .source(source),
                        now,
                    )
                    .map_err(Error::from)?;
            }
        }
        Ok(Logout {
            client,
            outcome: LogoutOutcome::Ended,
        })
    }
}

/// What a logout request did.
#[derive(Debug)]
pub(crate) struct Logout {
    /// The client the ID token hint names, if it was one of ours.
    pub client: Option<Client>,
    pub outcome: LogoutOutcome,
}

/// See [`Identity::logout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogoutOutcome {
    /// The browser's session ended.
    Ended,
    /// The browser has a session, but nothing shows the user wants it ended: ask them.
    AskFirst,
    /// The browser has no live session here.
    NothingToEnd,
}
