//! Blobs: raw messages and uploads, content-addressed by SHA-256. The filesystem backend writes
//! each blob to a temporary file, fsyncs it, renames it into place and fsyncs the directory, so
//! a blob is on disk before anything that refers to it is acknowledged. (An S3-compatible
//! backend implements the same trait for the scale-out deployment.)
//!
//! Blobs are shared by content, so removing one races with a writer storing the same bytes:
//! its `put` finds the file present and writes nothing, then it commits a row that refers to
//! the blob. The protocol that makes removal safe without a lock shared by every process:
//! a writer calls `put` before committing what refers to the blob *and again after* (a no-op
//! unless the file went meanwhile), and [`BlobStore::remove_unused`] takes the file out of
//! place before it asks whether anything refers to the blob, putting it back if so. Either the
//! remover sees the writer's row, or the writer's second `put` finds the file gone and writes
//! it again.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ids::BlobId;
use crate::{Error, Result};

/// Content-addressed blob storage.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` durably and returns their id. Storing the same bytes twice is a no-op.
    fn put(&self, bytes: &[u8]) -> Result<BlobId>;
    /// The bytes of a blob, if stored.
    fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>>;
    /// Removes a blob unless `in_use` (asked once the blob is out of reach of new readers)
    /// says something refers to it; `true` if it was removed. See the module docs for why a
    /// writer stores a blob again after committing what refers to it.
    fn remove_unused(&self, id: &BlobId, in_use: &dyn Fn() -> Result<bool>) -> Result<bool>;
}

/// Blobs as files under `{root}/ab/cdef...`.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

/// The id of some bytes.
pub fn blob_id(bytes: &[u8]) -> BlobId {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    BlobId::new(hex).unwrap_or_else(|_| unreachable!("64 hex digits are a valid blob id"))
}

impl FsBlobStore {
    /// A blob store rooted at `root` (created if missing).
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::Backend(format!("{}: {e}", root.display())))?;
        let store = Self {
            root: root.to_owned(),
        };
        store.recover()?;
        Ok(store)
    }

    /// What a crash can leave behind: a blob moved aside for removal (put back unless its
    /// file is there again: removing it was never decided, and a blob kept that nothing uses
    /// costs only space) and half-written temporary files (dropped).
    fn recover(&self) -> Result<()> {
        let dirs = std::fs::read_dir(&self.root).map_err(io)?;
        for dir in dirs.flatten().filter(|d| d.path().is_dir()) {
            for entry in std::fs::read_dir(dir.path()).map_err(io)?.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp-") {
                    let _ = std::fs::remove_file(entry.path());
                } else if name.starts_with(".gone-")
                    && let Some(id) = name.rsplit('-').next()
                    && let Ok(id) = BlobId::new(id.to_owned())
                {
                    let (_, path) = self.path(&id);
                    if !path.exists() {
                        std::fs::rename(entry.path(), &path).map_err(io)?;
                    } else {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(())
    }

    fn path(&self, id: &BlobId) -> (PathBuf, PathBuf) {
        let (dir, file) = id.as_str().split_at(2);
        let dir = self.root.join(dir);
        let path = dir.join(file);
        (dir, path)
    }
}

/// Numbers the temporary and set-aside names of this process.
static NEXT_NAME: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn io(e: std::io::Error) -> Error {
    Error::Backend(format!("blob store: {e}"))
}

impl BlobStore for FsBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<BlobId> {
        let id = blob_id(bytes);
        let (dir, path) = self.path(&id);
        if path.exists() {
            return Ok(id);
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        // A name of this call's own: two threads storing the same bytes must not write into
        // one file.
        let n = NEXT_NAME.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp-{}-{n}-{}", std::process::id(), id.as_str()));
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(id)
    }

    fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(id).1) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    fn remove_unused(&self, id: &BlobId, in_use: &dyn Fn() -> Result<bool>) -> Result<bool> {
        // Asked first as well, so a blob in use is never out of place, even for a moment.
        if in_use()? {
            return Ok(false);
        }
        let (dir, path) = self.path(id);
        let n = NEXT_NAME.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let aside = dir.join(format!(".gone-{}-{n}-{}", std::process::id(), id.as_str()));
        match std::fs::rename(&path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e)),
        }
        let keep = match in_use() {
            Ok(keep) => keep,
            Err(e) => {
                // Unknown: put it back rather than risk removing what is referred to.
                std::fs::rename(&aside, &path).map_err(io)?;
                return Err(e);
            }
        };
        if keep {
            // A writer may have stored the same bytes meanwhile: replacing its file with this
            // one changes nothing, the content is the same.
            std::fs::rename(&aside, &path).map_err(io)?;
            return Ok(false);
        }
        std::fs::remove_file(&aside).map_err(io)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob set aside for removal when the process died is put back at the next open;
    /// half-written temporary files are dropped.
    #[test]
    fn a_crash_mid_removal_loses_no_blob() {
        let root =
            std::env::temp_dir().join(format!("keypost-blob-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let b = FsBlobStore::open(&root).unwrap();
        let id = b.put(b"kept").unwrap();
        let (dir, path) = b.path(&id);
        let aside = dir.join(format!(".gone-1-0-{}", id.as_str()));
        std::fs::rename(&path, &aside).unwrap();
        std::fs::write(dir.join(format!(".tmp-1-0-{}", id.as_str())), b"half").unwrap();
        let b = FsBlobStore::open(&root).unwrap();
        assert_eq!(b.get(&id).unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "only the blob is left"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn blobs_are_content_addressed_and_durable() {
        let dir = std::env::temp_dir().join(format!("keypost-blobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let b = FsBlobStore::open(&dir).unwrap();
        let id = b.put(b"hello").unwrap();
        assert_eq!(
            id.as_str(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(b.put(b"hello").unwrap(), id);
        assert_eq!(b.get(&id).unwrap().unwrap(), b"hello");
        assert!(b.get(&blob_id(b"other")).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_blob_is_removed_only_if_nothing_refers_to_it() {
        let dir = std::env::temp_dir().join(format!("keypost-blobs-rm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let b = FsBlobStore::open(&dir).unwrap();
        let id = b.put(b"hello").unwrap();
        assert!(!b.remove_unused(&id, &|| Ok(true)).unwrap());
        assert_eq!(b.get(&id).unwrap().unwrap(), b"hello");
        // Referred to by the time it is out of place (a writer committed meanwhile): kept.
        let asked = std::cell::Cell::new(0);
        let second_time = || {
            asked.set(asked.get() + 1);
            Ok(asked.get() > 1)
        };
        assert!(!b.remove_unused(&id, &second_time).unwrap());
        assert_eq!(b.get(&id).unwrap().unwrap(), b"hello");
        assert!(b.remove_unused(&id, &|| Ok(false)).unwrap());
        assert!(b.get(&id).unwrap().is_none());
        assert!(
            !b.remove_unused(&id, &|| Ok(false)).unwrap(),
            "already gone"
        );
        // A writer's second put stores it again.
        assert_eq!(b.put(b"hello").unwrap(), id);
        assert_eq!(b.get(&id).unwrap().unwrap(), b"hello");
        let leftovers: Vec<_> = std::fs::read_dir(dir.join(&id.as_str()[..2]))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
