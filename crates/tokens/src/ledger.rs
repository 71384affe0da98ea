//! The issuance-ledger contract the validator checks against. A token Keypost never issued
//! is refused even if its signature is perfect: a stolen signing key mints nothing usable.

use std::sync::Arc;

use store::{AccountId, ClientId, Jti, LedgerEntry, RealmId, SessionId, Store, UnixTime};

/// What [`crate::validate`] asks of the ledger and the account/session state behind it.
pub trait Ledger {
    /// The ledger row of a token id.
    fn lookup(&self, jti: &Jti) -> Option<LedgerEntry>;
    /// Whether a session is live at `now`.
    fn session_active(&self, sid: &SessionId, now: UnixTime) -> bool;
    /// Whether the subject is an enabled account of `realm` (or a client acting for itself).
    fn subject_active(&self, realm: &RealmId, subject: &str) -> bool;
    /// Whether a client is registered in `realm`.
    fn client_known(&self, realm: &RealmId, client: &ClientId) -> bool;
}

/// The ledger backed by a [`Store`]. A storage failure reads as "not found", so an outage
/// fails closed.
#[derive(Clone)]
pub struct StoreLedger(pub Arc<dyn Store>);

impl std::fmt::Debug for StoreLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLedger")
    }
}

impl Ledger for StoreLedger {
    fn lookup(&self, jti: &Jti) -> Option<LedgerEntry> {
        self.0
            .get_token(jti)
            .inspect_err(|e| tracing::error!(error = %e, "ledger lookup failed"))
            .ok()
            .flatten()
    }

    fn session_active(&self, sid: &SessionId, now: UnixTime) -> bool {
        matches!(self.0.get_session(sid), Ok(Some(s)) if s.revoked_at.is_none() && s.expires_at > now)
    }

    fn subject_active(&self, realm: &RealmId, subject: &str) -> bool {
        if let Ok(id) = AccountId::new(subject)
            && let Ok(Some(a)) = self.0.get_account(&id)
        {
            return &a.realm == realm && !a.disabled;
        }
        // Client-credentials tokens have the client as subject.
        ClientId::new(subject).is_ok_and(|c| self.client_known(realm, &c))
    }

    fn client_known(&self, realm: &RealmId, client: &ClientId) -> bool {
        matches!(self.0.get_client(realm, client), Ok(Some(_)))
    }
}
