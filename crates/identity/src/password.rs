//! Password hashing (Argon2id, the `argon2` crate's OWASP-recommended defaults).

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use std::sync::OnceLock;

/// Hashes a password into a PHC string.
pub(crate) fn hash(password: &str) -> Result<String, crate::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| crate::Error::Invalid(format!("cannot hash password: {e}")))
}

/// Verifies a password against a PHC string (constant-time comparison inside `argon2`).
pub(crate) fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Burns the same time as a real verification, for unknown accounts, so response time does not
/// reveal which addresses have accounts.
pub(crate) fn verify_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash("keypost-dummy-password").unwrap_or_default());
    let _ = verify(password, phc);
}

/// Minimal password policy: long enough, not absurdly long (Argon2 cost is per byte of input
/// only marginally, but request size is bounded anyway).
pub(crate) fn check_policy(password: &str) -> Result<(), crate::Error> {
    let n = password.chars().count();
    if n < 8 {
        return Err(crate::Error::Invalid(
            "password must be at least 8 characters".into(),
        ));
    }
    if password.len() > 1024 {
        return Err(crate::Error::Invalid(
            "password must be at most 1024 bytes".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = super::hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse", &h));
        assert!(!super::verify("wrong horse", &h));
        assert!(!super::verify("correct horse", "not a hash"));
    }
}
