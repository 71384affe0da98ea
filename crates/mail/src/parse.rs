//! Message metadata, parsed with `mail-parser` (which accepts the malformed mail the real world
//! sends; we only refuse bytes with no header section at all).

use mail_parser::{Address, MessageParser};
use store::EmailAddress;

use crate::{Error, Result};

/// Length of the JMAP `preview` (RFC 8621 §4.1.4: up to 256 characters).
const PREVIEW_CHARS: usize = 256;

pub(crate) struct Metadata {
    pub(crate) message_id: Option<String>,
    /// Message-IDs this message replies to or references, nearest first.
    pub(crate) parents: Vec<String>,
    pub(crate) subject: String,
    pub(crate) from: Vec<EmailAddress>,
    pub(crate) to: Vec<EmailAddress>,
    pub(crate) cc: Vec<EmailAddress>,
    pub(crate) sent_at: Option<i64>,
    pub(crate) preview: String,
    pub(crate) has_attachment: bool,
    pub(crate) search: store::SearchText,
}

/// How much body text is indexed per message.
const MAX_INDEXED_BODY: usize = 256 * 1024;

fn address_text(list: &[EmailAddress]) -> String {
    list.iter()
        .map(|a| match &a.name {
            Some(n) => format!("{n} {}", a.email),
            None => a.email.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn addresses(a: Option<&Address<'_>>) -> Vec<EmailAddress> {
    a.map(|a| {
        a.iter()
            .filter_map(|x| {
                Some(EmailAddress {
                    name: x.name().map(str::to_owned),
                    email: x.address()?.to_owned(),
                })
            })
            .collect()
    })
    .unwrap_or_default()
}

pub(crate) fn metadata(raw: &[u8]) -> Result<Metadata> {
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| Error::NotAMessage("no headers".into()))?;
    if msg.headers().is_empty() {
        return Err(Error::NotAMessage("no headers".into()));
    }
    let mut parents: Vec<String> = Vec::new();
    for v in [msg.in_reply_to(), msg.references()] {
        for id in v.as_text_list().unwrap_or_default().iter().rev() {
            if !parents.iter().any(|p| p == id.as_ref()) {
                parents.push(id.to_string());
            }
        }
    }
    let preview: String = msg
        .body_preview(PREVIEW_CHARS)
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
        .chars()
        .take(PREVIEW_CHARS)
        .collect();
    let mut body = String::new();
    for i in 0..msg.text_body_count().max(msg.html_body_count()) {
        if let Some(t) = msg.body_text(i) {
            body.push_str(&t);
            body.push('\n');
        }
        if body.len() > MAX_INDEXED_BODY {
            let mut cut = MAX_INDEXED_BODY;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            break;
        }
    }
    let (from, to, cc) = (
        addresses(msg.from()),
        addresses(msg.to()),
        addresses(msg.cc()),
    );
    let search = store::SearchText {
        from: address_text(&from),
        to: format!("{} {}", address_text(&to), address_text(&cc)),
        body,
    };
    Ok(Metadata {
        search,
        message_id: msg.message_id().map(str::to_owned),
        parents,
        subject: msg.subject().unwrap_or_default().to_owned(),
        from,
        to,
        cc,
        sent_at: msg.date().map(|d| d.to_timestamp()),
        preview,
        has_attachment: msg.attachment_count() > 0,
    })
}

/// One MIME part as JMAP's EmailBodyPart describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Position of the part in the message (JMAP `partId`).
    pub part_id: String,
    /// `type/subtype`, lowercase.
    pub media_type: String,
    /// `charset` parameter.
    pub charset: Option<String>,
    /// Decoded size in bytes.
    pub size: usize,
    /// File name, if any.
    pub name: Option<String>,
    /// `inline` or `attachment`, if stated.
    pub disposition: Option<String>,
}

/// The body of a message, as JMAP's textBody / htmlBody / attachments / bodyValues need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    /// Parts to show as plain text.
    pub text_body: Vec<Part>,
    /// Parts to show as HTML.
    pub html_body: Vec<Part>,
    /// Attachments.
    pub attachments: Vec<Part>,
    /// Decoded text of every text part, by part id.
    pub values: Vec<(String, String)>,
}

pub(crate) fn body(raw: &[u8]) -> Result<Body> {
    use mail_parser::MimeHeaders;
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| Error::NotAMessage("no headers".into()))?;
    let part = |id: u32| -> Option<Part> {
        let p = msg.parts.get(id as usize)?;
        let media_type = p
            .content_type()
            .map(|ct| {
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("plain")).to_ascii_lowercase()
            })
            .unwrap_or_else(|| "text/plain".into());
        Some(Part {
            part_id: id.to_string(),
            charset: p
                .content_type()
                .and_then(|ct| ct.attribute("charset"))
                .map(str::to_owned),
            size: p.len(),
            name: p.attachment_name().map(str::to_owned),
            disposition: p
                .content_disposition()
                .map(|d| d.ctype().to_ascii_lowercase()),
            media_type,
        })
    };
    let list = |ids: &[u32]| ids.iter().filter_map(|i| part(*i)).collect::<Vec<_>>();
    let mut values = Vec::new();
    for (i, p) in msg.parts.iter().enumerate() {
        if p.is_text()
            && let Some(t) = p.text_contents()
        {
            values.push((i.to_string(), t.to_owned()));
        }
    }
    Ok(Body {
        text_body: list(&msg.text_body),
        html_body: list(&msg.html_body),
        attachments: list(&msg.attachments),
        values,
    })
}
