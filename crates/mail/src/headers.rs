//! The header section of a raw message as a list of fields with their byte ranges, read the way
//! the most lenient reader would, so that a submission checks every field any recipient's
//! software could show, and removes exactly the fields it must (`Bcc`) without touching a
//! single other byte (a DKIM signature will cover these bytes).
//!
//! A field starts on a line that does not begin with a space or tab and runs over the lines
//! that do (RFC 5322 §2.2.3 folding); the section ends at the first empty line. Names are
//! compared the way `mail-parser` (what Keypost's readers use) compares them: case-insensitively,
//! with whitespace anywhere in the name and colons before it ignored, so `bCC :` and `: From:`
//! are found too.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

/// A header section this module refuses to read: some reader would split it differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// A carriage return not followed by a line feed: some readers end a line there, others do
    /// not, so they would disagree on which fields exist.
    BareCr,
}

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    /// The name, lowercased, whitespace removed (empty for a line without a colon).
    pub(crate) name: String,
    /// Offset of the field's first byte.
    pub(crate) start: usize,
    /// Offset just past the field's last line ending (or the end of the message).
    pub(crate) end: usize,
    /// Offset just past the colon (`end` for a line without a colon).
    pub(crate) value_start: usize,
}

/// The top-level header fields of `raw`, in order.
pub(crate) fn fields(raw: &[u8]) -> Result<Vec<Field>, Unreadable> {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let next = raw
            .get(pos..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
            .map_or(raw.len(), |i| pos + i + 1);
        let line = raw.get(pos..next).unwrap_or_default();
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            break;
        }
        if content.contains(&b'\r') {
            return Err(Unreadable::BareCr);
        }
        let folded = matches!(content.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(field) if folded => field.end = next,
            _ => fields.push(field_at(content, pos, next)),
        }
        pos = next;
    }
    Ok(fields)
}

fn field_at(content: &[u8], start: usize, end: usize) -> Field {
    // mail-parser skips colons and whitespace before a name, and whitespace inside it.
    let lead = content
        .iter()
        .position(|b| !(b.is_ascii_whitespace() || *b == b':'))
        .unwrap_or(content.len());
    let rest = content.get(lead..).unwrap_or_default();
    match rest.iter().position(|&b| b == b':') {
        Some(colon) => Field {
            name: rest
                .get(..colon)
                .unwrap_or_default()
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .map(|b| char::from(b.to_ascii_lowercase()))
                .collect(),
            start,
            end,
            value_start: start + lead + colon + 1,
        },
        None => Field {
            name: String::new(),
            start,
            end,
            value_start: end,
        },
    }
}

/// `raw` without the fields named in `names` (lowercase): every other byte as it was.
pub(crate) fn without(raw: &[u8], fields: &[Field], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pos = 0;
    for f in fields.iter().filter(|f| names.contains(&f.name.as_str())) {
        out.extend_from_slice(raw.get(pos..f.start).unwrap_or_default());
        pos = f.end;
    }
    out.extend_from_slice(raw.get(pos..).unwrap_or_default());
    out
}

/// One address as a field names it: `None` when an entry has no address at all (a bare name).
pub(crate) type Mailbox = Option<String>;

fn mailboxes(value: &HeaderValue<'_>) -> Vec<Mailbox> {
    let of = |a: &mail_parser::Addr<'_>| a.address().map(str::to_owned);
    match value {
        HeaderValue::Address(Address::List(list)) => list.iter().map(of).collect(),
        HeaderValue::Address(Address::Group(groups)) => groups
            .iter()
            .flat_map(|g| g.addresses.iter().map(of))
            .collect(),
        HeaderValue::Empty => Vec::new(),
        // Not an address list at all: something is written there that no address check
        // could vouch for.
        _ => vec![None],
    }
}

/// Every entry of one address field (all groups' members included), parsed by the same
/// parser that shows the message to its readers.
pub(crate) fn field_mailboxes(raw: &[u8], field: &Field) -> Vec<Mailbox> {
    let value = raw.get(field.value_start..field.end).unwrap_or_default();
    // The value alone, under a name the parser reads as addresses.
    let mut one = Vec::with_capacity(value.len() + 8);
    one.extend_from_slice(b"To:");
    one.extend_from_slice(value);
    one.extend_from_slice(b"\r\n\r\n");
    MessageParser::new()
        .parse_headers(&one)
        .and_then(|m| {
            m.headers()
                .iter()
                .find(|h| h.name == HeaderName::To)
                .map(|h| mailboxes(&h.value))
        })
        .unwrap_or_else(|| vec![None])
}

/// The entries of every top-level `name` field as the message parser itself reads the whole
/// header section: the cross-check on [`fields`].
pub(crate) fn parser_mailboxes(raw: &[u8], name: &HeaderName<'_>) -> Vec<Vec<Mailbox>> {
    MessageParser::new()
        .parse_headers(raw)
        .map(|m| {
            m.headers()
                .iter()
                .filter(|h| &h.name == name)
                .map(|h| mailboxes(&h.value))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(raw: &[u8]) -> Vec<String> {
        fields(raw).unwrap().into_iter().map(|f| f.name).collect()
    }

    #[test]
    fn fields_are_found_folded_in_any_case_and_spelling() {
        let raw = b"From: a@x\r\nBCC: b@x,\r\n\tc@x\r\n bcc :d@x\r\nb cc: e@x\n: To: f@x\r\nnocolon\r\n\r\nBcc: body@x\r\n";
        assert_eq!(names(raw), ["from", "bcc", "bcc", "to", ""]);
        let f = fields(raw).unwrap();
        assert_eq!(
            &raw[f[1].start..f[1].end],
            b"BCC: b@x,\r\n\tc@x\r\n bcc :d@x\r\n"
        );
        assert_eq!(
            &raw[f[1].value_start..f[1].end],
            b" b@x,\r\n\tc@x\r\n bcc :d@x\r\n"
        );
        assert_eq!(&raw[f[2].start..f[2].end], b"b cc: e@x\n");
    }

    #[test]
    fn removing_fields_keeps_every_other_byte() {
        let raw = b"From: a@x\r\nBcc: b@x,\r\n c@x\r\nTo: d@x\r\nbcc: e@x\r\n\r\nBcc: body\r\n";
        let f = fields(raw).unwrap();
        assert_eq!(
            without(raw, &f, &["bcc"]),
            b"From: a@x\r\nTo: d@x\r\n\r\nBcc: body\r\n"
        );
        // A message that is nothing but header fields, the last one unterminated.
        let raw = b"To: d@x\r\nBcc: e@x";
        assert_eq!(
            without(raw, &fields(raw).unwrap(), &["bcc"]),
            b"To: d@x\r\n"
        );
    }

    #[test]
    fn a_bare_carriage_return_is_refused() {
        assert_eq!(
            fields(b"To: a@x\rFrom: ceo@x\r\n\r\n"),
            Err(Unreadable::BareCr)
        );
    }

    #[test]
    fn every_entry_of_an_address_field_is_read_groups_included() {
        let raw = b"From: \"CEO\" <ceo@contoso.example>, alice@x,\r\n Team: bob@x, <carol@x>;, Just A Name\r\n\r\n";
        let f = fields(raw).unwrap();
        let got = field_mailboxes(raw, &f[0]);
        assert!(got.contains(&Some("ceo@contoso.example".into())), "{got:?}");
        for a in ["alice@x", "bob@x", "carol@x"] {
            assert!(got.contains(&Some(a.into())), "{a} in {got:?}");
        }
        assert!(
            got.contains(&None),
            "the bare name is an entry without an address"
        );
    }
}
