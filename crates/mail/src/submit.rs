//! Sending a message as an account: JMAP `EmailSubmission/set` today, SMTP submission next,
//! both through [`Mail::submit`]. This module owns who may be named as the message's sender,
//! who receives it, what they receive (never its `Bcc`), each recipient's outcome, and the
//! audit record of every submission, refused ones included. Protocols only translate their
//! arguments into a [`Submission`] and a [`Refusal`] into their own error.
//!
//! ```text
//!   Submission ──identity──> From/Sender/MAIL FROM all the account's ──> recipients (≤ 100)
//!      │ refused: MailSubmissionRefused             ──> Bcc removed ──> each recipient:
//!      │                                   account: deliver (MailDelivered) │ other: not delivered
//!      └──────────────> store::Submission (per-recipient outcome) ──> MailSent
//! ```
//!
//! Until outbound SMTP exists only Keypost accounts can be reached. Every other recipient,
//! whether its domain is one of Keypost's or not, and whether or not an account by that name
//! existed once (or is disabled), gets the same outcome, [`NOT_DELIVERED`]: a submission is
//! never refused, nor answered differently, because of who has an account.

use audit::{Event, Operation};
use mail_parser::HeaderName;
use store::{Account, Delivery, EmailId, IdentityId, UnixTime};

use crate::headers::{self, Field, Unreadable};
use crate::{Error, Mail};

/// Most distinct recipients of one submission (Gmail's and many MSAs' figure): a bound on the
/// work of one request and on how fast anyone can probe addresses.
pub const MAX_RECIPIENTS: usize = 100;

/// Longest address accepted (RFC 5321 §4.5.3.1.3: a path is at most 256 octets with brackets).
pub const MAX_ADDRESS_LEN: usize = 254;

/// How many offending addresses a refusal (and its audit record) names.
const MAX_NAMED: usize = 10;

/// The reply recorded for a recipient that no Keypost account receives for: the same text for
/// an address in a Keypost domain as for any other, so the answer does not say which.
pub const NOT_DELIVERED: &str =
    "550 5.4.4 Not delivered: no route to this recipient (outbound mail is not available yet)";

/// Header fields a recipient never sees (RFC 5322 §3.6.3, §3.6.6): the sender's copy keeps them.
const BLIND: [&str; 2] = ["bcc", "resent-bcc"];

/// Where the records of a submission go, and who they name: the protocol's request (its
/// principal, token and source), which answers only once the records are durable.
pub trait Recorder {
    /// `event` with everything that identifies the submitter (realm, actor, client, token,
    /// source).
    fn attribute(&self, event: Event) -> Event;
    /// Records `event` as part of the submitter's request.
    fn record(&self, event: Event);
}

/// The SMTP envelope of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM.
    pub mail_from: String,
    /// RCPT TO.
    pub rcpt_to: Vec<String>,
}

/// A request to send one of the account's emails.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The sending account, for which the caller has authenticated a principal.
    pub account: &'a Account,
    /// The identity to send as; `None` for the primary one.
    pub identity: Option<IdentityId>,
    /// The email to send, one of the account's: its stored copy is the sender's (Bcc kept).
    pub email: EmailId,
    /// The envelope; `None` derives it from the message (RFC 8621 §7: the identity's address,
    /// and the To, Cc and Bcc addresses).
    pub envelope: Option<Envelope>,
    /// When (Unix seconds).
    pub at: UnixTime,
    /// How it was submitted, for the audit record (`EmailSubmission`, `SMTP`).
    pub via: &'static str,
}

