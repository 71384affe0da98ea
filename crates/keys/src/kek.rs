//! The key-encryption key (KEK) and envelope sealing of private keys at rest.
//!
//! Each private key is encrypted under its own random data key (AES-256-GCM); the data key is
//! encrypted under the KEK. The associated data binds the ciphertext to the key's kid, realm,
//! purpose and algorithm, so a sealed blob copied onto another key's row does not open. A copy
//! of the data directory without the KEK holds no usable private key.
//!
//! Sealed layout (version 1):
//! `0x01 ‖ kek_id[8] ‖ dek_nonce[12] ‖ AES-GCM(KEK, dek)[48] ‖ key_nonce[12] ‖ AES-GCM(dek, pkcs8)`

use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{digest, rand};
use base64::Engine;
use zeroize::Zeroizing;

use crate::Error;

const VERSION: u8 = 1;
const KEK_ID_LEN: usize = 8;
const WRAPPED_DEK_LEN: usize = 32 + 16;
const HEADER_LEN: usize = 1 + KEK_ID_LEN + NONCE_LEN + WRAPPED_DEK_LEN + NONCE_LEN;

/// The key-encryption key. 32 random bytes, zeroized on drop, never printed.
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek(id={})", hex(&self.id()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Kek {
    /// A fresh random KEK.
    pub fn generate() -> Result<Self, Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::fill(&mut key[..])?;
        Ok(Self { key })
    }

    /// Decodes a KEK from base64 (standard or URL-safe, padded or not).
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let text = Zeroizing::new(text.trim().to_owned());
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .or_else(|_| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(text.trim_end_matches('='))
                })
                .map_err(|_| Error::Kek("not base64".into()))?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::Kek("must be 32 bytes".into()))?;
        Ok(Self {
            key: Zeroizing::new(key),
        })
    }

    /// Loads the KEK from a file, creating it (mode 0600) with a fresh key if it does not exist.
    /// Refuses a file that group or others can read, as OpenSSH does for private keys.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::metadata(path) {
            Ok(meta) => {
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(Error::Kek(format!(
                        "{} is readable by group or others; chmod 600 it",
                        path.display()
                    )));
                }
                let text = Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|e| Error::Kek(e.to_string()))?,
                );
                Self::from_base64(&text)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kek = Self::generate()?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| Error::Kek(format!("creating {}: {e}", path.display())))?;
                let text =
                    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&kek.key[..]));
                f.write_all(text.as_bytes())
                    .and_then(|_| f.write_all(b"\n"))
                    .and_then(|_| f.sync_all())
                    .map_err(|e| Error::Kek(e.to_string()))?;
                tracing::info!(path = %path.display(), "created key-encryption key");
                Ok(kek)
            }
            Err(e) => Err(Error::Kek(format!("{}: {e}", path.display()))),
        }
    }

    /// A short public fingerprint of the KEK, stored in each sealed blob so rewrapping knows
    /// which KEK a blob is under.
    pub fn id(&self) -> [u8; KEK_ID_LEN] {
        let d = digest::digest(&digest::SHA256, &self.key[..]);
        let mut id = [0u8; KEK_ID_LEN];
        id.copy_from_slice(&d.as_ref()[..KEK_ID_LEN]);
        id
    }

    fn aead(key: &[u8]) -> Result<LessSafeKey, Error> {
        Ok(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| Error::Crypto)?,
        ))
    }

    /// Envelope-encrypts `plaintext` (a PKCS#8 private key) bound to `aad`.
    pub(crate) fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let mut dek = Zeroizing::new([0u8; 32]);
        rand::fill(&mut dek[..])?;
        let mut dek_nonce = [0u8; NONCE_LEN];
        let mut key_nonce = [0u8; NONCE_LEN];
        rand::fill(&mut dek_nonce)?;
        rand::fill(&mut key_nonce)?;

        let mut wrapped = dek.to_vec();
        Self::aead(&self.key[..])?.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(dek_nonce),
            Aad::from(aad),
            &mut wrapped,
        )?;
        let mut body = plaintext.to_vec();
        let sealed_body = Self::aead(&dek[..])?.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(key_nonce),
            Aad::from(aad),
            &mut body,
        );
        if sealed_body.is_err() {
            zeroize::Zeroize::zeroize(&mut body);
            return Err(Error::Crypto);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id());
        out.extend_from_slice(&dek_nonce);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&key_nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a sealed blob; `None` if it is not ours, was tampered with, or `aad` differs.
    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < HEADER_LEN + 16 || sealed.first() != Some(&VERSION) {
            return None;
        }
        let (header, body) = sealed.split_at(HEADER_LEN);
        let (_version_and_id, rest) = header.split_at(1 + KEK_ID_LEN);
        let (dek_nonce, rest) = rest.split_at(NONCE_LEN);
        let (wrapped, key_nonce) = rest.split_at(WRAPPED_DEK_LEN);

        let mut dek = Zeroizing::new(wrapped.to_vec());
        let dek_plain = Self::aead(&self.key[..])
            .ok()?
            .open_in_place(
                Nonce::try_assume_unique_for_key(dek_nonce).ok()?,
                Aad::from(aad),
                &mut dek,
            )
            .ok()?
            .to_vec();
        let dek_plain = Zeroizing::new(dek_plain);
        let mut plain = Zeroizing::new(body.to_vec());
        let n = Self::aead(&dek_plain)
            .ok()?
            .open_in_place(
                Nonce::try_assume_unique_for_key(key_nonce).ok()?,
                Aad::from(aad),
                &mut plain,
            )
            .ok()?
            .len();
        plain.truncate(n);
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_binds_aad() {
        let kek = Kek::generate().unwrap();
        let sealed = kek.seal(b"private key bytes", b"kid|realm-a").unwrap();
        assert_eq!(
            kek.open(&sealed, b"kid|realm-a").unwrap().as_slice(),
            b"private key bytes"
        );
        assert!(
            kek.open(&sealed, b"kid|realm-b").is_none(),
            "moved to another realm"
        );
        assert!(
            Kek::generate()
                .unwrap()
                .open(&sealed, b"kid|realm-a")
                .is_none(),
            "other KEK"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(kek.open(&tampered, b"kid|realm-a").is_none());
        assert!(!sealed.windows(17).any(|w| w == b"private key bytes"));
    }

    #[test]
    fn kek_file_is_created_private_and_loose_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("keypost-kek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kek");
        let _ = std::fs::remove_file(&path);
        let a = Kek::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = Kek::load_or_create(&path).unwrap();
        assert_eq!(a.id(), b.id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Kek::load_or_create(&path), Err(Error::Kek(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_only_the_id() {
        let kek =
            Kek::from_base64(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
        let shown = format!("{kek:?}");
        assert!(shown.starts_with("Kek(id="));
        assert!(!shown.contains("BwcH"));
    }
}
