//! The signer protocol on the wire: one length-prefixed binary frame per request and per
//! answer, answered in order on one connection (Unix socket or TLS).
//!
//! ```text
//!   frame   = length:u32be body                      length = len(body) ≤ MAX_FRAME
//!   request = 0x01 realm purpose alg typ payload      jws: sign `{header}.{payload}`
//!           | 0x02 realm purpose alg message          raw: always refused over a connection
//!           | 0x03                                    ping
//!   answer  = 0x00 kid alg header signature           signed
//!           | 0x01                                    pong
//!           | 0x02 detail                             refused (detail: the reason)
//!           | 0x03 detail                             no active key
//!           | 0x04 detail                             failed
//!   realm, purpose, alg, typ, kid: u8 length + UTF-8;  header: u16be length + base64url
//!   payload (base64url), message, signature (raw bytes), detail (UTF-8): the rest of the body
//! ```
//!
//! Binary rather than JSON lines because it is on every token's path: escaping and parsing
//! JSON was about a fifth of what the separate signer added per token (BENCHMARKS.md). Hand-written because it is five fields each way; a schema library would
//! outweigh it.

use std::io::Read;

/// The largest body either side accepts. A token's payload is a few hundred bytes; anything
/// near this is an attack on the signer's memory, and the connection is closed.
pub(crate) const MAX_FRAME: usize = 64 * 1024;

const JWS: u8 = 0x01;
const RAW: u8 = 0x02;
const PING: u8 = 0x03;

const SIGNED: u8 = 0x00;
const PONG: u8 = 0x01;
const REFUSED: u8 = 0x02;
const NO_ACTIVE_KEY: u8 = 0x03;
const FAILED: u8 = 0x04;

/// A field too long for its length prefix, or a frame over [`MAX_FRAME`].
#[derive(Debug)]
pub(crate) struct TooLong;

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a frame over {MAX_FRAME} bytes")
    }
}

impl std::error::Error for TooLong {}

/// Whether a [`read`] failed because the peer announced a frame over [`MAX_FRAME`] (rather
/// than the connection failing).
pub(crate) fn is_too_long(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<TooLong>())
}

/// A request, borrowing from the frame it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    /// Sign `{header}.{payload}` with the realm's active key; the signer writes the header.
    Jws {
        realm: &'a str,
        purpose: &'a str,
        alg: &'a str,
        typ: &'a str,
        payload: &'a str,
    },
    /// Sign `message` as it is.
    Raw {
        realm: &'a str,
        purpose: &'a str,
        alg: &'a str,
        message: &'a [u8],
    },
    Ping,
}

/// An answer, borrowing from the frame it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer<'a> {
    /// `header` is the JWS protected header the signer wrote (empty for raw signing).
    Signed {
        kid: &'a str,
        alg: &'a str,
        header: &'a str,
        signature: &'a [u8],
    },
    Pong,
    Refused(&'a str),
    NoActiveKey(&'a str),
    Failed(&'a str),
}

/// Appends one frame to `out`, its body written by `body`; on failure `out` is as it was.
fn frame(
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), TooLong>,
) -> Result<(), TooLong> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let written = body(out).and_then(|()| {
        let len = out.len() - start - 4;
        if len > MAX_FRAME {
            return Err(TooLong);
        }
        let len = u32::try_from(len).map_err(|_| TooLong)?;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    });
    if written.is_err() {
        out.truncate(start);
    }
    written
}

fn short(out: &mut Vec<u8>, s: &str) -> Result<(), TooLong> {
    out.push(u8::try_from(s.len()).map_err(|_| TooLong)?);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn long(out: &mut Vec<u8>, s: &str) -> Result<(), TooLong> {
    out.extend_from_slice(&u16::try_from(s.len()).map_err(|_| TooLong)?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Reads a body front to back; every read is bounds-checked, so a hostile frame yields `None`.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn short(&mut self) -> Option<&'a str> {
        let n = self.byte()?;
        std::str::from_utf8(self.take(usize::from(n))?).ok()
    }

    fn long(&mut self) -> Option<&'a str> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        std::str::from_utf8(self.take(usize::from(n))?).ok()
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }

    fn rest_str(self) -> Option<&'a str> {
        std::str::from_utf8(self.0).ok()
    }

    /// `Some(v)` only if nothing is left over.
    fn end<T>(self, v: T) -> Option<T> {
        self.0.is_empty().then_some(v)
    }
}

