//! Writing a message from its parts (JMAP `Email/set` create, RFC 8621 §4.6): header fields,
//! a plain-text and/or HTML body, attachments. The bytes are built with `mail-builder`, so
//! encoding (RFC 2047 words, quoted-printable, base64, folding) is the field library's.

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use store::EmailAddress;

use crate::{Error, Result, new_id};

/// A file carried by the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `type/subtype`.
    pub media_type: String,
    /// File name.
    pub name: Option<String>,
    /// Shown inline (an image in the HTML, named by `cid`) rather than as a file.
    pub inline: bool,
    /// Content-Id, without angle brackets.
    pub cid: Option<String>,
    /// The decoded content.
    pub bytes: Vec<u8>,
}

/// A body given as a MIME tree (JMAP `bodyStructure`): a container of parts, or a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartSpec {
    /// `multipart/*` with its children.
    Multipart {
        /// `multipart/mixed`, `multipart/alternative`, ...
        media_type: String,
        /// The children, in order.
        parts: Vec<PartSpec>,
    },
    /// Text (`text/*`), written as UTF-8.
    Text {
        /// `text/plain`, `text/html`, ...
        media_type: String,
        /// The text.
        text: String,
    },
    /// A file.
    File(Attachment),
}

impl PartSpec {
    fn mime(&self) -> MimePart<'_> {
        match self {
            PartSpec::Multipart { media_type, parts } => MimePart::new(
                media_type.as_str(),
                parts.iter().map(PartSpec::mime).collect::<Vec<_>>(),
            ),
            PartSpec::Text { media_type, text } => {
                MimePart::new(media_type.as_str(), text.as_str())
            }
            PartSpec::File(a) => {
                let part = MimePart::new(a.media_type.as_str(), a.bytes.as_slice());
                let part = if a.inline {
                    part.inline()
                } else {
                    part.attachment(a.name.as_deref().unwrap_or("attachment"))
                };
                match &a.cid {
                    Some(cid) => part.cid(cid.as_str()),
                    None => part,
                }
            }
        }
    }
}

/// A message to write. Unset fields are left out; a Message-ID and Date are always written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    /// From.
    pub from: Vec<EmailAddress>,
    /// Sender.
    pub sender: Vec<EmailAddress>,
    /// To.
    pub to: Vec<EmailAddress>,
    /// Cc.
    pub cc: Vec<EmailAddress>,
    /// Bcc (kept in the stored draft; a submission never sends it on).
    pub bcc: Vec<EmailAddress>,
    /// Reply-To.
    pub reply_to: Vec<EmailAddress>,
    /// Subject.
    pub subject: Option<String>,
    /// Date (Unix seconds); now when unset.
    pub sent_at: Option<i64>,
    /// Message-ID (without brackets); generated when unset.
    pub message_id: Option<String>,
    /// In-Reply-To.
    pub in_reply_to: Vec<String>,
    /// References.
    pub references: Vec<String>,
    /// Further header fields, raw (`header:X-Foo` values).
    pub headers: Vec<(String, String)>,
    /// The plain-text body.
    pub text: Option<String>,
    /// The HTML body.
    pub html: Option<String>,
    /// Attachments, in order.
    pub attachments: Vec<Attachment>,
    /// The whole body as a MIME tree; when set, `text`, `html` and `attachments` are unused.
    pub structure: Option<PartSpec>,
}

fn addresses(list: &[EmailAddress]) -> Option<Address<'_>> {
    if list.is_empty() {
        return None;
    }
    Some(Address::new_list(
        list.iter()
            .map(|a| Address::new_address(a.name.as_deref(), a.email.as_str()))
            .collect(),
    ))
}

/// Header fields a draft sets through its own properties; a raw `header:` must not repeat them.
const STRUCTURED: [&str; 14] = [
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// Whether `name` is a header field name a draft may set raw (RFC 5322 field-name, not one of
/// the fields the draft's own properties and the MIME structure set).
pub fn is_free_header(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
        && !STRUCTURED.contains(&name.to_ascii_lowercase().as_str())
}

impl Draft {
    /// The RFC 5322 bytes.
    pub fn write(&self) -> Result<Vec<u8>> {
        let mut m = MessageBuilder::new();
        macro_rules! set_addresses {
            ($($field:ident => $setter:ident),*) => {$(
                if let Some(a) = addresses(&self.$field) {
                    m = m.$setter(a);
                }
            )*};
        }
        set_addresses!(from => from, sender => sender, to => to, cc => cc, bcc => bcc, reply_to => reply_to);
        if let Some(s) = &self.subject {
            m = m.subject(s.as_str());
        }
        m = m.date(self.sent_at.unwrap_or_else(store::clock::now));
        let domain = self
            .from
            .first()
            .and_then(|a| a.email.rsplit_once('@'))
            .map_or("keypost.invalid", |(_, d)| d);
        let id = match &self.message_id {
            Some(id) => id.clone(),
            None => format!("{}@{domain}", new_id('m')?),
        };
        m = m.message_id(id);
        if !self.in_reply_to.is_empty() {
            m = m.in_reply_to(MessageId::new_list(
                self.in_reply_to.iter().map(String::as_str),
            ));
        }
        if !self.references.is_empty() {
            m = m.references(MessageId::new_list(
                self.references.iter().map(String::as_str),
            ));
        }
        for (name, value) in &self.headers {
            if !is_free_header(name) {
                return Err(Error::Invalid(format!("header:{name} cannot be set raw")));
            }
            m = m.header(name.clone(), Raw::new(value.trim().to_owned()));
        }
        if let Some(tree) = &self.structure {
            return m
                .body(tree.mime())
                .write_to_vec()
                .map_err(|e| Error::Invalid(format!("cannot write the message: {e}")));
        }
        if let Some(t) = &self.text {
            m = m.text_body(t.as_str());
        }
        if let Some(h) = &self.html {
            m = m.html_body(h.as_str());
        }
        if self.text.is_none() && self.html.is_none() && self.attachments.is_empty() {
            m = m.text_body("");
        }
        for a in &self.attachments {
            let name = || a.name.clone().unwrap_or_else(|| "attachment".into());
            m = match (&a.cid, a.inline) {
                (Some(cid), true) => m.inline(a.media_type.clone(), cid.clone(), a.bytes.clone()),
                _ => m.attachment(a.media_type.clone(), name(), a.bytes.clone()),
            };
        }
        m.write_to_vec()
            .map_err(|e| Error::Invalid(format!("cannot write the message: {e}")))
    }
}
