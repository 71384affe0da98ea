//! Uploads (RFC 8620 §6.1): blobs an account stores to use in a later call (an import, an
//! attachment). This module owns how much an account may keep pending and for how long: an
//! upload counts against the account's storage quota, the pending uploads of an account are
//! bounded in bytes and in number, the oldest make room for a new one (the RFC's rule), and each
//! expires after the policy's time to live. A blob's file goes with its last upload only if no
//! email (of any account) or other upload is stored as the same bytes.

use store::{AccountId, BlobId, PendingUpload, UnixTime};

use crate::{Error, MAX_MESSAGE_SIZE, Mail, Quota, Result};

/// Most uploads an account may have pending (no email of it stored as them) at once: without
/// it, uploads of a few bytes each would fill the store with rows the byte limit never sees.
pub const MAX_PENDING_UPLOADS: usize = 1000;

/// The shortest time to live RFC 8620 §6.1 allows: an upload is kept at least an hour, unless
/// a newer one needs its room.
const MIN_TTL: i64 = 3600;

/// How many expired uploads one store call forgets.
const EXPIRY_BATCH: usize = 500;

/// How long uploads are kept and how much of them an account may have pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadPolicy {
    /// Seconds an upload is kept (at least an hour).
    pub ttl: i64,
    /// Most bytes of pending uploads per account.
    pub pending_bytes: u64,
}

impl Default for UploadPolicy {
    /// A day, and twice the largest message (RFC 8620 §6.1: at least what one object may refer
    /// to, and one message's attachments may be as large as the message).
    fn default() -> Self {
        Self {
            ttl: 24 * 3600,
            pending_bytes: 2 * MAX_MESSAGE_SIZE as u64,
        }
    }
}

impl Mail {
    /// Sets how long uploads are kept (never under an hour) and how much may be pending.
    pub fn with_upload_policy(mut self, policy: UploadPolicy) -> Self {
        self.uploads = UploadPolicy {
            ttl: policy.ttl.max(MIN_TTL),
            ..policy
        };
        self
    }

    /// Stores an upload for `account` (JMAP upload) durably; returns its blob id. Uploading
    /// bytes the account already holds (an upload or an email) takes no more room and starts
    /// the upload's time to live again. Otherwise the upload must fit the account's quota
    /// (with its other pending uploads) and the pending limits; the oldest pending uploads are
    /// forgotten to make room (RFC 8620 §6.1), and if even that is not enough the upload is
    /// refused with [`Error::OverQuota`] (and nothing is forgotten).
    pub fn upload(
        &self,
        account: &AccountId,
        bytes: &[u8],
        media_type: &str,
        now: UnixTime,
    ) -> Result<BlobId> {
        let max = (MAX_MESSAGE_SIZE as u64).min(self.uploads.pending_bytes);
        let size = bytes.len() as u64;
        if size > max {
            return Err(Error::NotAMessage(format!(
                "{size} bytes exceeds the {max}-byte limit"
            )));
        }
        let id = store::blob_id(bytes);
        let pending = self.store.pending_uploads(account)?;
        let held = pending.iter().any(|p| p.blob == id)
            || self.store.email_with_blob(account, &id)?.is_some();
        if !held {
            let quota = self.quota(account)?;
            for old in make_room(&pending, size, &quota, &self.uploads)? {
                if self.store.delete_upload(account, old)? {
                    self.remove_if_unused(old)?;
                }
            }
        }
        self.blobs.put(bytes)?;
        self.store
            .record_upload(account, &id, media_type, size, now)?;
        // Again, now that the upload refers to it (see `store::blob`).
        self.blobs.put(bytes)?;
        Ok(id)
    }

    /// The bytes of a blob the account uploaded itself.
    pub fn uploaded(&self, account: &AccountId, blob: &BlobId) -> Result<Option<Vec<u8>>> {
        if !self.store.has_upload(account, blob)? {
            return Ok(None);
        }
        Ok(self.blobs.get(blob)?)
    }

    /// Bytes of the account's pending uploads (those no email of it is stored as).
    pub fn pending_upload_bytes(&self, account: &AccountId) -> Result<u64> {
        Ok(self
            .store
            .pending_uploads(account)?
            .iter()
            .map(|p| p.size)
            .sum())
    }

    /// Forgets every upload older than the time to live, and removes the blob files nothing
    /// else is stored as. Returns (uploads forgotten, files removed).
    pub fn expire_uploads(&self, now: UnixTime) -> Result<(usize, usize)> {
        let before = now.saturating_sub(self.uploads.ttl);
        let (mut forgotten, mut removed) = (0, 0);
        loop {
            let mut blobs = self.store.expire_uploads(before, EXPIRY_BATCH)?;
            let full = blobs.len() == EXPIRY_BATCH;
            forgotten += blobs.len();
            blobs.sort();
            blobs.dedup();
            for blob in &blobs {
                if self.remove_if_unused(blob)? {
                    removed += 1;
                }
            }
            if !full {
                return Ok((forgotten, removed));
            }
        }
    }

    /// Removes a blob's file if nothing is stored as it any more.
    fn remove_if_unused(&self, blob: &BlobId) -> Result<bool> {
        Ok(self
            .blobs
            .remove_unused(blob, &|| self.store.blob_in_use(blob))?)
    }
}

/// The pending uploads (oldest first) to forget so that `size` more bytes fit the account's
/// quota and the pending limits, or `OverQuota` if they would not fit even with none left.
fn make_room<'a>(
    pending: &'a [PendingUpload],
    size: u64,
    quota: &Quota,
    policy: &UploadPolicy,
) -> Result<Vec<&'a BlobId>> {
    let fits = |bytes: u64, count: usize| {
        let total = bytes.saturating_add(size);
        total <= policy.pending_bytes && count < MAX_PENDING_UPLOADS && quota.admits(total).is_ok()
    };
    let mut bytes: u64 = pending.iter().map(|p| p.size).sum();
    let mut count = pending.len();
    let mut forget = Vec::new();
    for p in pending {
        if fits(bytes, count) {
            break;
        }
        forget.push(&p.blob);
        bytes = bytes.saturating_sub(p.size);
        count -= 1;
    }
    if fits(bytes, count) {
        return Ok(forget);
    }
    // With nothing pending, only the quota can refuse: `size` is within the pending limit.
    quota.admits(size)?;
    Err(Error::Invalid("no room for this upload".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: usize, size: u64) -> Vec<PendingUpload> {
        (0..n)
            .map(|i| PendingUpload {
                blob: store::blob_id(&i.to_le_bytes()),
                size,
                created_at: i as i64,
            })
            .collect()
    }

    #[test]
    fn room_is_made_by_count_bytes_and_quota_oldest_first() {
        let policy = UploadPolicy::default();
        let unlimited = Quota {
            used: 0,
            limit: None,
        };
        let many = pending(MAX_PENDING_UPLOADS, 1);
        let forget = make_room(&many, 1, &unlimited, &policy).unwrap();
        assert_eq!(
            forget,
            [&many[0].blob],
            "the oldest, to stay within the count"
        );
        let few = pending(3, 10);
        assert!(make_room(&few, 10, &unlimited, &policy).unwrap().is_empty());
        let tight = Quota {
            used: 70,
            limit: Some(100),
        };
        assert_eq!(
            make_room(&few, 20, &tight, &policy).unwrap(),
            [&few[0].blob, &few[1].blob]
        );
        assert!(matches!(
            make_room(&few, 31, &tight, &policy),
            Err(Error::OverQuota { .. })
        ));
    }
}
