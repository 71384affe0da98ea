//! Who exists: realms (the consumer realm and tenants), their users and registered clients,
//! and the first administrator ([`Identity::bootstrap`]).

use audit::{Event, Operation};
use keys::Algorithm;
use store::{Account, AccountId, Client, ClientId, Realm, RealmId, RealmKind, Role, UnixTime};
use zeroize::Zeroizing;

use super::{
    CLI_CLIENT, CreatedClient, GRANTS, Identity, NewClient, SCOPES, THIRD_PARTY_SCOPES, ct_eq,
    known_scopes, random_b64, sha256,
};
use crate::{Error, OAuthError, password};

impl Identity {
    fn add_cli_client(&self, realm: &RealmId, now: UnixTime) -> Result<(), Error> {
        self.store.create_client(&Client {
            realm: realm.clone(),
            client_id: ClientId::new(CLI_CLIENT).map_err(|e| Error::Invalid(e.to_string()))?,
            name: "Keypost CLI and apps".into(),
            secret_hash: None,
            redirect_uris: vec![],
            grant_types: vec!["password".into(), "refresh_token".into()],
            first_party: true,
            id_token_alg: None,
            created_at: now,
            scopes: None,
        })?;
        Ok(())
    }

    /// Creates the consumer realm (and its keys) if it does not exist yet. Idempotent.
    pub fn ensure_consumers(&self, now: UnixTime) -> Result<(), Error> {
        let id = RealmId::consumers();
        if self.store.get_realm(&id)?.is_none() {
            self.store.create_realm(&Realm {
                id: id.clone(),
                kind: RealmKind::Consumer,
                display_name: "Keypost".into(),
                domains: vec![self.cfg.consumer_domain.to_ascii_lowercase()],
                access_token_alg: Algorithm::EdDSA.as_str().into(),
                created_at: now,
            })?;
            self.add_cli_client(&id, now)?;
        }
        self.ensure_keys(&id, now)?;
        Ok(())
    }

    /// Creates a tenant's enterprise realm with its domains, built-in client and keys.
    pub fn create_tenant(
        &self,
        slug: &str,
        name: Option<&str>,
        domains: &[String],
        alg: Algorithm,
        now: UnixTime,
    ) -> Result<Realm, Error> {
        let id = RealmId::new(slug).map_err(|e| Error::Invalid(e.to_string()))?;
        if id.is_consumers() {
            return Err(Error::Invalid(
                "\"consumers\" is the consumer realm, not a tenant".into(),
            ));
        }
        if domains.is_empty() {
            return Err(Error::Invalid(
                "a tenant needs at least one mail domain (--domain)".into(),
            ));
        }
        let domains = domains
            .iter()
            .map(|d| normalise_domain(d))
            .collect::<Result<Vec<_>, _>>()?;
        if domains.contains(&self.cfg.consumer_domain.to_ascii_lowercase()) {
            return Err(Error::Conflict(format!(
                "domain {} (the consumer domain)",
                self.cfg.consumer_domain
            )));
        }
        let realm = Realm {
            id: id.clone(),
            kind: RealmKind::Tenant,
            display_name: name.unwrap_or(slug).to_owned(),
            domains,
            access_token_alg: alg.as_str().into(),
            created_at: now,
        };
        self.store.create_realm(&realm)?;
        self.add_cli_client(&id, now)?;
        self.ensure_keys(&id, now)?;
        self.audit.record(
            Event::success(Operation::TenantCreated)
                .realm(&id)
                .actor("cli")
                .target(slug),
            now,
        )?;
        Ok(realm)
    }

    /// The realm an address belongs to, by its domain.
    pub fn realm_of_email(&self, email: &str) -> Result<RealmId, Error> {
        let (_, domain) = email
            .rsplit_once('@')
            .ok_or_else(|| Error::Invalid(format!("{email:?} is not an email address")))?;
        self.store
            .realm_for_domain(&domain.to_ascii_lowercase())?
            .ok_or_else(|| Error::NotFound(format!("realm for domain {domain}")))
    }