/// Why a submission was refused. Nothing was delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The request does not say what to send (the protocol's arguments were not usable).
    #[error("{property}: {why}")]
    Malformed {
        /// The argument.
        property: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The identity is not one of the account's.
    #[error("no such identity")]
    UnknownIdentity,
    /// The email is not one of the account's.
    #[error("no such email")]
    NoSuchEmail,
    /// The message cannot be sent as it is written.
    #[error("the message's {property} cannot be sent: {why}")]
    InvalidEmail {
        /// The header field (lowercase) at fault.
        property: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `From` or `Sender` address is not the account's (`""` stands for an entry without
    /// an address).
    #[error("every From and Sender address must be the account's own")]
    ForbiddenFrom {
        /// The offending entries (at most ten).
        addresses: Vec<String>,
    },
    /// The envelope's MAIL FROM is not the account's address.
    #[error("MAIL FROM must be the account's own address")]
    ForbiddenMailFrom,
    /// Recipients that are not addresses at all (nothing is said about whether any exist).
    #[error("recipients that are not email addresses")]
    InvalidRecipients {
        /// The offending entries (at most ten).
        addresses: Vec<String>,
    },
    /// Nobody to send to.
    #[error("the message has no recipients")]
    NoRecipients,
    /// More distinct recipients than [`MAX_RECIPIENTS`].
    #[error("more than {max} recipients")]
    TooManyRecipients {
        /// The limit.
        max: usize,
    },
}

impl Refusal {
    /// The audit record's `details.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed { .. } => "Malformed",
            Refusal::UnknownIdentity => "UnknownIdentity",
            Refusal::NoSuchEmail => "NoSuchEmail",
            Refusal::InvalidEmail { .. } => "InvalidEmail",
            Refusal::ForbiddenFrom { .. } => "ForbiddenFrom",
            Refusal::ForbiddenMailFrom => "ForbiddenMailFrom",
            Refusal::InvalidRecipients { .. } => "InvalidRecipients",
            Refusal::NoRecipients => "NoRecipients",
            Refusal::TooManyRecipients { .. } => "TooManyRecipients",
        }
    }
}

/// A submission that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Refused (and audited as `MailSubmissionRefused`).
    #[error("submission refused: {0}")]
    Refused(Refusal),
    /// Storage failed.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// Audits a refused submission (`email`: what it would have sent, when known). [`Mail::submit`]
/// does this itself; a protocol calls it for a request it cannot even turn into a
/// [`Submission`], so that no refusal goes unrecorded.
pub fn record_refusal(recorder: &dyn Recorder, refusal: &Refusal, email: Option<&EmailId>) {
    let mut ev = recorder
        .attribute(Event::failure(Operation::MailSubmissionRefused))
        .detail("reason", refusal.reason())
        .detail("description", refusal.to_string());
    if let Some(e) = email {
        ev = ev.detail("items", vec![e.to_string()]);
    }
    match refusal {
        Refusal::ForbiddenFrom { addresses } | Refusal::InvalidRecipients { addresses } => {
            ev = ev.detail("addresses", addresses.clone());
        }
        Refusal::InvalidEmail { property, .. } | Refusal::Malformed { property, .. } => {
            ev = ev.detail("property", *property);
        }
        _ => {}
    }
    recorder.record(ev);
}

/// An address as it may be named in a refusal or an audit record: bounded.
fn named(a: &str) -> String {
    a.chars().take(MAX_ADDRESS_LEN).collect()
}

/// Whether `a` can be a recipient: `local@domain`, bounded, nothing that would end or split
/// an SMTP path or a header field.
fn is_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    a.len() <= MAX_ADDRESS_LEN
        && !local.is_empty()
        && !domain.is_empty()
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>,;\"()[]\\".contains(c))
        && !domain.contains(':')
}

