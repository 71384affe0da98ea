//! Blob ids as JMAP clients see them, and reading a blob on behalf of a principal.
//!
//! A stored blob is named by its SHA-256 ([`BlobId`]); a body part of a stored message is
//! named `{message blob}p{partId}`, so attachments can be downloaded and attached messages
//! parsed without storing them twice. Access always follows ownership: a blob is readable only
//! if it is the account's upload or the raw message of one of the account's emails.

use store::{BlobId, EmailId};

use crate::{Authed, Jmap};

/// A blob a client can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BlobRef {
    /// A whole stored blob.
    Whole(BlobId),
    /// One body part of a stored message.
    Part(BlobId, String),
}

impl BlobRef {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.split_once('p') {
            None => BlobId::new(s).ok().map(Self::Whole),
            Some((blob, part)) if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) => {
                Some(Self::Part(BlobId::new(blob).ok()?, part.to_owned()))
            }
            Some(_) => None,
        }
    }

    /// The id of part `part_id` of the message stored as `blob`.
    pub(crate) fn part_id(blob: &BlobId, part_id: &str) -> String {
        format!("{blob}p{part_id}")
    }
}

/// A blob's bytes as the account may read them.
pub(crate) struct Fetched {
    pub(crate) bytes: Vec<u8>,
    /// The email whose message holds the blob (`None` for the account's own uploads).
    pub(crate) email: Option<EmailId>,
    /// How many bytes were read from the store to find them: the whole message for a part.
    pub(crate) read: usize,
}

/// Reads `blob` for the principal; `Ok(None)` when the account may not read it (or it does not
/// exist, which the caller must not distinguish).
pub(crate) fn fetch(j: &Jmap, a: &Authed, blob: &BlobRef) -> mail::Result<Option<Fetched>> {
    let whole = match blob {
        BlobRef::Whole(id) | BlobRef::Part(id, _) => id,
    };
    // An email's message first: reading it is reading that email, and the audit says so.
    let (bytes, email) = if let Some((email, b)) = j.mail.blob(&a.account.id, whole)? {
        (b, Some(email))
    } else if let Some(b) = j.mail.uploaded(&a.account.id, whole)? {
        (b, None)
    } else {
        return Ok(None);
    };
    let read = bytes.len();
    match blob {
        BlobRef::Whole(_) => Ok(Some(Fetched { bytes, email, read })),
        BlobRef::Part(_, part) => Ok(mail::Message::parse(&bytes)
            .ok()
            .and_then(|m| m.part_bytes(part))
            .map(|(bytes, _)| Fetched { bytes, email, read })),
    }
}
