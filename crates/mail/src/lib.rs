//! Mail: mailboxes, messages, threads, and delivery of messages into mailboxes.
//!
//! `mail` owns what a mailbox holds and how a message gets there: the default mailboxes with
//! their JMAP roles, parsing a raw RFC 5322 message for its metadata (with `mail-parser`),
//! threading by Message-ID/In-Reply-To/References, durable storage (the blob first, then the
//! metadata, both on disk before `deliver` returns), importing `.eml` files, Maildirs and
//! mbox files, and submission ([`Mail::submit`]: the sender check, Bcc removal and local
//! delivery that JMAP and SMTP submission share). It must never authenticate anyone: callers hand it an account that an
//! already-validated principal (or the operator's CLI) is entitled to.
//!
//! ```text
//!   raw bytes ──> BlobStore::put (fsync) ──> parse ──> thread ──> MailStore::insert_email ──> modseq
//! ```
#![forbid(unsafe_code)]

mod compose;
mod headers;
mod import;
mod message;
mod parse;
mod sending;
mod submit;
mod uploads;
mod vacation;

use std::sync::Arc;

use aws_lc_rs::rand;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use store::{
    AccountId, BlobId, BlobStore, Changes, EmailId, EmailRecord, Mailbox, MailboxId, Store,
    ThreadId, UnixTime,
};

pub use compose::{Attachment, Draft, PartSpec, is_free_header};
pub use import::{ImportReport, ImportSource};
pub use message::{AddressGroup, Body, HeaderForm, HeaderValue, Message, Part};
pub use sending::Quota;
pub use submit::{
    Envelope, MAX_ADDRESS_LEN, MAX_RECIPIENTS, NOT_DELIVERED, Recorder, Refusal, Submission,
    SubmitError, record_refusal,
};
pub use uploads::{MAX_PENDING_UPLOADS, UploadPolicy};

#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for fuzzing (`fuzz/`, and the bounded run in the test suite); not a stable
    //! API.

    /// Everything Keypost reads from an incoming message: metadata at delivery, and every view
    /// JMAP offers of it.
    pub fn ingest(raw: &[u8]) {
        let _ = crate::parse::metadata(raw);
        if let Ok(m) = crate::Message::parse(raw) {
            let _ = (
                m.body(),
                m.structure(),
                m.headers(),
                m.preview(),
                m.subject(),
            );
            for form in [
                crate::HeaderForm::Raw,
                crate::HeaderForm::Text,
                crate::HeaderForm::Addresses,
                crate::HeaderForm::GroupedAddresses,
                crate::HeaderForm::MessageIds,
                crate::HeaderForm::Date,
                crate::HeaderForm::Urls,
            ] {
                let _ = m.header("From", form);
            }
            for part in ["0", "1", "2", "3"] {
                let _ = m.part_bytes(part);
            }
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// A mail error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The account has no mailbox with that role or id.
    #[error("no mailbox {0}")]
    NoMailbox(String),
    /// The bytes are not a message (not even headers).
    #[error("not an RFC 5322 message: {0}")]
    NotAMessage(String),
    /// Reading an import source failed.
    #[error("{path}: {error}")]
    Io {
        /// What was being read.
        path: String,
        /// Why it failed.
        error: String,
    },
    /// Storing the message would take the account over its storage limit.
    #[error("over quota: {used} of {limit} bytes used")]
    OverQuota {
        /// Bytes used now.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// A request that breaks a rule of the mail model (the message says which).
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// RFC 8621 §2: a name is 1–255 characters without control characters, unique among its
/// siblings; a parent exists and is not the mailbox itself or one of its descendants.
fn check_mailbox(
    boxes: &[Mailbox],
    name: &str,
    parent: Option<&MailboxId>,
    this: Option<&MailboxId>,
) -> Result<()> {
    if name.is_empty() || name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "a mailbox name is 1 to 255 characters without control characters".into(),
        ));
    }
    if boxes
        .iter()
        .any(|m| Some(&m.id) != this && m.parent.as_ref() == parent && m.name == name)
    {
        return Err(Error::Invalid(format!(
            "a sibling mailbox is already called {name:?}"
        )));
    }
    let mut cursor = parent.cloned();
    let mut depth = 0;
    while let Some(p) = cursor {
        if Some(&p) == this {
            return Err(Error::Invalid("a mailbox cannot be inside itself".into()));
        }
        let Some(m) = boxes.iter().find(|m| m.id == p) else {
            return Err(Error::NoMailbox(p.to_string()));
        };
        depth += 1;
        if depth > 10 {
            return Err(Error::Invalid("mailboxes nest at most 10 deep".into()));
        }
        cursor = m.parent.clone();
    }
    Ok(())
}

