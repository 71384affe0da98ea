//! The signer's own memory of the audit chains: for each chain, the last checkpoint it signed
//! (number, position, link and digest), kept in a file beside the key-encryption key — never in
//! the database the web process writes.
//!
//! Someone who can write the database can drop its triggers, rewrite records, relink a chain
//! and delete its checkpoints; what they cannot reach is this file (it lives with the KEK,
//! which the web process cannot read). Before signing, [`crate::chain::checkpoint`] requires
//! the chain to extend the head recorded here and the recorded checkpoint to still be in the
//! database, so a rewritten log is refused (and reported) instead of blessed with a fresh
//! signature. [`crate::chain::verify`] consults it too.
//!
//! The file is JSON, written whole to a temporary file, synced and renamed over the old one,
//! so a crash leaves the old or the new version, never a torn one. Each pass over it holds an
//! exclusive lock (a `.lock` file beside it), so `serve`'s signer and `keypost audit
//! checkpoint` never interleave their updates.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use store::chain::{Checkpoint, Link};

/// What the signer last signed for one chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedHead {
    /// The checkpoint's number.
    pub number: u64,
    /// The chain position it covered.
    pub seq: u64,
    /// The link at that position (hex).
    pub link: String,
    /// SHA-256 of the checkpoint's signed message (hex).
    pub digest: String,
}

impl SignedHead {
    /// The head `c` signs.
    pub fn of(c: &Checkpoint) -> Option<Self> {
        Some(Self {
            number: c.number,
            seq: c.seq,
            link: hex(&c.link),
            digest: hex(&c.digest()?),
        })
    }

    /// The recorded link, if it decodes.
    pub fn link(&self) -> Option<Link> {
        unhex(&self.link)
    }

    /// Whether `c` is the very checkpoint recorded here.
    pub fn is(&self, c: &Checkpoint) -> bool {
        c.number == self.number && c.digest().is_some_and(|d| hex(&d) == self.digest)
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Contents {
    version: u32,
    chains: BTreeMap<String, SignedHead>,
}

/// An error reading or writing the file.
#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    /// The file could not be read, written or locked.
    #[error("signed audit heads {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The file is not what this version writes.
    #[error("signed audit heads {path} are unreadable: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Where the signer keeps its signed heads.
#[derive(Debug, Clone)]
pub struct SignedHeads {
    path: PathBuf,
}

impl SignedHeads {
    /// The file `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file beside the key-encryption key `kek_file` (`{kek_file}.audit-heads`): it shares
    /// the KEK's protection (its directory, its owner, mode 0600).
    pub fn beside(kek_file: &Path) -> Self {
        let mut name = kek_file.as_os_str().to_owned();
        name.push(".audit-heads");
        Self::at(PathBuf::from(name))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, error: std::io::Error) -> HeadsError {
        HeadsError::Io {
            path: self.path.clone(),
            error,
        }
    }

    /// Locks the file for one pass and reads it (empty if it does not exist yet).
    pub fn lock(&self) -> Result<HeadsGuard<'_>, HeadsError> {
        let mut lock_path = self.path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = private_file(Path::new(&lock_path)).map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let contents = match std::fs::read(&self.path) {
            Ok(bytes) => {
                let c: Contents =
                    serde_json::from_slice(&bytes).map_err(|e| HeadsError::Corrupt {
                        path: self.path.clone(),
                        why: e.to_string(),
                    })?;
                if c.version != 1 {
                    return Err(HeadsError::Corrupt {
                        path: self.path.clone(),
                        why: format!("version {} (this binary writes 1)", c.version),
                    });
                }
                c
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Contents {
                version: 1,
                chains: BTreeMap::new(),
            },
            Err(e) => return Err(self.io(e)),
        };
        Ok(HeadsGuard {
            heads: self,
            _lock: lock,
            contents,
        })
    }
}

/// The signed heads, locked for one pass.
#[derive(Debug)]
pub struct HeadsGuard<'a> {
    heads: &'a SignedHeads,
    _lock: File,
    contents: Contents,
}

impl HeadsGuard<'_> {
    /// What the file holds, the lock released: for a reader that takes long (`verify`) and
    /// must not hold up the signer's next pass.
    pub fn into_heads(self) -> BTreeMap<String, SignedHead> {
        self.contents.chains
    }

    /// Every chain the signer has signed a checkpoint of.
    pub fn chains(&self) -> impl Iterator<Item = &str> {
        self.contents.chains.keys().map(String::as_str)
    }

    /// What the signer last signed for `chain`.
    pub fn get(&self, chain: &str) -> Option<&SignedHead> {
        self.contents.chains.get(chain)
    }

    /// Records `head` as the last signed for `chain`, durably, before this returns.
    pub fn set(&mut self, chain: &str, head: SignedHead) -> Result<(), HeadsError> {
        self.contents.chains.insert(chain.to_owned(), head);
        self.save()
    }

    fn save(&self) -> Result<(), HeadsError> {
        let path = &self.heads.path;
        let io = |e| self.heads.io(e);
        let bytes = serde_json::to_vec_pretty(&self.contents).map_err(|e| HeadsError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = private_file(&tmp).map_err(io)?;
        f.set_len(0).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

/// Opens (creating it 0600 if needed) a file for writing, without truncating it.
fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Link> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_survive_a_reopen_and_hex_round_trips() {
        let dir = std::env::temp_dir().join(format!("keypost-heads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let heads = SignedHeads::beside(&dir.join("keypost-data.kek"));
        assert!(heads.path().ends_with("keypost-data.kek.audit-heads"));
        let head = SignedHead {
            number: 3,
            seq: 40,
            link: hex(&[7u8; 32]),
            digest: hex(&[9u8; 32]),
        };
        heads.lock().unwrap().set("contoso", head.clone()).unwrap();
        let again = heads.lock().unwrap();
        assert_eq!(again.get("contoso"), Some(&head));
        assert_eq!(head.link(), Some([7u8; 32]));
        assert_eq!(unhex("zz"), None);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
