//! A message opened for reading: its header fields in JMAP's parsed forms (RFC 8621 §4.1.2),
//! its MIME tree, its body parts as JMAP shows them, and each part's decoded bytes. Everything
//! here is computed from the raw RFC 5322 bytes with `mail-parser`; nothing is stored.

use mail_parser::{Address, MessageParser, MimeHeaders, PartType};
use store::EmailAddress;

use crate::{Error, Result};

/// The forms a header field can be asked for in (`header:Name:asForm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderForm {
    /// The octets after the colon, as sent.
    Raw,
    /// Unfolded, RFC 2047 words decoded.
    Text,
    /// A flat list of addresses.
    Addresses,
    /// Addresses in their groups.
    GroupedAddresses,
    /// Message-IDs without angle brackets.
    MessageIds,
    /// A date.
    Date,
    /// URLs in angle brackets.
    Urls,
}

impl HeaderForm {
    /// The form named by a JMAP `header:` property suffix (`asText`, ...).
    pub fn from_suffix(s: &str) -> Option<Self> {
        Some(match s {
            "asRaw" => Self::Raw,
            "asText" => Self::Text,
            "asAddresses" => Self::Addresses,
            "asGroupedAddresses" => Self::GroupedAddresses,
            "asMessageIds" => Self::MessageIds,
            "asDate" => Self::Date,
            "asURLs" => Self::Urls,
            _ => return None,
        })
    }
}

/// Addresses under a group name (`None` for addresses outside any group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressGroup {
    /// The group's display name.
    pub name: Option<String>,
    /// Its members.
    pub addresses: Vec<EmailAddress>,
}

/// One header field instance in a requested form; `Absent` when it does not parse as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Raw or Text form.
    Text(String),
    /// Addresses form.
    Addresses(Vec<EmailAddress>),
    /// GroupedAddresses form.
    Groups(Vec<AddressGroup>),
    /// MessageIds form.
    Ids(Vec<String>),
    /// Date form (Unix seconds).
    Date(i64),
    /// URLs form.
    Urls(Vec<String>),
    /// The field does not parse in the asked form.
    Absent,
}

/// One MIME part as JMAP's EmailBodyPart describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Position of the part in the message (JMAP `partId`); `None` for a multipart container.
    pub part_id: Option<String>,
    /// Its header fields, raw.
    pub headers: Vec<(String, String)>,
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
    /// `Content-Id` without angle brackets.
    pub cid: Option<String>,
    /// `Content-Language` tags.
    pub language: Vec<String>,
    /// `Content-Location`.
    pub location: Option<String>,
    /// Children of a multipart container.
    pub sub_parts: Vec<Part>,
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

/// A parsed message, borrowing the raw bytes.
pub struct Message<'a> {
    msg: mail_parser::Message<'a>,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message").finish_non_exhaustive()
    }
}

pub(crate) fn email_addresses<'x>(
    a: impl Iterator<Item = &'x mail_parser::Addr<'x>>,
) -> Vec<EmailAddress> {
    a.filter_map(|x| {
        Some(EmailAddress {
            name: x.name().map(str::to_owned),
            email: x.address()?.to_owned(),
        })
    })
    .collect()
}

fn groups(a: &Address<'_>) -> Vec<AddressGroup> {
    match a {
        Address::List(list) => vec![AddressGroup {
            name: None,
            addresses: email_addresses(list.iter()),
        }],
        Address::Group(gs) => gs
            .iter()
            .map(|g| AddressGroup {
                name: g.name.as_deref().map(str::to_owned),
                addresses: email_addresses(g.addresses.iter()),
            })
            .collect(),
    }
}

fn raw_headers(raw: &[u8], headers: &[mail_parser::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let value = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned()
                })
                .unwrap_or_default();
            (h.name.as_str().to_owned(), value)
        })
        .collect()
}

/// Parses with `mail-parser`, which reads any bytes leniently: a message must have at least one
/// header field whose name is printable ASCII, as RFC 5322 says field names are.
pub(crate) fn parse_raw(raw: &[u8]) -> Result<mail_parser::Message<'_>> {
    let field_name =
        |n: &str| !n.is_empty() && n.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    MessageParser::default()
        .parse(raw)
        .filter(|m| m.headers().iter().any(|h| field_name(h.name.as_str())))
        .ok_or_else(|| Error::NotAMessage("no header fields".into()))
}

impl<'a> Message<'a> {
    /// Parses `raw`; an error only if it has no header field at all.
    pub fn parse(raw: &'a [u8]) -> Result<Self> {
        Ok(Self {
            msg: parse_raw(raw)?,
        })
    }

    /// Every top-level header field, raw, in order.
    pub fn headers(&self) -> Vec<(String, String)> {
        raw_headers(self.raw(), self.msg.headers())
    }

    fn raw(&self) -> &[u8] {
        self.msg.raw_message.as_ref()
    }