/// The mailboxes every account has, with their JMAP roles (RFC 8621 §2).
pub const DEFAULT_MAILBOXES: [(&str, &str); 6] = [
    ("Inbox", "inbox"),
    ("Drafts", "drafts"),
    ("Sent", "sent"),
    ("Archive", "archive"),
    ("Junk", "junk"),
    ("Trash", "trash"),
];

/// Largest message accepted, in bytes (the JMAP/SMTP limits will be advertised from this).
pub const MAX_MESSAGE_SIZE: usize = 50 * 1024 * 1024;

/// A message stored by [`Mail::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The email.
    pub id: EmailId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// Its raw message.
    pub blob_id: BlobId,
    /// `true` if the account already held exactly this message (nothing new was stored).
    pub duplicate: bool,
}

fn new_id(prefix: char) -> Result<String> {
    let mut b = [0u8; 12];
    rand::fill(&mut b)
        .map_err(|_| Error::Store(store::Error::Backend("random source failed".into())))?;
    Ok(format!("{prefix}{}", B64.encode(b)))
}

/// The mail service over a metadata store and a blob store.
#[derive(Clone)]
pub struct Mail {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    /// The limit for accounts without one of their own (`None`: unlimited).
    default_quota: Option<u64>,
    uploads: UploadPolicy,
}

impl std::fmt::Debug for Mail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mail")
    }
}

impl Mail {
    /// Mail over `store` (metadata) and `blobs` (raw messages).
    pub fn new(store: Arc<dyn Store>, blobs: Arc<dyn BlobStore>) -> Self {
        Self {
            store,
            blobs,
            default_quota: None,
            uploads: UploadPolicy::default(),
        }
    }

    /// Sets the storage limit of accounts that have none of their own.
    pub fn with_default_quota(mut self, bytes: Option<u64>) -> Self {
        self.default_quota = bytes;
        self
    }