    /// Creates an account; the realm follows from the address's domain.
    pub fn create_user(
        &self,
        email: &str,
        name: Option<&str>,
        pw: &str,
        role: Role,
        temporary: bool,
        now: UnixTime,
    ) -> Result<Account, Error> {
        let email = normalise_email(email)?;
        let realm = self.realm_of_email(&email)?;
        if role == Role::ProviderAdmin && !realm.is_consumers() {
            return Err(Error::Invalid(
                "provider admins live in the consumers realm".into(),
            ));
        }
        password::check_policy(pw)?;
        let account = Account {
            id: AccountId::new(random_b64(16)?).map_err(|e| Error::Invalid(e.to_string()))?,
            realm: realm.clone(),
            display_name: name
                .map(str::to_owned)
                .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned()),
            email: email.clone(),
            password_hash: password::hash(pw)?,
            disabled: false,
            role,
            created_at: now,
            must_change_password: temporary,
            credential_epoch: 0,
        };
        self.store.create_account(&account).map_err(|e| match e {
            store::Error::Conflict(_) => Error::Conflict(format!("account {email}")),
            other => other.into(),
        })?;
        self.audit.record(
            Event::success(Operation::AccountCreated)
                .realm(&realm)
                .actor("cli")
                .target(&email)
                .detail("role", role.as_str()),
            now,
        )?;
        Ok(account)
    }

    /// An account by email.
    pub fn user(&self, email: &str) -> Result<Account, Error> {
        let email = normalise_email(email)?;
        self.store
            .find_account_by_email(&email)?
            .ok_or_else(|| Error::NotFound(format!("account {email}")))
    }

    /// Accounts, optionally of one realm.
    pub fn users(&self, realm: Option<&RealmId>) -> Result<Vec<Account>, Error> {
        Ok(self.store.list_accounts(realm)?)
    }

    /// Disables an account: it cannot sign in and its tokens stop validating at once.
    pub fn disable_user(&self, email: &str, now: UnixTime) -> Result<Account, Error> {
        let a = self.user(email)?;
        self.store.set_account_disabled(&a.id, true)?;
        self.audit.record(
            Event::success(Operation::AccountDisabled)
                .realm(&a.realm)
                .actor("cli")
                .target(&a.email),
            now,
        )?;
        Ok(Account {
            disabled: true,
            ..a
        })
    }

    /// Replaces an account's password. A `temporary` one must be changed by the user at the
    /// next sign-in, before any token is issued.
    pub fn set_password(
        &self,
        email: &str,
        pw: &str,
        temporary: bool,
        now: UnixTime,
    ) -> Result<(), Error> {
        let a = self.user(email)?;
        password::check_policy(pw)?;
        // The store ends every session and token of the account in the same transaction:
        // whoever held the old password (the reason for an administrator's reset, often) may
        // hold them too, and a sign-in that checked the old password just before gets nothing.
        let change = self
            .store
            .set_password_hash(&a.id, &password::hash(pw)?, temporary, now)?;
        self.audit.record(
            Event::success(Operation::PasswordChanged)
                .realm(&a.realm)
                .actor("cli")
                .target(&a.email)
                .detail("sessions_revoked", change.sessions)
                .detail("tokens_revoked", change.tokens),
            now,
        )?;
        Ok(())
    }

    /// Registers a client. Confidential clients get a 256-bit secret, returned once.
    pub fn create_client(&self, new: NewClient, now: UnixTime) -> Result<CreatedClient, Error> {
        if self.store.get_realm(&new.realm)?.is_none() {
            return Err(Error::NotFound(format!("realm {}", new.realm)));
        }
        for u in &new.redirect_uris {
            check_redirect_uri(u)?;
        }
        let mut grants = new.grant_types.clone();
        if grants.is_empty() {
            grants = vec!["authorization_code".into(), "refresh_token".into()];
        }
        for g in &grants {
            if !GRANTS.contains(&g.as_str()) {
                return Err(Error::Invalid(format!(
                    "unknown grant type {g:?} (one of {})",
                    GRANTS.join(", ")
                )));
            }
        }
        if grants.iter().any(|g| g == "client_credentials") && !new.confidential {
            return Err(Error::Invalid(
                "client_credentials needs a confidential client (--confidential)".into(),
            ));
        }
        if grants.iter().any(|g| g == "password") && !new.first_party {
            return Err(Error::Invalid(
                "the password grant is only for first-party clients (--first-party)".into(),
            ));
        }
        if grants.iter().any(|g| g == "authorization_code") && new.redirect_uris.is_empty() {
            return Err(Error::Invalid(
                "authorization_code needs at least one --redirect-uri".into(),
            ));
        }
        let scopes = match new.scopes {
            Some(list) => Some(
                known_scopes(list.iter().flat_map(|s| s.split_ascii_whitespace()))
                    .map_err(|s| {
                        Error::Invalid(format!(
                            "unknown scope {s:?} (one of {})",
                            SCOPES.join(", ")
                        ))
                    })?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
            None if new.first_party => None,
            // A backend acting as itself has no user scope to fall back on: what it may read
            // is its registration's to say.
            None if grants.iter().any(|g| g == "client_credentials") => {
                return Err(Error::Invalid(
                    "a client_credentials client needs its scopes registered (--scope mail, --scope audit)".into(),
                ));
            }
            None => Some(THIRD_PARTY_SCOPES.map(String::from).to_vec()),
        };
        let secret = if new.confidential {
            Some(Zeroizing::new(format!("kps_{}", random_b64(32)?)))
        } else {
            None
        };
        let client = Client {
            realm: new.realm.clone(),
            client_id: new.client_id.clone(),
            name: new.name,
            secret_hash: secret.as_ref().map(|s| sha256(s.as_bytes())),
            redirect_uris: new.redirect_uris,
            grant_types: grants,
            first_party: new.first_party,
            id_token_alg: new.id_token_alg.map(|a| a.as_str().to_owned()),
            created_at: now,
            scopes,
        };
        self.store.create_client(&client).map_err(|e| match e {
            store::Error::Conflict(_) => {
                Error::Conflict(format!("client {} in realm {}", new.client_id, new.realm))
            }
            other => other.into(),
        })?;
        // A client that registered another ID-token algorithm needs a key for it now.
        self.ensure_keys(&new.realm, now)?;
        self.audit.record(
            Event::success(Operation::ClientCreated)
                .realm(&new.realm)
                .actor("cli")
                .target(new.client_id.as_str()),
            now,
        )?;
        Ok(CreatedClient { client, secret })
    }

    /// On an empty installation, creates the provider admin `admin@{consumer_domain}` with a
    /// random password and returns both, to be shown once. `None` if a provider admin exists.
    pub fn bootstrap(&self, now: UnixTime) -> Result<Option<(String, Zeroizing<String>)>, Error> {
        self.ensure_consumers(now)?;
        if self.store.count_accounts_with_role(Role::ProviderAdmin)? > 0 {
            return Ok(None);
        }
        let email = format!("admin@{}", self.cfg.consumer_domain.to_ascii_lowercase());
        let pw = Zeroizing::new(random_b64(18)?);
        self.create_user(
            &email,
            Some("Provider admin"),
            &pw,
            Role::ProviderAdmin,
            true,
            now,
        )?;
        Ok(Some((email, pw)))
    }

    // ---- clients --------------------------------------------------------------------------

    /// A client of a realm.
    pub(crate) fn client(&self, realm: &RealmId, id: &str) -> Option<Client> {
        let id = ClientId::new(id).ok()?;
        self.store.get_client(realm, &id).ok()?
    }

    /// Authenticates a client at the token or revocation endpoint. Public clients present only
    /// their id; confidential ones must present their secret.
    pub(crate) fn authenticate_client(
        &self,
        realm: &RealmId,
        id: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Client, OAuthError> {
        let fail = || OAuthError::invalid_client(realm.as_str());
        let client = id.and_then(|id| self.client(realm, id)).ok_or_else(fail)?;
        match (&client.secret_hash, secret) {
            (None, None) => Ok(client),
            (Some(h), Some(s)) if ct_eq(h, &sha256(s.as_bytes())) => Ok(client),
            _ => Err(fail()),
        }
    }
}

fn normalise_email(email: &str) -> Result<String, Error> {
    let e = email.trim().to_ascii_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && !d.is_empty() && !d.contains('@') && d.contains('.')
        })
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(Error::Invalid(format!("{email:?} is not an email address")));
    }
    Ok(e)
}

fn normalise_domain(d: &str) -> Result<String, Error> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(Error::Invalid(format!("{d:?} is not a domain name")));
    }
    Ok(d)
}

pub(super) fn check_redirect_uri(u: &str) -> Result<(), Error> {
    let ok = (u.starts_with("https://") || is_loopback_http(u))
        && !u.contains('#')
        && !u.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(Error::Invalid(format!(
            "redirect URI {u:?} must be https (or http on a loopback address) without a fragment"
        )));
    }
    Ok(())
}

/// Whether `u` is plain http to this machine (RFC 8252 §7.3): its host exactly `127.0.0.1`,
/// `[::1]` or `localhost`, a port of digits at most, no user information — not merely a URI
/// that starts like one (`http://localhost.example.net/`, `http://127.0.0.1@example.net/`).
fn is_loopback_http(u: &str) -> bool {
    let Some(rest) = u.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]` holds colons of its own; a port follows its closing bracket.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}
