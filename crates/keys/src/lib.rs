//! Key custody: every signing key Keypost has, from birth to revocation.
//!
//! `keys` owns generating and importing keys, sealing private halves at rest (envelope
//! encryption under a key-encryption key), the rotation schedule, revocation, each realm's
//! JWKS, and the [`Signer`] — the only code that ever holds a private key in usable form.
//! It must never hand private key bytes to a caller: the public API deals in [`Kid`]s,
//! public JWKs and signatures.
//!
//! ```text
//!   keys table (sealed PKCS#8) ──unseal with KEK──> Signer ──sign(realm, kid, input)──> signature
//!          │                                          ▲ refuses: other realm, revoked, not active
//!          └── public JWK ──> Jwks (one realm) / VerifyingKeys (one realm) ──> tokens::validate
//! ```
//!
//! A key is bound to exactly one realm and one purpose ([`KeyPurpose`]) and pinned to one
//! [`Algorithm`]. Its kid is its RFC 7638 thumbprint, and the kid is unique across Keypost, so
//! the same key material can never be bound to two realms.
//!
//! Lifecycle, computed from the record's timestamps and the current time ([`KeyState`]):
//!
//! ```text
//!   created ── published ──> Pending ──activates_at──> Active ──newer key active──> Retiring
//!                                                        │                            │
//!                          revoke (any time) ──> Revoked └──────── expires_at ──> Expired
//! ```
#![forbid(unsafe_code)]

mod alg;
mod custody;
mod error;
mod hsm;
mod kek;
mod material;
mod remote;
mod signer;
mod transport;
mod wire;

pub use alg::Algorithm;
pub use custody::{Custody, KeyHistory, KeyInfo, KeyPolicy, KeyState, VerifyingKey, VerifyingKeys};
pub use error::Error;
pub use hsm::{Hsm, HsmConfig, HsmRealms};
pub use kek::Kek;
pub use material::{Jwk, Jwks};
pub use remote::{
    PAYLOAD_REFUSALS, PayloadCheck, Refusal, RefusalHook, RemoteSigner, SignFuture, SignService,
    SignerService, serve as serve_signer, serve_tls as serve_signer_tls,
};
pub use signer::{Signature, Signer, SigningKey};
pub use store::{KeyPurpose, Kid, RealmId};
pub use transport::TlsFiles;

/// Result alias for key operations.
pub type Result<T> = std::result::Result<T, Error>;

#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for `cargo fuzz` (`fuzz/`) and the bounded run in the test suite; not a
    //! stable API.

    /// What the signer reads from a connection, hostile or not: length-prefixed frames and
    /// the request or answer each holds. Nothing may panic, and whatever decodes encodes back
    /// to the very same body (one encoding per message: nothing for the two sides to
    /// disagree on).
    pub fn signer_frames(mut stream: &[u8]) {
        use crate::wire::{Answer, Request, read};
        let mut body = Vec::new();
        let mut again = Vec::new();
        while read(&mut stream, &mut body).is_ok() {
            if let Some(request) = Request::decode(&body) {
                again.clear();
                assert!(request.encode(&mut again).is_ok(), "{request:?} re-encodes");
                assert_eq!(again.get(4..), Some(&body[..]), "{request:?} round trip");
            }
            if let Some(answer) = Answer::decode(&body) {
                again.clear();
                assert!(answer.encode(&mut again).is_ok(), "{answer:?} re-encodes");
                assert_eq!(again.get(4..), Some(&body[..]), "{answer:?} round trip");
            }
        }
    }
}
