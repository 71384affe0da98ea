//! Tokens: minting access, ID and refresh tokens, and the one validation policy every Keypost
//! resource server applies.
//!
//! `tokens` owns the JOSE layer (compact JWS, strict JSON), the claims Keypost puts in tokens,
//! the issuance-ledger contract, and [`validate`] — a single function from a raw token and an
//! [`Expectation`] (the realm that owns the resource, the service's audience, the time) to a
//! [`Principal`] or a [`Rejection`] naming why. It must never accept a key from another realm
//! or a key the token header supplies (`jku`, `jwk`, `x5u`, `x5c`).
//!
//! ```text
//!   raw token ──shape──header──key (expected realm only)──signature──claims──ledger──> Principal
//!                 │       │           │                        │          │       │
//!                 └───────┴───────────┴──────── Rejection ─────┴──────────┴───────┘ (audited)
//! ```
//!
//! The JOSE layer is ours rather than a general JWT library's on purpose: the policy needs the
//! realm as a required input and a token type a general library does not have, and a small
//! parser that accepts only what Keypost issues is easier to audit than one that accepts
//! everything RFC 7515 allows. The cryptography itself is aws-lc-rs's (in `keys`).
//!
//! See [`manual`] for how each step of the Storm-0558 chain maps onto these checks.
#![forbid(unsafe_code)]

mod cache;
mod claims;
mod credential;
mod error;
mod gate;
mod jose;
mod ledger;
pub mod manual;
mod mint;
mod refusal_budget;
mod signing_policy;
mod validate;

pub use cache::Validator;
pub use claims::{AccessClaims, Audience, issuer_for, realm_hint};
pub use credential::{Bearer, CredentialError, Presentation};
pub use error::Error;
pub use gate::{Access, Authenticated, Gate, GateError, Resource};
pub use ledger::{CachedLedger, Ledger, LedgerCache, LedgerFacts, LedgerVerdict, StoreLedger};
pub use mint::{IdTokenRequest, Issued, MintRequest, Minter, RefreshToken, token_hash};
pub use signing_policy::{SigningPolicy, payload_check};
pub use validate::{Expectation, Presented, Principal, Rejected, Rejection, validate};

#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for `cargo fuzz`; not a stable API.
    pub use crate::jose::parse_compact;

    /// Everything read from a presented token before any key or store is consulted; the SIMD
    /// base64 decoder the parser uses, held to exactly what the strict scalar engine accepts,
    /// segment by segment; and the plain JSON reading, held to the general one on every
    /// decoded segment (a disagreement panics: a finding).
    pub fn token(raw: &str) {
        use base64::Engine;
        let _ = crate::jose::parse_compact(raw, &mut Vec::new());
        crate::jose::check_plain_reading(raw.as_bytes());
        let _ = crate::realm_hint(raw, "https://keypost.test");
        for segment in raw.split('.') {
            let simd = base64_simd::URL_SAFE_NO_PAD.decode_to_vec(segment).ok();
            let strict = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(segment)
                .ok();
            assert_eq!(simd, strict, "the base64 decoders disagree on {segment:?}");
            if let Some(doc) = simd {
                crate::jose::check_plain_reading(&doc);
            }
        }
    }
}
