//! The refresh grant: checking a presented refresh token, rotating it, and what refusing one
//! writes (its audit record and, for a token used twice, its family's revocation).

use std::sync::Arc;

use audit::{Event, Operation, Source};
use store::{AccountState, Client, ClientId, Jti, RealmId, SessionState, TokenKind, UnixTime};
use tokens::RefreshToken;

use super::{
    Decision, Grantee, Identity, RefreshRefusal, Rotation, SignedIn, ct_eq, refresh_refused_error,
    refused_grant_event,
};
use crate::{Error, OAuthError};

impl Identity {
    /// Checks a presented refresh token; reads only. The inner error names why it was refused
    /// (for the audit log; the client only ever sees `invalid_grant`) and, for a token used
    /// before, the rotation whose family [`Identity::refuse_refresh`] revokes.
    #[allow(clippy::type_complexity)] // Outer: the service failed; inner: the token was refused.
    fn check_refresh(
        &self,
        realm: &RealmId,
        client: &Client,
        token: &str,
        source: &Source,
        now: UnixTime,
    ) -> Result<
        Result<
            (store::LedgerEntry, Option<SessionState>, AccountState),
            (&'static str, Option<Rotation>),
        >,
        OAuthError,
    > {
        let refused = |reason| Ok(Err((reason, None)));
        let Some(rt) = RefreshToken::parse(token) else {
            return refused("Malformed");
        };
        let view = self
            .minter
            .cache()
            .refresh_view(&*self.store, &rt.jti, realm, &client.client_id)
            .map_err(Error::from)?;
        let Some(e) = view.entry else {
            return refused("NotIssued");
        };
        if !ct_eq(&e.token_hash, &tokens::token_hash(token)) || e.kind != TokenKind::Refresh {
            return refused("LedgerMismatch");
        }
        if &e.realm != realm {
            return refused("TenantMismatch");
        }
        if e.client_id != client.client_id {
            return refused("ClientMismatch");
        }
        if e.revoked_at.is_some() {
            return refused("TokenRevoked");
        }
        if e.expires_at <= now {
            return refused("Expired");
        }
        // Rotation marks it used in the same write as its successors (a second use that
        // races this one is caught there, in `finish`).
        if e.used_at.is_some() {
            let rotation = Rotation {
                jti: rt.jti.clone(),
                family: e.family_id.clone(),
                subject: e.subject.clone(),
                source: source.clone(),
            };
            return Ok(Err(("RefreshTokenReused", Some(rotation))));
        }
        let session = match (&e.session_id, view.session) {
            (None, _) => None,
            (Some(_), Some(s))
                if &s.realm == realm && s.revoked_at.is_none() && s.expires_at > now =>
            {
                Some(s)
            }
            (Some(_), _) => return refused("SessionRevoked"),
        };
        match view.account {
            Some(a) if !a.disabled && &a.realm == realm => Ok(Ok((e, session, a))),
            _ => refused("AccountDisabled"),
        }
    }

    /// The refresh-token grant: rotation, and reuse detection that revokes the whole family.
    /// Reads only: a refused token comes back as a [`Decision::RefuseRefresh`], whose writes
    /// are [`Identity::refuse_refresh`]'s.
    pub(crate) fn grant_refresh(
        &self,
        realm: &RealmId,
        client: &Client,
        token: &str,
        scope: Option<&str>,
        source: &Source,
        now: UnixTime,
    ) -> Result<Decision, OAuthError> {
        Self::require_grant(client, "refresh_token")?;
        let (e, session, account) = match self.check_refresh(realm, client, token, source, now)? {
            Ok(ok) => ok,
            Err((reason, reused)) => {
                return Ok(Decision::RefuseRefresh(Box::new(RefreshRefusal {
                    realm: realm.clone(),
                    client: client.client_id.clone(),
                    source: source.clone(),
                    jti: RefreshToken::parse(token).map(|rt| rt.jti),
                    reason,
                    reused,
                    now,
                })));
            }
        };
        // A refresh may narrow the scope, never widen it.
        let granted: Vec<&str> = e.scope.split(' ').collect();
        let scope = match scope {
            Some(s) if !s.trim().is_empty() => {
                let s = self.scope(client, Some(s))?;
                if s.split(' ').any(|x| !granted.contains(&x)) {
                    return Err(OAuthError::invalid_scope("a refresh cannot add scopes"));
                }
                s
            }
            _ => e.scope.clone(),
        };
        let audience = e.audience.split(' ').map(str::to_owned).collect();
        let grantee = Grantee {
            id: &e.subject,
            email: &account.email,
            display_name: &account.display_name,
            role: account.role,
        };
        let signed_in = match (&e.session_id, &session) {
            (Some(id), Some(s)) => Some(SignedIn {
                id,
                auth_time: s.auth_time,
            }),
            _ => None,
        };
        let mut issue = self.issue(
            realm,
            client,
            Some(grantee),
            signed_in,
            scope,
            audience,
            None,
            e.family_id.clone(),
            source,
            now,
        )?;
        issue.req.rotates = Some(e.jti.clone());
        issue.rotates = Some(Rotation {
            jti: e.jti,
            family: e.family_id,
            subject: e.subject,
            source: source.clone(),
        });
        Ok(Decision::Issue(Box::new(issue)))
    }

    /// Writes what a refused refresh token leaves behind — for a reused token its family's
    /// revocation (audited as `RefreshTokenReused`), then the `TokenRejected` record with its
    /// reason — on the blocking pool (durable writes), and returns what the client is told.
    pub(crate) async fn refuse_refresh(self: &Arc<Self>, r: Box<RefreshRefusal>) -> OAuthError {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write_refusal(r))
            .await
            .unwrap_or_else(OAuthError::from)
    }