    /// Every instance of the top-level header field `name` (any case), in order, in `form`.
    pub fn header(&self, name: &str, form: HeaderForm) -> Vec<HeaderValue> {
        use mail_parser::HeaderValue as V;
        if form == HeaderForm::Raw {
            return self
                .headers()
                .into_iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| HeaderValue::Text(v))
                .collect();
        }
        let parser_form = match form {
            HeaderForm::Raw | HeaderForm::Text => mail_parser::HeaderForm::Text,
            HeaderForm::Addresses => mail_parser::HeaderForm::Addresses,
            HeaderForm::GroupedAddresses => mail_parser::HeaderForm::GroupedAddresses,
            HeaderForm::MessageIds => mail_parser::HeaderForm::MessageIds,
            HeaderForm::Date => mail_parser::HeaderForm::Date,
            HeaderForm::Urls => mail_parser::HeaderForm::URLs,
        };
        // mail-parser matches known names case-insensitively but keeps other names as
        // written; ask with the name as the message spells it.
        let spelled = self
            .msg
            .headers()
            .iter()
            .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .map(|h| h.name.as_str().to_owned());
        let Some(spelled) = spelled else {
            return Vec::new();
        };
        self.msg
            .header_as(spelled.as_str(), parser_form)
            .into_iter()
            .map(|v| match (form, v) {
                (HeaderForm::Text, V::Text(t)) => HeaderValue::Text(t.into_owned()),
                (HeaderForm::Text, V::Empty) => HeaderValue::Text(String::new()),
                (HeaderForm::Addresses, V::Address(a)) => {
                    HeaderValue::Addresses(email_addresses(a.iter()))
                }
                (HeaderForm::Addresses, V::Empty) => HeaderValue::Addresses(Vec::new()),
                (HeaderForm::GroupedAddresses, V::Address(a)) => HeaderValue::Groups(groups(&a)),
                (HeaderForm::GroupedAddresses, V::Empty) => HeaderValue::Groups(Vec::new()),
                (HeaderForm::MessageIds, V::Text(id)) => HeaderValue::Ids(vec![id.into_owned()]),
                (HeaderForm::MessageIds, V::TextList(ids)) => {
                    HeaderValue::Ids(ids.into_iter().map(|i| i.into_owned()).collect())
                }
                (HeaderForm::Date, V::DateTime(d)) => HeaderValue::Date(d.to_timestamp()),
                (HeaderForm::Urls, V::Address(a)) => HeaderValue::Urls(
                    a.iter()
                        .filter_map(|x| x.address().map(str::to_owned))
                        .collect(),
                ),
                _ => HeaderValue::Absent,
            })
            .collect()
    }

    /// The last instance of `name` as addresses (empty if absent).
    pub fn addresses(&self, name: &str) -> Option<Vec<EmailAddress>> {
        match self.header(name, HeaderForm::Addresses).pop()? {
            HeaderValue::Addresses(a) => Some(a),
            _ => None,
        }
    }

    /// The last instance of `name` as Message-IDs.
    pub fn ids(&self, name: &str) -> Option<Vec<String>> {
        match self.header(name, HeaderForm::MessageIds).pop()? {
            HeaderValue::Ids(ids) => Some(ids),
            _ => None,
        }
    }

    /// The decoded `Subject`.
    pub fn subject(&self) -> Option<String> {
        self.msg.subject().map(str::to_owned)
    }

    /// The `Date` header, as Unix seconds.
    pub fn sent_at(&self) -> Option<i64> {
        self.msg.date().map(|d| d.to_timestamp())
    }

    /// Whether any part is an attachment.
    pub fn has_attachment(&self) -> bool {
        self.msg.attachment_count() > 0
    }

    /// The start of the text, whitespace collapsed, for JMAP `preview`.
    pub fn preview(&self) -> String {
        crate::parse::preview(&self.msg)
    }

    fn part(&self, id: usize) -> Option<Part> {
        let p = self.msg.parts.get(id)?;
        let media_type = p
            .content_type()
            .map(|ct| {
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("plain")).to_ascii_lowercase()
            })
            .unwrap_or_else(|| "text/plain".into());
        let sub_parts = match &p.body {
            PartType::Multipart(children) => children
                .iter()
                .filter_map(|c| self.part(*c as usize))
                .collect(),
            _ => Vec::new(),
        };
        Some(Part {
            part_id: (!matches!(p.body, PartType::Multipart(_))).then(|| id.to_string()),
            headers: raw_headers(self.raw(), &p.headers),
            charset: p
                .content_type()
                .and_then(|ct| ct.attribute("charset"))
                .map(str::to_owned),
            size: p.len(),
            name: p.attachment_name().map(str::to_owned),
            disposition: p
                .content_disposition()
                .map(|d| d.ctype().to_ascii_lowercase()),
            cid: p
                .content_id()
                .map(|c| c.trim_matches(['<', '>']).to_owned()),
            language: p
                .content_language()
                .as_text_list()
                .map(|l| l.iter().map(|s| s.to_string()).collect())
                .or_else(|| p.content_language().as_text().map(|s| vec![s.to_owned()]))
                .unwrap_or_default(),
            location: p.content_location().map(str::to_owned),
            media_type,
            sub_parts,
        })
    }

    /// The MIME tree (JMAP `bodyStructure`).
    pub fn structure(&self) -> Option<Part> {
        self.part(0)
    }

    /// The text, HTML and attachment parts, and the decoded text of every text part.
    pub fn body(&self) -> Body {
        let list = |ids: &[u32]| {
            ids.iter()
                .filter_map(|i| self.part(*i as usize))
                .map(|mut p| {
                    p.sub_parts.clear();
                    p
                })
                .collect::<Vec<_>>()
        };
        let mut values = Vec::new();
        for (i, p) in self.msg.parts.iter().enumerate() {
            if p.is_text()
                && let Some(t) = p.text_contents()
            {
                values.push((i.to_string(), t.to_owned()));
            }
        }
        Body {
            text_body: list(&self.msg.text_body),
            html_body: list(&self.msg.html_body),
            attachments: list(&self.msg.attachments),
            values,
        }
    }

    /// The decoded bytes of a (non-multipart) part, and its media type. For an attached
    /// message this is the message itself, so it can be parsed in turn.
    pub fn part_bytes(&self, part_id: &str) -> Option<(Vec<u8>, String)> {
        let id: usize = part_id.parse().ok()?;
        let p = self.msg.parts.get(id)?;
        if matches!(p.body, PartType::Multipart(_)) {
            return None;
        }
        let media_type = self.part(id)?.media_type;
        Some((p.contents().to_vec(), media_type))
    }
}
