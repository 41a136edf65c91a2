//! Directory passwords: argon2id PHC strings (`smtpmta hash-password` makes them, AUTH
//! checks them). Argon2's default parameters (m = 19 MiB, t = 2, p = 1: OWASP's minimum)
//! cost some tens of milliseconds per check, which is the point.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct PasswordError(String);

/// The PHC string for `password` (argon2id, a random salt).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError(e.to_string()))
}

/// Whether `password` matches `phc`. With no PHC (an unknown user, or one without a
/// password) a dummy hash is checked instead, so that the answer takes as long either way
/// and timing does not tell which user names exist.
pub fn verify(phc: Option<&str>, password: &str) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("dummy password for unknown users").unwrap_or_default());
    let (phc, real) = match phc {
        Some(p) => (p, true),
        None => (dummy.as_str(), false),
    };
    let ok = PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false);
    ok && real
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let phc = super::hash("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(super::verify(Some(&phc), "s3cret"));
        assert!(!super::verify(Some(&phc), "S3cret"));
        assert!(!super::verify(None, "dummy password for unknown users"));
    }
}