    fn write_refusal(&self, r: Box<RefreshRefusal>) -> OAuthError {
        let written = r
            .reused
            .as_ref()
            .map_or(Ok(()), |used| {
                self.refresh_reused(&r.realm, &r.client, used, r.now)
            })
            .and_then(|()| {
                self.refresh_refused(
                    &r.realm,
                    &r.client,
                    &r.source,
                    r.jti.as_ref(),
                    r.reason,
                    r.now,
                )
            });
        written.err().unwrap_or_else(refresh_refused_error)
    }

    /// A refresh token presented a second time: the client or a thief holds a copy, so its
    /// whole family is revoked (audited as `RefreshTokenReused`).
    fn refresh_reused(
        &self,
        realm: &RealmId,
        client: &ClientId,
        used: &Rotation,
        now: UnixTime,
    ) -> Result<(), OAuthError> {
        let revoked = match &used.family {
            Some(f) => self.store.revoke_family(f, now).map_err(Error::from)?,
            None => false,
        };
        self.audit
            .record(
                Event::failure(Operation::RefreshTokenReused)
                    .realm(realm)
                    .client(client.as_str())
                    .source(&used.source)
                    .jti(used.jti.as_str())
                    .target(used.subject.clone())
                    .detail("family", used.family.clone())
                    .detail("family_newly_revoked", revoked),
                now,
            )
            .map_err(Error::from)?;
        Ok(())
    }

    /// Audits a refused refresh token with its reason, as every refused token is.
    fn refresh_refused(
        &self,
        realm: &RealmId,
        client: &ClientId,
        source: &Source,
        jti: Option<&Jti>,
        reason: &str,
        now: UnixTime,
    ) -> Result<(), OAuthError> {
        let mut ev = refused_grant_event(realm, client, source, "refresh_token", reason);
        if let Some(jti) = jti {
            ev = ev.jti(jti.as_str());
        }
        self.audit.record(ev, now).map_err(Error::from)?;
        Ok(())
    }
}
