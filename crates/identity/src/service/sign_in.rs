//! Signing in: the password check with its throttling per account and per source, the
//! password change a temporary password demands, and the browser sessions sign-in starts.

use audit::{Event, Operation, Source};
use store::{Account, AuditQuery, ClientId, RealmId, Session, UnixTime};
use zeroize::Zeroizing;

use super::{
    ACCOUNT_WIDE_FACTOR, FAMILIAR_FOR, Identity, SIGN_IN_PATIENCE, SessionCookie, random_b64,
    session_id_of,
};
use crate::{Error, OAuthError, password};

impl Identity {
    /// Checks a username and password for `realm`, with throttling per account and per source.
    /// Every outcome is audited. The error text is safe to show.
    pub(crate) fn sign_in(
        &self,
        realm: &RealmId,
        username: &str,
        pw: &str,
        client: &ClientId,
        source: &Source,
        now: UnixTime,
    ) -> Result<Account, OAuthError> {
        let email = username.trim().to_ascii_lowercase();
        // A source counts as its network: an IPv4 address, an IPv6 prefix (a /64 unless
        // configured otherwise), within which an attacker picks new addresses at will.
        let network = source.ip.as_deref().map(|ip| {
            audit::network_key(ip, self.cfg.ipv6_prefix).unwrap_or_else(|| ip.to_owned())
        });
        // This attempt counts against the limits from now until it is recorded (or dropped):
        // the account's from this network, and the network's.
        let keys = vec![
            format!(
                "account:{email} network:{}",
                network.as_deref().unwrap_or("")
            ),
            format!("network:{}", network.as_deref().unwrap_or("")),
            format!("account:{email}"),
        ];
        let since = now - self.cfg.throttle_window;
        let failed = |actor: Option<&str>, net: Option<&str>| AuditQuery {
            operation: Some("SignInFailed".into()),
            since: Some(since),
            actor: actor.map(str::to_owned),
            source_network: net.map(str::to_owned),
            ..Default::default()
        };
        let recorded = || -> Result<[u64; 3], Error> {
            let here = self
                .audit
                .count(&failed(Some(&email), network.as_deref()))?;
            let source = match &network {
                Some(n) => self.audit.count(&failed(None, Some(n)))?,
                None => 0,
            };
            let everywhere = self.audit.count(&failed(Some(&email), None))?;
            Ok([here, source, everywhere])
        };
        let account_wide = self
            .cfg
            .max_failures_per_account
            .saturating_mul(ACCOUNT_WIDE_FACTOR);
        let limits = [
            self.cfg.max_failures_per_account,
            self.cfg.max_failures_per_source,
            account_wide,
        ];
        // While the attempts in progress could still use up what the limits allow, this one
        // waits for them (a short while) and reads the failures again: guesses sent at once
        // are checked no faster than in turn, and correct passwords sent at once are only
        // delayed, not refused.
        let patience = std::time::Instant::now();
        let (_attempt, [per_account, per_source, everywhere], running) = loop {
            // Registered before the failures are read: an attempt that ends in between has
            // recorded its failure by then (it records, then ends), so nothing is missed.
            let (attempt, running) = self.signing_in.begin(keys.clone());
            let recorded = recorded().map_err(OAuthError::from)?;
            let exhausted = (0..keys.len()).any(|i| recorded[i] >= limits[i]);
            let room = (0..keys.len()).all(|i| recorded[i] + running[i] < limits[i]);
            if exhausted || room || patience.elapsed() >= SIGN_IN_PATIENCE {
                let counted = [0, 1, 2].map(|i| recorded[i] + running[i]);
                break (attempt, counted, running);
            }
            drop(attempt);
            self.signing_in.wait(SIGN_IN_PATIENCE / 20);
        };
        let ev = |op| {
            let mut e = Event::failure(op)
                .realm(realm)
                .actor(email.clone())
                .source(source)
                .client(client.as_str());
            if let Some(n) = &network {
                e = e.detail("source_network", n.clone());
            }
            e
        };
        let throttled = |retry_in: Option<i64>| -> Result<Account, OAuthError> {
            self.audit
                .record(
                    ev(Operation::SignInThrottled)
                        .detail("account_failures", per_account)
                        .detail("source_failures", per_source)
                        .detail("retry_in", retry_in),
                    now,
                )
                .map_err(Error::from)?;
            Err(OAuthError::invalid_grant(match retry_in {
                Some(s) => format!("too many failed sign-in attempts; try again in {s} s"),
                None => "too many failed sign-in attempts; try again later".to_owned(),
            }))
        };
        // A network that guessed too often is refused outright for the window.
        if per_source >= self.cfg.max_failures_per_source {
            return throttled(None);
        }
        // An account is never locked for everyone: past its limit, this network may try again
        // only after a delay that doubles with each further failure from it (one attempt at a
        // time), while its owner signs in from their own network as usual.
        let backoff = |count: u64, limit: u64, others: u64, net: Option<&str>| {
            let excess = count - limit;
            let delay = (1i64 << excess.min(20)).min(self.cfg.throttle_window);
            let last = self
                .store
                .latest_audit_time(&failed(Some(&email), net))
                .map_err(Error::from)?
                .unwrap_or(since);
            Ok::<_, OAuthError>(
                (others > 0 || now < last + delay).then(|| (last + delay - now).max(1)),
            )
        };
        if per_account >= self.cfg.max_failures_per_account
            && let Some(wait) = backoff(
                per_account,
                self.cfg.max_failures_per_account,
                running[0],
                network.as_deref(),
            )?
        {
            return throttled(Some(wait));
        }
        // Guesses spread over many networks meet a limit of the account's as a whole, but
        // only where the account has not signed in before: from a network it knows, its owner
        // keeps only that network's own limit.
        if everywhere >= account_wide
            && !self.familiar(&email, network.as_deref(), now)?
            && let Some(wait) = backoff(everywhere, account_wide, running[2], None)?
        {
            return throttled(Some(wait));
        }
        let account = self
            .store
            .find_account_by_email(&email)
            .map_err(Error::from)?;
        let reason = match &account {
            None => {
                password::verify_dummy(pw);
                "unknown account"
            }
            Some(a) if &a.realm != realm => {
                password::verify_dummy(pw);
                "account belongs to another realm"
            }
            Some(a) if !password::verify(pw, &a.password_hash) => "wrong password",
            Some(a) if a.disabled => "account disabled",
            Some(a) => {
                let mut succeeded = Event::success(Operation::SignInSucceeded)
                    .realm(realm)
                    .actor(email.clone())
                    .source(source)
                    .client(client.as_str())
                    .target(a.id.as_str());
                if let Some(n) = &network {
                    succeeded = succeeded.detail("source_network", n.clone());
                }
                self.audit.record(succeeded, now).map_err(Error::from)?;
                return Ok(a.clone());
            }
        };
        self.audit
            .record(ev(Operation::SignInFailed).detail("reason", reason), now)
            .map_err(Error::from)?;
        Err(OAuthError::invalid_grant("invalid username or password"))
    }

