//! What an account sends as (identities), what it sent (submissions), and how much mail it may
//! keep (quota). Identities and submissions are records here; sending is [`crate::Mail::submit`].

use store::{AccountId, Changes, Identity, IdentityId, QuotaSetting, Submission, SubmissionId};

use crate::{Error, Mail, Result, new_id};

/// An account's storage: bytes used and the limit that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes of live mail.
    pub used: u64,
    /// The limit (`None`: unlimited).
    pub limit: Option<u64>,
}

impl Quota {
    /// `Ok` if `bytes` more fit.
    pub fn admits(&self, bytes: u64) -> Result<()> {
        match self.limit {
            Some(limit) if self.used.saturating_add(bytes) > limit => Err(Error::OverQuota {
                used: self.used,
                limit,
            }),
            _ => Ok(()),
        }
    }
}

impl Mail {
    /// The account's storage use and limit.
    pub fn quota(&self, account: &AccountId) -> Result<Quota> {
        let limit = match self.store.account_quota(account)? {
            QuotaSetting::Default => self.default_quota,
            QuotaSetting::Unlimited => None,
            QuotaSetting::Limit(n) => Some(n),
        };
        Ok(Quota {
            used: self.store.mail_usage(account)?,
            limit,
        })
    }

    /// Sets the account's own limit.
    pub fn set_quota(&self, account: &AccountId, quota: QuotaSetting) -> Result<()> {
        Ok(self.store.set_account_quota(account, quota)?)
    }

    /// The account's identities, primary first; the primary one (its own address and name) is
    /// created the first time.
    pub fn identities(&self, account: &AccountId) -> Result<Vec<Identity>> {
        let list = self.store.list_identities(account)?;
        if list.iter().any(|i| i.is_primary) {
            return Ok(list);
        }
        let acc = self
            .store
            .get_account(account)?
            .ok_or_else(|| Error::Invalid("no such account".into()))?;
        let primary = Identity {
            id: IdentityId::new(new_id('I')?).map_err(|e| Error::Invalid(e.to_string()))?,
            account: account.clone(),
            name: acc.display_name,
            email: acc.email,
            reply_to: None,
            bcc: None,
            text_signature: String::new(),
            html_signature: String::new(),
            is_primary: true,
        };
        self.store.create_identity(&primary)?;
        self.store.list_identities(account).map_err(Error::from)
    }

    /// Adds an identity. Its address must be the account's own: Keypost has no send-as
    /// delegation, and an identity is a promise the submission check keeps.
    pub fn create_identity(&self, mut identity: Identity) -> Result<Identity> {
        let primary = self
            .identities(&identity.account)?
            .into_iter()
            .find(|i| i.is_primary)
            .ok_or_else(|| Error::Invalid("no primary identity".into()))?;
        if !identity.email.eq_ignore_ascii_case(&primary.email) {
            return Err(Error::Invalid(format!(
                "this account may only send as {}",
                primary.email
            )));
        }
        identity.email = primary.email;
        identity.id = IdentityId::new(new_id('I')?).map_err(|e| Error::Invalid(e.to_string()))?;
        identity.is_primary = false;
        self.store.create_identity(&identity)?;
        Ok(identity)
    }

    /// Changes an identity's name, defaults and signatures (never its address).
    pub fn update_identity(&self, identity: &Identity) -> Result<()> {
        self.store.update_identity(identity)?;
        Ok(())
    }

    /// Removes a non-primary identity.
    pub fn destroy_identity(&self, account: &AccountId, id: &IdentityId) -> Result<()> {
        self.store.destroy_identity(account, id)?;
        Ok(())
    }

    /// Identities changed after `since`.
    pub fn identity_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<IdentityId>>> {
        self.identities(account)?;
        Ok(self.store.identity_changes(account, since, max)?)
    }

    /// Records a submission, giving it its id.
    pub fn record_submission(&self, mut submission: Submission) -> Result<Submission> {
        submission.id =
            SubmissionId::new(new_id('S')?).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store.insert_submission(&submission)?;
        Ok(submission)
    }

    /// The account's submissions, newest first.
    pub fn submissions(&self, account: &AccountId) -> Result<Vec<Submission>> {
        Ok(self.store.list_submissions(account)?)
    }

    /// Forgets a submission.
    pub fn destroy_submission(&self, account: &AccountId, id: &SubmissionId) -> Result<()> {
        self.store.destroy_submission(account, id)?;
        Ok(())
    }

    /// Submissions changed after `since`.
    pub fn submission_changes(
        &self,
        account: &AccountId,
        since: i64,
        max: u64,
    ) -> Result<Option<Changes<SubmissionId>>> {
        Ok(self.store.submission_changes(account, since, max)?)
    }
}
