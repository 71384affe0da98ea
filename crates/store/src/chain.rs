//! The audit hash chain's definition, shared by every backend (which link records as they are
//! appended) and by the verifier (which recomputes the links).
//!
//! Each tenant's records form one chain (`""` is the provider's: records with no realm). A
//! record's link is SHA-256 over a fixed encoding of the previous link, its position in the
//! chain and every field as stored, so editing, deleting, inserting or reordering a record
//! breaks every later link. Hand-rolled because it is the product: no library defines this
//! format, and `docs/design/003-audit-chain.md` specifies it byte for byte for independent
//! verifiers.

use crate::model::AuditRecord;

/// A link: SHA-256.
pub type Link = [u8; 32];

/// The link before the first record of every chain.
pub const GENESIS: Link = [0u8; 32];

/// The chain a record belongs to: its realm, or `""` for provider-level records.
pub fn chain_of(record: &AuditRecord) -> &str {
    record.realm.as_ref().map_or("", |r| r.as_str())
}

fn field(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// The link of `record`, stored with `details_text` as its details, at `seq` after `prev`.
///
/// Encoding: `"keypost-audit-v1"`, `prev` (32 bytes), `seq` (u64 big-endian), then each of
/// chain, time (decimal), realm, actor, operation, target, result, source_ip, user_agent,
/// client_id, jti, kid, details as `0x00` (absent) or `0x01` + length (u64 big-endian) + UTF-8.
pub fn link(prev: &Link, seq: u64, record: &AuditRecord, details_text: &str) -> Link {
    let mut m = Vec::with_capacity(256 + details_text.len());
    m.extend_from_slice(b"keypost-audit-v1");
    m.extend_from_slice(prev);
    m.extend_from_slice(&seq.to_be_bytes());
    let time = record.time.to_string();
    for v in [
        Some(chain_of(record)),
        Some(time.as_str()),
        record.realm.as_ref().map(|r| r.as_str()),
        record.actor.as_deref(),
        Some(record.operation.as_str()),
        record.target.as_deref(),
        Some(record.result.as_str()),
        record.source_ip.as_deref(),
        record.user_agent.as_deref(),
        record.client_id.as_deref(),
        record.jti.as_deref(),
        record.kid.as_deref(),
        Some(details_text),
    ] {
        field(&mut m, v);
    }
    sha256(&m)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(m: &[u8]) -> Link {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, m);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a checkpoint signs: the chain, the checkpoint's number in it, the position and link of
/// the chain's head, the time, and the SHA-256 of the previous checkpoint's signed message
/// (32 zero bytes before the first), so checkpoints form a chain of their own.
pub fn checkpoint_message(
    chain: &str,
    number: u64,
    seq: u64,
    head: &Link,
    time: i64,
    prev: &Link,
) -> Vec<u8> {
    format!(
        "keypost-audit-checkpoint-v2\n{chain}\n{number}\n{seq}\n{}\n{time}\n{}",
        hex(head),
        hex(prev)
    )
    .into_bytes()
}

/// The first format, which named neither the checkpoint's number nor its predecessor; still
/// verified for checkpoints made before the second.
fn checkpoint_message_v1(chain: &str, seq: u64, head: &Link, time: i64) -> Vec<u8> {
    format!(
        "keypost-audit-checkpoint-v1\n{chain}\n{seq}\n{}\n{time}",
        hex(head)
    )
    .into_bytes()
}

/// A record as the chain holds it: the record, its position, its link, and its details
/// exactly as stored (the link covers those bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct ChainedRecord {
    /// The record.
    pub record: AuditRecord,
    /// Its chain.
    pub chain: String,
    /// Its position (1-based); `None` if it was never linked (written outside Keypost).
    pub seq: Option<u64>,
    /// Its stored link.
    pub link: Option<Vec<u8>>,
    /// The details column, verbatim.
    pub details_text: String,
}

/// A signed statement that a chain's head was `link` at `seq`: the chain's `number`th
/// checkpoint, naming the one before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chain.
    pub chain: String,
    /// Its place among the chain's checkpoints, from 1.
    pub number: u64,
    /// SHA-256 of the previous checkpoint's signed message (zeros for the first); `None` for a
    /// checkpoint of the first format, which named no predecessor (its number is its place).
    pub prev: Option<Link>,
    /// Position of the head.
    pub seq: u64,
    /// Link of the head.
    pub link: Vec<u8>,
    /// When it was made.
    pub time: i64,
    /// The audit key that signed it.
    pub kid: crate::Kid,
    /// Signature over [`Checkpoint::message`].
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The exact bytes its signature covers; `None` if the stored link is not 32 bytes.
    pub fn message(&self) -> Option<Vec<u8>> {
        let link: Link = self.link.as_slice().try_into().ok()?;
        Some(match &self.prev {
            Some(prev) => {
                checkpoint_message(&self.chain, self.number, self.seq, &link, self.time, prev)
            }
            None => checkpoint_message_v1(&self.chain, self.seq, &link, self.time),
        })
    }

    /// SHA-256 of [`Checkpoint::message`]: what the next checkpoint names as its `prev`.
    pub fn digest(&self) -> Option<Link> {
        self.message().map(|m| sha256(&m))
    }
}

/// What a tombstone signs: that a chain's records up to `seq` (whose link was `link`) expired.
pub fn tombstone_message(chain: &str, seq: u64, link: &Link, time: i64) -> Vec<u8> {
    format!(
        "keypost-audit-tombstone-v1\n{chain}\n{seq}\n{}\n{time}",
        hex(link)
    )
    .into_bytes()
}

/// A signed statement that a chain's records through `through_seq` were expired by retention;
/// the chain continues from `link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The chain.
    pub chain: String,
    /// The last position expired.
    pub through_seq: u64,
    /// The link at that position.
    pub link: Vec<u8>,
    /// When.
    pub time: i64,
    /// How many records this expiry removed.
    pub records: u64,
    /// The audit key that signed it.
    pub kid: crate::Kid,
    /// Signature over [`tombstone_message`].
    pub signature: Vec<u8>,
}
