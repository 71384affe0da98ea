//! A fast reading of headers and claims written the way Keypost writes them; anything else is
//! left to the general reader ([`super::strict_object`]).
//!
//! Reading JSON through `serde_json`'s visitors was, after the signature, most of what an
//! RS256 validation cost (≈ 0.45 µs of 1.5). Keypost's own tokens use a small subset of JSON:
//! no whitespace, no escapes, only the members the policy knows (each once), whose values are
//! strings, integers and arrays of strings. This reads exactly that subset in one pass and
//! declines (`None`) at the first byte outside it; the caller then starts over with the
//! general reader, which accepts every document this one does and reads the same members from
//! it (unit tests, and the fuzz target's token entry, hold the two to that).

use std::borrow::Cow;

use super::{Member, Members, Slot};

/// Reads `text` into `out` if it is a plain object; `None` (with `out` in any state) if it is
/// not, whether or not it is valid JSON.
pub(super) fn read<'de, M: Members<'de>>(text: &'de str, out: &mut M::Out) -> Option<()> {
    let bytes = text.as_bytes();
    // Without a backslash a string ends at its next quote; control characters are left to the
    // general reader to refuse. One branch-free pass over the document rules out both.
    if bytes
        .iter()
        .fold(false, |odd, &b| odd | (b < 0x20) | (b == b'\\'))
    {
        return None;
    }
    let mut r = Plain { text, pos: 0 };
    r.byte(b'{')?;
    let mut seen = 0u32;
    loop {
        let name = r.name()?;
        let bit = match M::slot(out, name) {
            Slot::Read(member, bit) => {
                r.value(member)?;
                bit
            }
            Slot::Walk(bit) => {
                r.value(&mut Member::Absent)?;
                bit
            }
            Slot::Unknown => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match r.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    (r.pos == bytes.len()).then_some(())
}

/// A position in a UTF-8 document with no backslash or control character in it.
struct Plain<'de> {
    text: &'de str,
    pos: usize,
}

impl<'de> Plain<'de> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.text.as_bytes().get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// Consumes `expected`, which must come next.
    fn byte(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    /// A member name (a string) and its colon. Names are a few bytes: a plain loop finds
    /// their end sooner than a SIMD search gets going.
    fn name(&mut self) -> Option<&'de str> {
        self.byte(b'"')?;
        let start = self.pos;
        let len = self
            .text
            .as_bytes()
            .get(start..)?
            .iter()
            .position(|&b| b == b'"')?;
        self.pos = start + len + 1;
        self.byte(b':')?;
        self.text.get(start..start + len)
    }

    /// A string, from its opening quote to its closing one.
    fn string(&mut self) -> Option<&'de str> {
        self.byte(b'"')?;
        let start = self.pos;
        let len = memchr::memchr(b'"', self.text.as_bytes().get(start..)?)?;
        self.pos = start + len + 1;
        self.text.get(start..start + len)
    }

    /// A string, an integer that fits an `i64`, or an array of strings, into `out`. (Written
    /// in place: returned, the value cost a stalled copy per member.)
    fn value(&mut self, out: &mut Member<'de>) -> Option<()> {
        match *self.text.as_bytes().get(self.pos)? {
            b'"' => *out = Member::Str(Cow::Borrowed(self.string()?)),
            b'[' => {
                self.pos += 1;
                let mut strings = Vec::new();
                if self.text.as_bytes().get(self.pos) == Some(&b']') {
                    self.pos += 1;
                } else {
                    loop {
                        strings.push(Cow::Borrowed(self.string()?));
                        match self.next()? {
                            b',' => continue,
                            b']' => break,
                            _ => return None,
                        }
                    }
                }
                *out = Member::List(strings);
            }
            _ => *out = Member::Int(self.integer()?),
        }
        Some(())
    }

    /// Up to 18 digits (so no overflow), no leading zero, not `-0` (a float to serde_json).
    /// What follows is the caller's to check: a fraction or exponent fails there.
    fn integer(&mut self) -> Option<i64> {
        let negative = self.text.as_bytes().get(self.pos) == Some(&b'-');
        self.pos += usize::from(negative);
        let digits = self.text.as_bytes().get(self.pos..)?;
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || len > 18 || (len > 1 && digits[0] == b'0') {
            return None;
        }
        self.pos += len;
        let magnitude = digits[..len]
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        match (negative, magnitude) {
            (true, 0) => None,
            (true, m) => Some(-m),
            (false, m) => Some(m),
        }
    }
}
