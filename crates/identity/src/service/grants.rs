//! The token endpoint's grants (password, client credentials, authorization code): each
//! decides an [`Issue`], which [`Identity::finish`] mints, records and answers.

use std::sync::Arc;

use audit::{AuditLog, Event, Operation, Source};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keys::Algorithm;
use store::{AccountId, AuthCode, Client, RealmId, Role, UnixTime};
use tokens::{Audience, IdTokenRequest, MintRequest};

use super::{
    DEFAULT_SCOPE, Grantee, Identity, Issue, RefreshRefusal, SignedIn, TokenResponse, ct_eq,
    known_scopes, random_b64, refused_grant_event, sha256,
};
use crate::{Error, OAuthError};

impl Identity {
    /// The scope `client` asked for, checked: scopes Keypost knows, each registered for the
    /// client. Asking for none gets the default, as far as the client is registered for it.
    pub(super) fn scope(
        &self,
        client: &Client,
        requested: Option<&str>,
    ) -> Result<String, OAuthError> {
        let Some(requested) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
            let default: Vec<&str> = DEFAULT_SCOPE
                .split(' ')
                .filter(|s| client.may_have(s))
                .collect();
            return Ok(default.join(" "));
        };
        let out = known_scopes(requested.split_ascii_whitespace())
            .map_err(|s| OAuthError::invalid_scope(format!("unknown scope {s:?}")))?;
        if let Some(s) = out.iter().find(|s| !client.may_have(s)) {
            return Err(OAuthError::invalid_scope(format!(
                "the client is not registered for the scope {s:?}"
            )));
        }
        Ok(out.join(" "))
    }

    /// RFC 8707: `resource` values choose the audience; none means the mail service and
    /// userinfo (the admin API must be asked for by name).
    pub(super) fn audience(&self, resources: &[String]) -> Result<Vec<String>, OAuthError> {
        if resources.is_empty() {
            return Ok(Audience::DEFAULT
                .iter()
                .map(|a| a.uri(&self.cfg.public_url))
                .collect());
        }
        resources
            .iter()
            .map(|r| {
                Audience::from_uri(&self.cfg.public_url, r)
                    .map(|a| a.uri(&self.cfg.public_url))
                    .ok_or_else(|| OAuthError::invalid_target(format!("unknown resource {r:?}")))
            })
            .collect()
    }

    fn realm_alg(&self, realm: &RealmId) -> Result<Algorithm, OAuthError> {
        let r = self
            .store
            .get_realm(realm)
            .map_err(Error::from)?
            .ok_or_else(OAuthError::unknown_realm)?;
        r.access_token_alg
            .parse::<Algorithm>()
            .map_err(|e| Error::from(e).into())
    }

    #[allow(clippy::too_many_arguments)] // One grant's full context; a struct would only rename it.
    pub(super) fn issue(
        &self,
        realm: &RealmId,
        client: &Client,
        account: Option<Grantee<'_>>,
        session: Option<SignedIn<'_>>,
        scope: String,
        audience: Vec<String>,
        nonce: Option<String>,
        family: Option<String>,
        source: &Source,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        let has = |s: &str| scope.split(' ').any(|x| x == s);
        // Reading the audit log is for admins only: a tenant admin (their tenant) or a
        // provider admin (all).
        if has("audit")
            && !account
                .as_ref()
                .is_some_and(|a| matches!(a.role, Role::TenantAdmin | Role::ProviderAdmin))
        {
            return Err(OAuthError::invalid_scope(
                "the audit scope is for admin accounts".to_owned(),
            ));
        }
        let wants_refresh = account.is_some()
            && has("offline_access")
            && client.grant_types.iter().any(|g| g == "refresh_token");
        let id_token = match &account {
            Some(a) if has("openid") => Some(IdTokenRequest {
                alg: client
                    .id_token_alg
                    .as_deref()
                    .and_then(Algorithm::from_jose)
                    .unwrap_or(Algorithm::RS256),
                ttl: self.cfg.id_ttl,
                auth_time: session.as_ref().map_or(now, |s| s.auth_time),
                nonce,
                email: has("email").then(|| a.email.to_owned()),
                name: has("profile").then(|| a.display_name.to_owned()),
            }),
            _ => None,
        };
        let req = MintRequest {
            realm: realm.clone(),
            access_alg: self.realm_alg(realm)?,
            subject: account
                .as_ref()
                .map_or_else(|| client.client_id.to_string(), |a| a.id.to_owned()),
            client_id: client.client_id.clone(),
            scope: scope.clone(),
            audience,
            session: session.map(|s| s.id.clone()),
            access_ttl: self.cfg.access_ttl,
            id_token,
            refresh: wants_refresh.then_some(self.cfg.refresh_ttl),
            family,
            rotates: None,
        };
        let actor = account.map_or_else(|| client.client_id.to_string(), |a| a.email.to_owned());
        let event = Event::success(Operation::TokenIssued)
            .realm(realm)
            .actor(actor)
            .source(source)
            .client(client.client_id.as_str())
            .detail("scope", scope.clone());
        Ok(Issue {
            req,
            event,
            scope,
            now,
            source: source.clone(),
            rotates: None,
        })
    }

    /// Mints what a grant decided ([`Issue`]): the signatures and the durable ledger write
    /// are awaited, so no thread is parked on the signer process or the commit. The ledger
    /// rows and the `TokenIssued` record commit together, before the response exists.
    ///
    /// A refresh runs to its end on a task of its own, even if the client goes away: its
    /// write may find the presented token consumed by a racing use, and that reuse must be
    /// answered (family revoked, audited) whether or not anyone still waits for the response.
    pub(crate) async fn finish(
        self: &Arc<Self>,
        issue: Issue,
    ) -> Result<TokenResponse, OAuthError> {
        if issue.rotates.is_none() {
            return self.mint_issue(issue).await;
        }
        let this = self.clone();
        tokio::spawn(async move { this.mint_issue(issue).await })
            .await
            .unwrap_or_else(|e| Err(e.into()))
    }

    async fn mint_issue(self: &Arc<Self>, issue: Issue) -> Result<TokenResponse, OAuthError> {
        let Issue {
            req,
            event,
            scope,
            now,
            source,
            rotates,
        } = issue;
        let audit = |issued: &tokens::Issued| {
            let event = event
                .jti(issued.access_jti.as_str())
                .kid(issued.kid.as_str())
                .detail("refresh", issued.refresh_token.is_some())
                .detail("id_token", issued.id_token.is_some());
            vec![AuditLog::prepare(event, now)]
        };
        let issued = match (self.minter.mint_async(&req, now, audit).await, rotates) {
            (Ok(issued), _) => issued,
            (Err(tokens::Error::Ledger(store::Error::Consumed(_))), Some(rotation)) => {
                // The refresh token was used between the grant's read and this write: a
                // concurrent second use, handled like any other reuse.
                let refusal = RefreshRefusal {
                    realm: req.realm,
                    client: req.client_id,
                    source: rotation.source.clone(),
                    jti: Some(rotation.jti.clone()),
                    reason: "RefreshTokenReused",
                    reused: Some(rotation),
                    now,
                };
                return Err(self.refuse_refresh(Box::new(refusal)).await);
            }
            (Err(tokens::Error::Ledger(store::Error::FamilyRevoked(_))), rotates) => {
                // The family was revoked after the grant was decided (a reuse raced this
                // refresh, an operator revoked the grant): nothing was issued.
                let Some(rotation) = rotates else {
                    // Without a rotation, only a code exchange issues into a family that
                    // exists already (the code's): a replay of the code revoked it meanwhile.
                    let this = self.clone();
                    let answer = tokio::task::spawn_blocking(move || {
                        let ev = refused_grant_event(
                            &req.realm,
                            &req.client_id,
                            &source,
                            "authorization_code",
                            "TokenRevoked",
                        );
                        match this.audit.record(ev.target(req.subject), now) {
                            Ok(_) => OAuthError::invalid_grant("the grant has been revoked"),
                            Err(e) => Error::from(e).into(),
                        }
                    })
                    .await;
                    return Err(answer.unwrap_or_else(OAuthError::from));
                };
                let refusal = RefreshRefusal {
                    realm: req.realm,
                    client: req.client_id,
                    source: rotation.source,
                    jti: Some(rotation.jti),
                    reason: "TokenRevoked",
                    reused: None,
                    now,
                };
                return Err(self.refuse_refresh(Box::new(refusal)).await);
            }
            (Err(e), _) => {
                tracing::error!(error = %e, realm = %req.realm, "minting failed; nothing was issued");
                return Err(OAuthError::unavailable());
            }
        };
        Ok(TokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer",
            expires_in: issued.expires_in,
            scope,
            refresh_token: issued.refresh_token,
            id_token: issued.id_token,
        })
    }

    pub(super) fn require_grant(client: &Client, grant: &str) -> Result<(), OAuthError> {
        if client.grant_types.iter().any(|g| g == grant) {
            Ok(())
        } else {
            Err(OAuthError::unauthorized_client(format!(
                "client may not use the {grant} grant"
            )))
        }
    }

    /// The password grant, for first-party clients only.
    #[allow(clippy::too_many_arguments)] // The grant's parameters, as RFC 6749 §4.3.2 names them.
    pub(crate) fn grant_password(
        &self,
        realm: &RealmId,
        client: &Client,
        username: &str,
        pw: &str,
        scope: Option<&str>,
        resources: &[String],
        source: &Source,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        if !client.first_party {
            return Err(OAuthError::unauthorized_client(
                "the password grant is only for first-party clients",
            ));
        }
        Self::require_grant(client, "password")?;
        let scope = self.scope(client, scope)?;
        let audience = self.audience(resources)?;
        let account = self.sign_in(realm, username, pw, &client.client_id, source, now)?;
        if account.must_change_password {
            return Err(OAuthError::invalid_grant(
                "the password is temporary and must be changed first: sign in through the browser",
            ));
        }
        // No browser here: the session's cookie is never handed out.
        let (session, _) = self.new_session(realm, &account, now)?;
        self.issue(
            realm,
            client,
            Some((&account).into()),
            Some((&session).into()),
            scope,
            audience,
            None,
            None,
            source,
            now,
        )
    }

    /// The client-credentials grant, for confidential clients acting for themselves.
    pub(crate) fn grant_client_credentials(
        &self,
        realm: &RealmId,
        client: &Client,
        scope: Option<&str>,
        resources: &[String],
        source: &Source,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        if client.secret_hash.is_none() {
            return Err(OAuthError::unauthorized_client(
                "client_credentials needs a confidential client",
            ));
        }
        Self::require_grant(client, "client_credentials")?;
        let scope = self.scope(client, Some(scope.unwrap_or("mail")))?;
        if scope
            .split(' ')
            .any(|s| matches!(s, "openid" | "offline_access" | "profile" | "email"))
        {
            return Err(OAuthError::invalid_scope(
                "user scopes are not available without a user",
            ));
        }
        let audience = self.audience(resources)?;
        self.issue(
            realm, client, None, None, scope, audience, None, None, source, now,
        )
    }

    /// The authorization-code grant, with PKCE and code-replay detection.
    #[allow(clippy::too_many_arguments)] // The grant's parameters, as RFC 6749 §4.1.3 names them.
    pub(crate) fn grant_code(
        &self,
        realm: &RealmId,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        source: &Source,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        Self::require_grant(client, "authorization_code")?;
        let bad =
            || OAuthError::invalid_grant("invalid, expired or already used authorization code");
        // Every refusal is audited with its reason, as a refused refresh token is; the client
        // is told only `invalid_grant` and what it can mend (PKCE, redirect_uri).
        let refuse = |reason: &'static str, account: Option<&AccountId>, answer: OAuthError| {
            let mut ev = refused_grant_event(
                realm,
                &client.client_id,
                source,
                "authorization_code",
                reason,
            );
            if let Some(account) = account {
                ev = ev.target(account.as_str());
            }
            match self.audit.record(ev, now) {
                Ok(_) => answer,
                Err(e) => Error::from(e).into(),
            }
        };
        // RFC 6749 §4.1.2: a replayed code revokes what it issued, wherever it is presented:
        // whoever presents it holds a copy. Through another tenant, the code's own client is
        // named (not the presenter), and the presenter learns only that the code is unknown.
        let replayed = |c: &AuthCode| -> OAuthError {
            let elsewhere = &c.realm != realm;
            if let Some(f) = &c.family_id
                && let Err(e) = self.store.revoke_family(f, now)
            {
                return Error::from(e).into();
            }
            let named = if elsewhere {
                &c.client_id
            } else {
                &client.client_id
            };
            let ev = Event::failure(Operation::AuthCodeReused)
                .realm(&c.realm)
                .client(named.as_str())
                .source(source)
                .target(c.account.as_str())
                .detail("presented_elsewhere", elsewhere);
            if let Err(e) = self.audit.record(ev, now) {
                return Error::from(e).into();
            }
            if elsewhere {
                refuse("CodeUnknown", None, bad())
            } else {
                bad()
            }
        };
        let hash = sha256(code.as_bytes());
        // Read, not used up: a code whose client or PKCE check fails stays good for the
        // client it was issued to (whoever holds a copy must not be able to burn it).
        let Some(c) = self.store.get_auth_code(&hash).map_err(Error::from)? else {
            return Err(refuse("CodeUnknown", None, bad()));
        };
        // Another realm's code is, to this realm, no code at all: refused as unknown here,
        // naming nobody. What it means is recorded in the realm whose user it was, under the
        // code's own client (the presenter's belongs to another tenant).
        let elsewhere = &c.realm != realm;
        if c.used_at.is_some() {
            return Err(replayed(&c));
        }
        if elsewhere {
            let ev = refused_grant_event(
                &c.realm,
                &c.client_id,
                source,
                "authorization_code",
                "CodeRealmMismatch",
            );
            self.audit
                .record(ev.target(c.account.as_str()), now)
                .map_err(Error::from)?;
            return Err(refuse("CodeUnknown", None, bad()));
        }
        let account = Some(&c.account);
        if c.client_id != client.client_id {
            return Err(refuse("CodeClientMismatch", account, bad()));
        }
        if c.expires_at <= now {
            return Err(refuse("CodeExpired", account, bad()));
        }
        if redirect_uri != Some(c.redirect_uri.as_str()) {
            let answer =
                OAuthError::invalid_grant("redirect_uri does not match the authorization request");
            return Err(refuse("RedirectUriMismatch", account, answer));
        }
        match (&c.code_challenge, verifier) {
            (Some(challenge), Some(v)) => {
                let ok_shape = (43..=128).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                if !ok_shape
                    || !ct_eq(
                        challenge.as_bytes(),
                        B64.encode(sha256(v.as_bytes())).as_bytes(),
                    )
                {
                    let answer = OAuthError::invalid_grant("PKCE verification failed");
                    return Err(refuse("PkceFailed", account, answer));
                }
            }
            (Some(_), None) => {
                let answer = OAuthError::invalid_grant("code_verifier is required");
                return Err(refuse("PkceVerifierMissing", account, answer));
            }
            // A verifier without a challenge is a downgrade attempt (RFC 9700 §2.1.1).
            (None, Some(_)) => {
                let answer = OAuthError::invalid_grant("no code_challenge was sent for this code");
                return Err(refuse("PkceDowngrade", account, answer));
            }
            (None, None) => {}
        }
        let Some(session) = self
            .store
            .get_session(&c.session_id)
            .map_err(Error::from)?
            .filter(|s| s.revoked_at.is_none() && s.expires_at > now)
        else {
            return Err(refuse("SessionRevoked", account, bad()));
        };
        let Some(account) = self
            .store
            .get_account(&c.account)
            .map_err(Error::from)?
            .filter(|a| !a.disabled)
        else {
            return Err(refuse("AccountDisabled", account, bad()));
        };
        let audience = self.audience(&c.resource)?;
        // Used up now, with the family its tokens will join recorded in the same write: a
        // replay from here on revokes that family, and a replay that won the race makes this
        // exchange the replay.
        let family = random_b64(16).map_err(OAuthError::from)?;
        if !self
            .store
            .consume_auth_code(&hash, now, &family)
            .map_err(Error::from)?
        {
            let c = self
                .store
                .get_auth_code(&hash)
                .map_err(Error::from)?
                .unwrap_or(c);
            return Err(replayed(&c));
        }
        self.issue(
            realm,
            client,
            Some((&account).into()),
            Some((&session).into()),
            c.scope,
            audience,
            c.nonce,
            Some(family),
            source,
            now,
        )
    }
}