/// Every `From` and `Sender` entry must be one of `owned` (lowercase); the message must have
/// exactly one From field with at least one address, and at most one Sender field. The fields
/// are read twice, by the lenient splitter of [`headers`] and by the message parser itself, so
/// a field that either reader sees is checked.
fn check_originators(raw: &[u8], fields: &[Field], owned: &[String]) -> Result<(), Refusal> {
    let of = |name: &'static str| fields.iter().filter(move |f| f.name == name);
    let mut entries: Vec<headers::Mailbox> = Vec::new();
    for f in of("from").chain(of("sender")) {
        entries.extend(headers::field_mailboxes(raw, f));
    }
    let parsed_from = headers::parser_mailboxes(raw, &HeaderName::From);
    let parsed_sender = headers::parser_mailboxes(raw, &HeaderName::Sender);
    entries.extend(parsed_from.iter().chain(&parsed_sender).flatten().cloned());
    let mut foreign: Vec<String> = Vec::new();
    for e in entries {
        let ok = e
            .as_deref()
            .is_some_and(|a| owned.iter().any(|o| o.eq_ignore_ascii_case(a)));
        let name = named(e.as_deref().unwrap_or_default());
        if !ok && !foreign.contains(&name) && foreign.len() < MAX_NAMED {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        return Err(Refusal::ForbiddenFrom { addresses: foreign });
    }
    let from: Vec<&Field> = of("from").collect();
    if from.len() != 1 || parsed_from.len() != 1 {
        return Err(Refusal::InvalidEmail {
            property: "from",
            why: "a message has exactly one From field",
        });
    }
    if from
        .iter()
        .all(|f| headers::field_mailboxes(raw, f).is_empty())
    {
        return Err(Refusal::InvalidEmail {
            property: "from",
            why: "the From field names no address",
        });
    }
    if of("sender").count() > 1 || parsed_sender.len() > 1 {
        return Err(Refusal::InvalidEmail {
            property: "sender",
            why: "a message has at most one Sender field",
        });
    }
    Ok(())
}

/// The distinct recipients, lowercase and sorted, bounded and well-formed.
fn recipients(list: impl IntoIterator<Item = String>) -> Result<Vec<String>, Refusal> {
    let mut all: Vec<String> = list.into_iter().map(|r| r.to_ascii_lowercase()).collect();
    all.sort();
    all.dedup();
    if all.is_empty() {
        return Err(Refusal::NoRecipients);
    }
    if all.len() > MAX_RECIPIENTS {
        return Err(Refusal::TooManyRecipients {
            max: MAX_RECIPIENTS,
        });
    }
    let bad: Vec<String> = all
        .iter()
        .filter(|a| !is_address(a))
        .take(MAX_NAMED)
        .map(|a| named(a))
        .collect();
    if !bad.is_empty() {
        return Err(Refusal::InvalidRecipients { addresses: bad });
    }
    Ok(all)
}

/// What recipients receive: the message without its Bcc fields, every other byte unchanged.
fn for_recipients(raw: &[u8], fields: &[Field]) -> Result<Vec<u8>, Refusal> {
    let out = headers::without(raw, fields, &BLIND);
    // The message parser must agree that no blind field is left: if it reads the header
    // section differently, refuse rather than show a Bcc.
    if [HeaderName::Bcc, HeaderName::ResentBcc]
        .iter()
        .any(|n| !headers::parser_mailboxes(&out, n).is_empty())
    {
        return Err(Refusal::InvalidEmail {
            property: "bcc",
            why: "its Bcc field cannot be told apart from the rest",
        });
    }
    Ok(out)
}

impl Mail {
    /// Sends `s`: checks who it is from, delivers what recipients may see (never the Bcc) into
    /// the inbox of each recipient that is a Keypost account, records the submission with
    /// every recipient's outcome, and audits it (`MailSent`, `MailDelivered` in each
    /// recipient's realm), or audits its refusal (`MailSubmissionRefused`).
    pub fn submit(
        &self,
        s: &Submission<'_>,
        recorder: &dyn Recorder,
    ) -> std::result::Result<store::Submission, SubmitError> {
        let out = self.try_submit(s, recorder);
        if let Err(SubmitError::Refused(r)) = &out {
            record_refusal(recorder, r, Some(&s.email));
        }
        out
    }

    fn try_submit(
        &self,
        s: &Submission<'_>,
        recorder: &dyn Recorder,
    ) -> std::result::Result<store::Submission, SubmitError> {
        let refused = |r| Err(SubmitError::Refused(r));
        let account = s.account;
        let identities = self.identities(&account.id)?;
        let Some(identity) = identities
            .iter()
            .find(|i| match &s.identity {
                Some(id) => &i.id == id,
                None => i.is_primary,
            })
            .cloned()
        else {
            return refused(Refusal::UnknownIdentity);
        };
        let Some((email, _)) = self
            .emails(&account.id, std::slice::from_ref(&s.email))?
            .into_iter()
            .next()
        else {
            return refused(Refusal::NoSuchEmail);
        };
        let Some((_, raw)) = self.blob(&account.id, &email.blob_id)? else {
            return refused(Refusal::NoSuchEmail);
        };
        let mut owned: Vec<String> = std::iter::once(&account.email)
            .chain(identities.iter().map(|i| &i.email))
            .map(|a| a.to_ascii_lowercase())
            .collect();
        owned.sort();
        owned.dedup();
        let fields = match headers::fields(&raw) {
            Ok(f) => f,
            Err(Unreadable::BareCr) => {
                return refused(Refusal::InvalidEmail {
                    property: "headers",
                    why: "a carriage return without a line feed in the header section",
                });
            }
        };
        check_originators(&raw, &fields, &owned).map_err(SubmitError::Refused)?;
        let (mail_from, rcpt_to) = match &s.envelope {
            Some(e) => (e.mail_from.clone(), e.rcpt_to.clone()),
            None => {
                let mut rcpt = Vec::new();
                for f in fields
                    .iter()
                    .filter(|f| ["to", "cc", "bcc"].contains(&f.name.as_str()))
                {
                    rcpt.extend(headers::field_mailboxes(&raw, f).into_iter().flatten());
                }
                (identity.email.clone(), rcpt)
            }
        };
        if !owned.iter().any(|o| o.eq_ignore_ascii_case(&mail_from)) {
            return refused(Refusal::ForbiddenMailFrom);
        }
        let rcpt_to = recipients(rcpt_to).map_err(SubmitError::Refused)?;
        let delivered = for_recipients(&raw, &fields).map_err(SubmitError::Refused)?;

        let mut delivery = Vec::with_capacity(rcpt_to.len());
        for rcpt in &rcpt_to {
            let outcome = match self
                .store
                .find_account_by_email(rcpt)
                .map_err(Error::from)?
            {
                Some(to) if !to.disabled => self.deliver_local(s, &to, &delivered, recorder),
                // No account, a disabled one, or another domain altogether: one answer.
                _ => Outcome::NotDelivered,
            };
            delivery.push(outcome.record(rcpt));
        }
        let undelivered: Vec<String> = delivery
            .iter()
            .filter(|d| d.delivered != "yes")
            .map(|d| d.rcpt.clone())
            .collect();
        let record = self.record_submission(store::Submission {
            id: store::SubmissionId::new("pending").map_err(|e| Error::Invalid(e.to_string()))?,
            account: account.id.clone(),
            identity: identity.id,
            email: email.id.clone(),
            thread: email.thread_id.clone(),
            mail_from,
            rcpt_to: rcpt_to.clone(),
            send_at: s.at,
            delivery,
        })?;
        recorder.record(
            recorder
                .attribute(Event::success(Operation::MailSent))
                .detail("items", vec![email.id.to_string()])
                .detail("submission", record.id.to_string())
                .detail("recipients", rcpt_to)
                .detail("undelivered", undelivered)
                .detail("via", s.via),
        );
        Ok(record)
    }

    /// Delivers `raw` into the inbox of `to`, a Keypost account, and brings back its vacation
    /// response if one is due.
    fn deliver_local(
        &self,
        s: &Submission<'_>,
        to: &Account,
        raw: &[u8],
        recorder: &dyn Recorder,
    ) -> Outcome {
        let stored = self
            .mailbox_by_role(&to.id, "inbox")
            .and_then(|inbox| self.deliver(&to.id, raw, &inbox.id, Vec::new(), s.at));
        let d = match stored {
            Ok(d) => d,
            Err(Error::OverQuota { .. }) => return Outcome::MailboxFull,
            Err(e) => {
                tracing::error!(error = %e, "local delivery failed");
                return Outcome::Failed;
            }
        };
        recorder.record(
            Event::success(Operation::MailDelivered)
                .realm(&to.realm)
                .actor(s.account.email.clone())
                .target(to.email.clone())
                .detail("items", vec![d.id.to_string()])
                .detail("via", s.via),
        );
        let sender = s.account;
        let reply = self.vacation_reply(
            &to.id,
            &to.email,
            &to.display_name,
            &sender.email,
            raw,
            s.at,
        );
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "vacation response not computed");
                None
            }
        };
        if let Some(reply) = reply {
            let back = self
                .mailbox_by_role(&sender.id, "inbox")
                .and_then(|inbox| self.deliver(&sender.id, &reply, &inbox.id, Vec::new(), s.at));
            match back {
                Ok(r) => recorder.record(
                    Event::success(Operation::MailDelivered)
                        .realm(&sender.realm)
                        .actor(to.email.clone())
                        .target(sender.email.clone())
                        .detail("items", vec![r.id.to_string()])
                        .detail("via", "VacationResponse"),
                ),
                Err(e) => tracing::warn!(error = %e, "vacation response not delivered"),
            }
        }
        Outcome::Delivered
    }
}

/// How one recipient fared.
enum Outcome {
    Delivered,
    MailboxFull,
    Failed,
    NotDelivered,
}

impl Outcome {
    fn record(&self, rcpt: &str) -> Delivery {
        let (reply, delivered) = match self {
            Outcome::Delivered => ("250 2.1.5 Delivered to mailbox", "yes"),
            Outcome::MailboxFull => ("552 5.2.2 Mailbox full", "no"),
            Outcome::Failed => (
                "451 4.3.0 Not delivered: a storage error; send it again",
                "no",
            ),
            Outcome::NotDelivered => (NOT_DELIVERED, "no"),
        };
        Delivery {
            rcpt: rcpt.to_owned(),
            smtp_reply: reply.to_owned(),
            delivered: delivered.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
