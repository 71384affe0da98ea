//! The issuance-ledger contract the validator checks against. A token Keypost never issued
//! is refused even if its signature is perfect: a stolen signing key mints nothing usable.

use std::sync::Arc;

use store::{ClientId, Jti, LedgerView, RealmId, Store};

/// What [`crate::validate`] asks of the ledger: one read per validation.
pub trait Ledger {
    /// The ledger row of `jti` with its session and account state, and whether `client` is
    /// registered in `realm`. Implementations fail closed: on error, an empty view.
    fn view(&self, jti: &Jti, realm: &RealmId, client: &ClientId) -> LedgerView;
}

/// The ledger backed by a [`Store`]. A storage failure reads as "not issued", so an outage
/// fails closed.
#[derive(Clone)]
pub struct StoreLedger(pub Arc<dyn Store>);

impl std::fmt::Debug for StoreLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLedger")
    }
}

impl Ledger for StoreLedger {
    fn view(&self, jti: &Jti, realm: &RealmId, client: &ClientId) -> LedgerView {
        self.0.ledger_view(jti, realm, client).unwrap_or_else(|e| {
            tracing::error!(error = %e, "ledger lookup failed; refusing the token");
            LedgerView {
                entry: None,
                client_known: false,
                session: None,
                account: None,
            }
        })
    }
}