    /// Whether `email` signed in successfully from `network` within [`FAMILIAR_FOR`].
    fn familiar(
        &self,
        email: &str,
        network: Option<&str>,
        now: UnixTime,
    ) -> Result<bool, OAuthError> {
        let Some(network) = network else {
            return Ok(false);
        };
        Ok(self
            .store
            .audit_exists(&AuditQuery {
                operation: Some("SignInSucceeded".into()),
                actor: Some(email.to_owned()),
                source_network: Some(network.to_owned()),
                since: Some(now - FAMILIAR_FOR),
                ..Default::default()
            })
            .map_err(Error::from)?)
    }

    /// Replaces a password at sign-in (a temporary one, or by the user's choice): checks the
    /// current password with the usual throttling, then the new one against the policy.
    #[allow(clippy::too_many_arguments)] // The form's fields plus the request context.
    pub(crate) fn change_password_at_sign_in(
        &self,
        realm: &RealmId,
        username: &str,
        current: &str,
        new: &str,
        confirm: &str,
        client: &ClientId,
        source: &Source,
        now: UnixTime,
    ) -> Result<Account, OAuthError> {
        let account = self.sign_in(realm, username, current, client, source, now)?;
        if new != confirm {
            return Err(OAuthError::invalid_request(
                "the new passwords do not match",
            ));
        }
        if new == current {
            return Err(OAuthError::invalid_request(
                "choose a password different from the current one",
            ));
        }
        password::check_policy(new).map_err(|e| OAuthError::invalid_request(e.to_string()))?;
        let change = self
            .store
            .set_password_hash(&account.id, &password::hash(new)?, false, now)
            .map_err(Error::from)?;
        self.audit
            .record(
                Event::success(Operation::PasswordChanged)
                    .realm(realm)
                    .detail("sessions_revoked", change.sessions)
                    .detail("tokens_revoked", change.tokens)
                    .actor(account.email.clone())
                    .target(account.email.clone())
                    .source(source)
                    .detail("at_sign_in", true),
                now,
            )
            .map_err(Error::from)?;
        Ok(Account {
            must_change_password: false,
            credential_epoch: change.epoch,
            ..account
        })
    }

    /// A new sign-in session for `account` as its sign-in found it, and the cookie that
    /// proves it to a browser. Refused ([`store::Error::CredentialsChanged`]) if the
    /// account's password changed or it was disabled since.
    pub(crate) fn new_session(
        &self,
        realm: &RealmId,
        account: &Account,
        now: UnixTime,
    ) -> Result<(Session, SessionCookie), Error> {
        // 256 bits of secret, in the cookie only.
        let secret = Zeroizing::new(random_b64(32)?);
        let id = session_id_of(&secret).ok_or_else(|| Error::Invalid("session id".into()))?;
        let s = Session {
            id,
            realm: realm.clone(),
            account: account.id.clone(),
            auth_time: now,
            expires_at: now + self.cfg.session_ttl,
            revoked_at: None,
            credential_epoch: account.credential_epoch,
        };
        self.store.create_session(&s)?;
        Ok((s, SessionCookie(secret)))
    }

    /// The live session of `realm` whose browser cookie holds `cookie`.
    pub(crate) fn live_session(
        &self,
        realm: &RealmId,
        cookie: &str,
        now: UnixTime,
    ) -> Option<(Session, Account)> {
        let sid = session_id_of(cookie)?;
        let s = self.store.get_session(&sid).ok()??;
        if &s.realm != realm || s.revoked_at.is_some() || s.expires_at <= now {
            return None;
        }
        let a = self.store.get_account(&s.account).ok()??;
        // A temporary password set since the session began must be replaced first; a
        // session from before the account's last credential change vouches for nothing.
        (!a.disabled && !a.must_change_password && a.credential_epoch == s.credential_epoch)
            .then_some((s, a))
    }
}