impl<'a> Request<'a> {
    /// Appends this request as one frame to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), TooLong> {
        frame(out, |out| {
            match *self {
                Request::Jws {
                    realm,
                    purpose,
                    alg,
                    typ,
                    payload,
                } => {
                    out.push(JWS);
                    for s in [realm, purpose, alg, typ] {
                        short(out, s)?;
                    }
                    out.extend_from_slice(payload.as_bytes());
                }
                Request::Raw {
                    realm,
                    purpose,
                    alg,
                    message,
                } => {
                    out.push(RAW);
                    for s in [realm, purpose, alg] {
                        short(out, s)?;
                    }
                    out.extend_from_slice(message);
                }
                Request::Ping => out.push(PING),
            }
            Ok(())
        })
    }

    /// The request a frame's body holds; `None` if it is not one.
    pub(crate) fn decode(body: &'a [u8]) -> Option<Self> {
        let mut f = Fields(body);
        match f.byte()? {
            JWS => {
                let (realm, purpose, alg, typ) = (f.short()?, f.short()?, f.short()?, f.short()?);
                Some(Request::Jws {
                    realm,
                    purpose,
                    alg,
                    typ,
                    payload: f.rest_str()?,
                })
            }
            RAW => {
                let (realm, purpose, alg) = (f.short()?, f.short()?, f.short()?);
                Some(Request::Raw {
                    realm,
                    purpose,
                    alg,
                    message: f.rest(),
                })
            }
            PING => f.end(Request::Ping),
            _ => None,
        }
    }
}

impl<'a> Answer<'a> {
    /// Appends this answer as one frame to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), TooLong> {
        frame(out, |out| {
            let (tag, detail) = match *self {
                Answer::Signed {
                    kid,
                    alg,
                    header,
                    signature,
                } => {
                    out.push(SIGNED);
                    short(out, kid)?;
                    short(out, alg)?;
                    long(out, header)?;
                    out.extend_from_slice(signature);
                    return Ok(());
                }
                Answer::Pong => {
                    out.push(PONG);
                    return Ok(());
                }
                Answer::Refused(d) => (REFUSED, d),
                Answer::NoActiveKey(d) => (NO_ACTIVE_KEY, d),
                Answer::Failed(d) => (FAILED, d),
            };
            out.push(tag);
            out.extend_from_slice(detail.as_bytes());
            Ok(())
        })
    }

    /// The answer a frame's body holds; `None` if it is not one.
    pub(crate) fn decode(body: &'a [u8]) -> Option<Self> {
        let mut f = Fields(body);
        match f.byte()? {
            SIGNED => {
                let (kid, alg, header) = (f.short()?, f.short()?, f.long()?);
                Some(Answer::Signed {
                    kid,
                    alg,
                    header,
                    signature: f.rest(),
                })
            }
            PONG => f.end(Answer::Pong),
            REFUSED => Some(Answer::Refused(f.rest_str()?)),
            NO_ACTIVE_KEY => Some(Answer::NoActiveKey(f.rest_str()?)),
            FAILED => Some(Answer::Failed(f.rest_str()?)),
            _ => None,
        }
    }
}

/// The length a frame header announces, or a [`TooLong`] error past [`MAX_FRAME`].
fn announced(prefix: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TooLong,
        ));
    }
    Ok(len)
}

/// Reads one frame's body into `body` (replacing what it held). A frame over [`MAX_FRAME`]
/// is an error ([`is_too_long`]) and nothing more is read: the stream cannot be trusted
/// after it.
pub(crate) fn read(from: &mut impl Read, body: &mut Vec<u8>) -> std::io::Result<()> {
    let mut prefix = [0; 4];
    from.read_exact(&mut prefix)?;
    body.resize(announced(prefix)?, 0);
    from.read_exact(body)
}

/// [`read`] from an async stream.
pub(crate) async fn read_async(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    body: &mut Vec<u8>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut prefix = [0; 4];
    from.read_exact(&mut prefix).await?;
    body.resize(announced(prefix)?, 0);
    from.read_exact(body).await.map(drop)
}