    /// The account's mailboxes, creating the default ones (with their roles) the first time.
    pub fn mailboxes(&self, account: &AccountId) -> Result<Vec<Mailbox>> {
        let existing = self.store.list_mailboxes(account)?;
        let missing: Vec<Mailbox> = DEFAULT_MAILBOXES
            .iter()
            .enumerate()
            .filter(|(_, (_, role))| !existing.iter().any(|m| m.role.as_deref() == Some(role)))
            .map(|(i, (name, role))| {
                Ok(Mailbox {
                    id: MailboxId::new(new_id('m')?)
                        .map_err(|e| store::Error::Corrupt(e.to_string()))?,
                    account: account.clone(),
                    name: (*name).to_owned(),
                    role: Some((*role).to_owned()),
                    parent: None,
                    sort_order: i as u32 * 10,
                })
            })
            .collect::<Result<_>>()?;
        if missing.is_empty() {
            return Ok(existing);
        }
        match self.store.create_mailboxes(&missing) {
            // Another process created them at the same moment: theirs are as good as ours.
            Ok(()) | Err(store::Error::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(self.store.list_mailboxes(account)?)
    }

    /// The account's mailbox with a JMAP role (`inbox`, `sent`, ...).
    pub fn mailbox_by_role(&self, account: &AccountId, role: &str) -> Result<Mailbox> {
        self.mailboxes(account)?
            .into_iter()
            .find(|m| m.role.as_deref() == Some(role))
            .ok_or_else(|| Error::NoMailbox(role.to_owned()))
    }

    /// Stores `raw` in `mailbox` of `account`, durably (blob, then metadata) before returning.
    /// Delivering the same bytes to the same account again stores nothing and reports the
    /// existing email as a duplicate.
    pub fn deliver(
        &self,
        account: &AccountId,
        raw: &[u8],
        mailbox: &MailboxId,
        keywords: Vec<String>,
        received_at: UnixTime,
    ) -> Result<Delivered> {
        self.deliver_to(
            account,
            raw,
            std::slice::from_ref(mailbox),
            keywords,
            received_at,
        )
    }

    /// [`Mail::deliver`] into several mailboxes at once (JMAP `mailboxIds`).
    pub fn deliver_to(
        &self,
        account: &AccountId,
        raw: &[u8],
        mailboxes: &[MailboxId],
        keywords: Vec<String>,
        received_at: UnixTime,
    ) -> Result<Delivered> {
        if raw.len() > MAX_MESSAGE_SIZE {
            return Err(Error::NotAMessage(format!(
                "{} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit",
                raw.len()
            )));
        }
        let existing_boxes = self.mailboxes(account)?;
        if mailboxes.is_empty() {
            return Err(Error::NoMailbox(
                "an email must be in at least one mailbox".into(),
            ));
        }
        if let Some(m) = mailboxes
            .iter()
            .find(|m| !existing_boxes.iter().any(|e| &e.id == *m))
        {
            return Err(Error::NoMailbox(m.to_string()));
        }
        let meta = parse::metadata(raw)?;
        let blob_id = store::blob_id(raw);
        // Checked before the write, not inside it: concurrent deliveries may overshoot the
        // limit by what is in flight, as with most mail servers' quotas.
        let existing = self.store.email_with_blob(account, &blob_id)?;
        if existing.is_none() {
            self.quota(account)?.admits(raw.len() as u64)?;
        }
        if let Some(id) = existing {
            // Stored again should the file have gone (see `store::blob`): a crash between an
            // earlier delivery's commit and its second `put` is repaired by the retry.
            self.blobs.put(raw)?;
            let existing = self
                .store
                .get_email(&id)?
                .ok_or_else(|| Error::NoMailbox(id.to_string()))?;
            return Ok(Delivered {
                id,
                thread_id: existing.thread_id,
                blob_id,
                duplicate: true,
            });
        }
        self.blobs.put(raw)?;
        let thread_id =
            match self
                .store
                .find_thread(account, &meta.parents, meta.message_id.as_deref())?
            {
                Some(t) => t,
                None => {
                    ThreadId::new(new_id('t')?).map_err(|e| store::Error::Corrupt(e.to_string()))?
                }
            };
        let id = EmailId::new(new_id('e')?).map_err(|e| store::Error::Corrupt(e.to_string()))?;
        let record = EmailRecord {
            id: id.clone(),
            account: account.clone(),
            blob_id: blob_id.clone(),
            thread_id: thread_id.clone(),
            message_id: meta.message_id,
            subject: meta.subject,
            from: meta.from,
            to: meta.to,
            cc: meta.cc,
            sent_at: meta.sent_at,
            received_at,
            size: raw.len() as u64,
            preview: meta.preview,
            has_attachment: meta.has_attachment,
            keywords,
        };
        self.store
            .insert_email(&record, mailboxes, &meta.parents, &meta.search)?;
        // Again, now that the email refers to it: a no-op unless an upload of the same bytes
        // expired meanwhile and took the file (see `store::blob`).
        self.blobs.put(raw)?;
        Ok(Delivered {
            id,
            thread_id,
            blob_id,
            duplicate: false,
        })
    }

    /// An email's metadata.
    pub fn email(&self, id: &EmailId) -> Result<Option<EmailRecord>> {
        Ok(self.store.get_email(id)?)
    }

    /// How many emails a mailbox (or the account) holds.
    pub fn count(&self, account: &AccountId, mailbox: Option<&MailboxId>) -> Result<u64> {
        Ok(self.store.count_emails(account, mailbox)?)
    }

    /// Unread emails in a mailbox.
    pub fn unread(&self, account: &AccountId, mailbox: &MailboxId) -> Result<u64> {
        Ok(self.store.count_unread(account, mailbox)?)
    }

    /// The account's modification sequence: JMAP `state` strings derive from it.
    pub fn modseq(&self, account: &AccountId) -> Result<i64> {
        Ok(self.store.mail_modseq(account)?)
    }

    /// Email ids of the account that `query` selects, in its order, and the total if asked.
    pub fn query(
        &self,
        account: &AccountId,
        query: &store::EmailQuery,
        page: store::QueryPage,
    ) -> Result<(Vec<EmailId>, Option<u64>)> {
        Ok(self.store.query_emails(account, query, page)?)
    }

    /// The account's emails among `ids`, each with its mailboxes; ids of other accounts and
    /// unknown ids are simply absent (the caller reports them as not found).
    pub fn emails(
        &self,
        account: &AccountId,
        ids: &[EmailId],
    ) -> Result<Vec<(EmailRecord, Vec<MailboxId>)>> {
        let mut found = Vec::new();
        for id in ids {
            if let Some(e) = self.store.get_email(id)?.filter(|e| &e.account == account) {
                found.push(e);
            }
        }
        let ids: Vec<EmailId> = found.iter().map(|e| e.id.clone()).collect();
        let memberships = self.store.email_mailboxes(&ids)?;
        Ok(found
            .into_iter()
            .map(|e| {
                let boxes = memberships
                    .iter()
                    .filter(|(id, _)| id == &e.id)
                    .map(|(_, m)| m.clone())
                    .collect();
                (e, boxes)
            })
            .collect())
    }

    /// The account's emails in a thread, oldest first.
    pub fn thread(&self, account: &AccountId, thread: &ThreadId) -> Result<Vec<EmailId>> {
        Ok(self.store.thread_emails(account, thread)?)
    }

    /// A blob's bytes, if it is the raw message of one of the account's emails. Blobs are
    /// shared by content, so access is decided by ownership of an email, never by the id alone.
    pub fn blob(&self, account: &AccountId, blob: &BlobId) -> Result<Option<(EmailId, Vec<u8>)>> {
        let Some(email) = self.store.email_with_blob(account, blob)? else {
            return Ok(None);
        };
        Ok(self.blobs.get(blob)?.map(|b| (email, b)))
    }

    /// Replaces an email's keywords and/or mailboxes (an email is always in at least one).
    pub fn update(
        &self,
        account: &AccountId,
        id: &EmailId,
        keywords: Option<&[String]>,
        mailboxes: Option<&[MailboxId]>,
    ) -> Result<i64> {
        if mailboxes.is_some_and(<[MailboxId]>::is_empty) {
            return Err(Error::NoMailbox(
                "an email must be in at least one mailbox".into(),
            ));
        }
        Ok(self.store.update_email(account, id, keywords, mailboxes)?)
    }

    /// Destroys an email.
    pub fn destroy(&self, account: &AccountId, id: &EmailId) -> Result<i64> {
        Ok(self.store.destroy_email(account, id)?)
    }

    /// Email changes since a modseq; `None` if it cannot be answered.
    pub fn email_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<EmailId>>> {
        Ok(self.store.email_changes(account, since, max)?)
    }

    /// Threads whose emails changed after `since`; `None` if it cannot be answered.
    pub fn thread_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<store::Changes<ThreadId>>> {
        Ok(self.store.thread_changes(account, since, max)?)
    }

    /// Mailbox changes since a modseq; `None` if it cannot be answered.
    pub fn mailbox_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<MailboxId>>> {
        // Make sure the default mailboxes exist before anyone asks what changed.
        self.mailboxes(account)?;
        Ok(self.store.mailbox_changes(account, since, max)?)
    }

    /// Creates a mailbox (never one with a role: those exist from the start).
    pub fn create_mailbox(
        &self,
        account: &AccountId,
        name: &str,
        parent: Option<&MailboxId>,
        sort_order: u32,
    ) -> Result<Mailbox> {
        let boxes = self.mailboxes(account)?;
        check_mailbox(&boxes, name, parent, None)?;
        let m = Mailbox {
            id: MailboxId::new(new_id('m')?).map_err(|e| store::Error::Corrupt(e.to_string()))?,
            account: account.clone(),
            name: name.to_owned(),
            role: None,
            parent: parent.cloned(),
            sort_order,
        };
        self.store.create_mailboxes(std::slice::from_ref(&m))?;
        Ok(m)
    }

    /// Renames, moves or reorders a mailbox.
    pub fn update_mailbox(
        &self,
        account: &AccountId,
        id: &MailboxId,
        name: &str,
        parent: Option<&MailboxId>,
        sort_order: u32,
    ) -> Result<()> {
        let boxes = self.mailboxes(account)?;
        check_mailbox(&boxes, name, parent, Some(id))?;
        self.store
            .update_mailbox(account, id, name, parent, sort_order)?;
        Ok(())
    }

    /// Destroys a mailbox that has no role (see [`store::MailStore::destroy_mailbox`]).
    pub fn destroy_mailbox(
        &self,
        account: &AccountId,
        id: &MailboxId,
        remove_emails: bool,
    ) -> Result<()> {
        let boxes = self.mailboxes(account)?;
        match boxes.iter().find(|m| &m.id == id) {
            None => return Err(Error::NoMailbox(id.to_string())),
            Some(m) if m.role.is_some() => {
                return Err(Error::Invalid(
                    "a mailbox with a role cannot be destroyed".into(),
                ));
            }
            Some(_) => {}
        }
        self.store.destroy_mailbox(account, id, remove_emails)?;
        Ok(())
    }

    /// The parsed body of one of the account's emails.
    pub fn body(&self, account: &AccountId, email: &EmailRecord) -> Result<Option<Body>> {
        if &email.account != account {
            return Ok(None);
        }
        match self.blobs.get(&email.blob_id)? {
            Some(raw) => Ok(Some(Message::parse(&raw)?.body())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
