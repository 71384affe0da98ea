//! Message metadata, parsed with `mail-parser` (which accepts the malformed mail the real world
//! sends; we only refuse bytes with no header section at all).

use mail_parser::Address;
use store::EmailAddress;

use crate::Result;

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
    a.map(|a| crate::message::email_addresses(a.iter()))
        .unwrap_or_default()
}

/// The start of the text, whitespace collapsed (JMAP `preview`).
pub(crate) fn preview(msg: &mail_parser::Message<'_>) -> String {
    msg.body_preview(PREVIEW_CHARS)
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
        .chars()
        .take(PREVIEW_CHARS)
        .collect()
}

pub(crate) fn metadata(raw: &[u8]) -> Result<Metadata> {
    let msg = crate::message::parse_raw(raw)?;
    let mut parents: Vec<String> = Vec::new();
    for v in [msg.in_reply_to(), msg.references()] {
        for id in v.as_text_list().unwrap_or_default().iter().rev() {
            if !parents.iter().any(|p| p == id.as_ref()) {
                parents.push(id.to_string());
            }
        }
    }
    let preview = preview(&msg);
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