/// Whether `buffered` starts with a whole frame (so another request is already here).
pub(crate) fn holds_frame(buffered: &[u8]) -> bool {
    match buffered.first_chunk::<4>() {
        Some(prefix) => {
            let len = u32::from_be_bytes(*prefix) as usize;
            buffered.len() - 4 >= len
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        assert!(holds_frame(frame));
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(frame.len(), 4 + len, "exactly one frame");
        &frame[4..]
    }

    #[test]
    fn requests_and_answers_come_back_as_they_went() {
        let requests = [
            Request::Jws {
                realm: "contoso",
                purpose: "access-token",
                alg: "EdDSA",
                typ: "at+jwt",
                payload: "eyJzdWIiOiJ4In0",
            },
            Request::Raw {
                realm: "consumers",
                purpose: "audit",
                alg: "EdDSA",
                message: b"\x00\xffany bytes",
            },
            Request::Ping,
        ];
        for r in requests {
            let mut out = Vec::new();
            r.encode(&mut out).unwrap();
            assert_eq!(Request::decode(body(&out)), Some(r));
        }
        let answers = [
            Answer::Signed {
                kid: "k1",
                alg: "EdDSA",
                header: "eyJhbGciOiJFZERTQSJ9",
                signature: &[0, 1, 2, 255],
            },
            Answer::Pong,
            Answer::Refused("key is revoked"),
            Answer::NoActiveKey("contoso"),
            Answer::Failed(""),
        ];
        for a in answers {
            let mut out = Vec::new();
            a.encode(&mut out).unwrap();
            assert_eq!(Answer::decode(body(&out)), Some(a));
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_refused_not_misread() {
        let mut out = Vec::new();
        Request::Jws {
            realm: "contoso",
            purpose: "access-token",
            alg: "EdDSA",
            typ: "at+jwt",
            payload: "e30",
        }
        .encode(&mut out)
        .unwrap();
        let whole = body(&out).to_vec();
        // Cut inside the fixed fields: nothing to read. (A cut in the payload is a shorter
        // payload; frames carry their length, so a body is never cut in transit.)
        let fixed = whole.len() - 3;
        for cut in 0..fixed {
            assert_eq!(Request::decode(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(Request::decode(&[0x7f]), None, "unknown operation");
        assert_eq!(Request::decode(&[PING, 0]), None, "trailing bytes");
        assert_eq!(Request::decode(&[JWS, 1, 0xff, 0, 0, 0]), None, "not UTF-8");
        assert_eq!(
            Answer::decode(&[SIGNED, 0, 0, 0xff, 0xff]),
            None,
            "header past the end"
        );
        assert_eq!(Answer::decode(&[REFUSED, 0xc3]), None, "not UTF-8");
    }

    #[test]
    fn oversized_fields_and_frames_are_not_written() {
        let long_realm = "r".repeat(256);
        let mut out = vec![9];
        let r = Request::Jws {
            realm: &long_realm,
            purpose: "access-token",
            alg: "EdDSA",
            typ: "at+jwt",
            payload: "e30",
        };
        assert!(r.encode(&mut out).is_err());
        let huge = "e".repeat(MAX_FRAME);
        let r = Request::Jws {
            realm: "contoso",
            purpose: "access-token",
            alg: "EdDSA",
            typ: "at+jwt",
            payload: &huge,
        };
        assert!(r.encode(&mut out).is_err());
        assert_eq!(out, [9], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn a_reader_refuses_an_announced_length_past_the_limit() {
        let mut stream: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut body = Vec::new();
        let err = read(&mut stream, &mut body).unwrap_err();
        assert!(is_too_long(&err));
        assert_eq!(body.capacity(), 0, "nothing allocated for it");

        // The limit itself is allowed, one byte more is not.
        for (len, allowed) in [(MAX_FRAME, true), (MAX_FRAME + 1, false)] {
            let mut frame = u32::try_from(len).unwrap().to_be_bytes().to_vec();
            frame.resize(4 + len, 0);
            let result = read(&mut &frame[..], &mut body);
            assert_eq!(result.is_ok(), allowed, "{len} bytes");
        }
        let eof = read(&mut &[0u8, 0, 0, 9, 1][..], &mut body).unwrap_err();
        assert!(
            !is_too_long(&eof),
            "a frame cut short is a failed connection"
        );

        let mut two = Vec::new();
        Request::Ping.encode(&mut two).unwrap();
        Answer::Pong.encode(&mut two).unwrap();
        assert!(!holds_frame(&two[..4]));
        let mut stream = &two[..];
        read(&mut stream, &mut body).unwrap();
        assert_eq!(Request::decode(&body), Some(Request::Ping));
        assert!(holds_frame(stream));
        read(&mut stream, &mut body).unwrap();
        assert_eq!(Answer::decode(&body), Some(Answer::Pong));
    }
}
