//! How Keypost's token handling answers each step of the Storm-0558 chain
//! (THREAT-MODEL.md has the full table).
//!
//! | step | what went wrong | what stops it here |
//! |---|---|---|
//! | 1 | an old consumer key was still trusted | keys have a hard expiry that [`crate::validate`] enforces (`KeyExpired`) |
//! | 3 | a mixed key set; the validator did not check which issuer a key belonged to | [`crate::validate`] takes the realm as input and looks the `kid` up only there (`KeyNotInRealm`) |
//! | 4 | forged tokens from a stolen key | every token must be in the issuance ledger with its exact hash (`NotIssued`, `LedgerMismatch`) |
//! | 5 | a token type accepted where another was expected | `typ` must be `at+jwt`; ID-token keys cannot verify access tokens (`TypeMismatch`, `WrongKeyPurpose`) |
//! | — | header-supplied keys, `alg` confusion, `none` | `jku`/`jwk`/`x5u`/`x5c` are refused; `alg` must be allow-listed and equal the key's pinned algorithm |
