//! Proving the log was not quietly edited: signed checkpoints of each chain's head, and the
//! verifier that recomputes every link ([`store::chain`]) and checks every checkpoint.
//!
//! A checkpoint is signed by the chain's realm's audit key (the provider chain by the
//! `consumers` realm's), which lives with the other private keys under the key-encryption key.
//! Someone who can write the database but not use that key can edit records and even relink
//! the whole chain, but cannot make a later checkpoint agree: that is what `verify` catches.

use std::fmt;

use keys::{Algorithm, Custody, SignService};
use store::chain::{self, ChainedRecord, Checkpoint, GENESIS, Link, Tombstone};
use store::{KeyPurpose, RealmId, Store, UnixTime};

/// What the verifier found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The record's content does not match its link: it was edited.
    Altered { id: i64, seq: u64 },
    /// Positions are missing: records were deleted.
    Missing { from_seq: u64, to_seq: u64 },
    /// A record's position is not the next one in append order: reordered or inserted.
    OutOfOrder { id: i64, seq: u64, expected: u64 },
    /// A record with no position: written outside Keypost.
    Unlinked { id: i64 },
    /// A checkpoint names a link the chain does not have at that position.
    CheckpointMismatch { seq: u64 },
    /// A checkpoint past the chain's end: records after it were removed.
    Truncated { checkpoint_seq: u64, last_seq: u64 },
    /// A checkpoint whose signature does not verify with an audit key of the chain's realm.
    BadSignature { seq: u64, kid: String },
    /// The stored head disagrees with the last record.
    HeadMismatch { head_seq: u64, last_seq: u64 },
    /// A retention tombstone whose signature does not verify: records were removed by hand.
    BadTombstone { through_seq: u64, kid: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { id, seq } => write!(f, "record {id} (position {seq}) was altered"),
            Problem::Missing { from_seq, to_seq } => {
                write!(
                    f,
                    "positions {from_seq}..={to_seq} are missing (records deleted)"
                )
            }
            Problem::OutOfOrder { id, seq, expected } => write!(
                f,
                "record {id} is at position {seq} where {expected} was expected (reordered or inserted)"
            ),
            Problem::Unlinked { id } => {
                write!(f, "record {id} is not linked (written outside Keypost)")
            }
            Problem::CheckpointMismatch { seq } => {
                write!(
                    f,
                    "the signed checkpoint at position {seq} does not match the chain (rewritten)"
                )
            }
            Problem::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "a signed checkpoint is at position {checkpoint_seq} but the chain ends at {last_seq} (records removed)"
            ),
            Problem::BadSignature { seq, kid } => {
                write!(
                    f,
                    "the checkpoint at position {seq} has a bad signature (key {kid})"
                )
            }
            Problem::BadTombstone { through_seq, kid } => write!(
                f,
                "the retention tombstone through position {through_seq} has a bad signature (key {kid}): records were removed by hand"
            ),
            Problem::HeadMismatch { head_seq, last_seq } => write!(
                f,
                "the chain head says position {head_seq} but the last record is at {last_seq}"
            ),
        }
    }
}

/// One chain's verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// The chain: a realm, or `""` for provider-level records.
    pub chain: String,
    /// Records read.
    pub records: u64,
    /// Position of the last record.
    pub last_seq: u64,
    /// Checkpoints checked.
    pub checkpoints: usize,
    /// Position of the newest checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Everything found wrong (empty: intact).
    pub problems: Vec<Problem>,
}

/// A verification or checkpoint failed to run (not: found a problem).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Signing failed (no audit key, ...).
    #[error(transparent)]
    Keys(#[from] keys::Error),
}

/// The realm whose audit key signs a chain.
fn signing_realm(chain: &str) -> Result<RealmId, ChainError> {
    let name = if chain.is_empty() { "consumers" } else { chain };
    RealmId::new(name).map_err(|e| ChainError::Store(store::Error::Corrupt(e.to_string())))
}

/// Whether a signature over `message` is by an audit key of the chain's realm that the sealed
/// keys vouch for (see [`Custody::sealed_audit_key`]) and was not revoked before `signed_at`.
fn audit_signed(
    custody: &Custody,
    chain: &str,
    kid: &str,
    message: &[u8],
    signature: &[u8],
    signed_at: UnixTime,
) -> Result<bool, ChainError> {
    let realm = signing_realm(chain)?;
    Ok(custody.sealed_audit_key(&realm, kid)?.is_some_and(|k| {
        k.revoked_at().is_none_or(|r| r > signed_at) && k.verify(message, signature)
    }))
}

/// Where the trusted part of a chain ends: its latest checkpoint or tombstone whose signature
/// holds (position and link), or the genesis.
fn trusted_start(
    store: &dyn Store,
    custody: &Custody,
    name: &str,
) -> Result<(u64, Link), ChainError> {
    let mut start = (0, GENESIS);
    if let Some(t) = store.tombstone(name)?
        && let Ok(link) = <Link>::try_from(t.link.as_slice())
        && audit_signed(
            custody,
            name,
            t.kid.as_str(),
            &chain::tombstone_message(name, t.through_seq, &link, t.time),
            &t.signature,
            t.time,
        )?
    {
        start = (t.through_seq, link);
    }
    for c in store.checkpoints(name)?.iter().rev() {
        if c.seq <= start.0 {
            break;
        }
        if let Ok(link) = <Link>::try_from(c.link.as_slice())
            && audit_signed(
                custody,
                name,
                c.kid.as_str(),
                &chain::checkpoint_message(name, c.seq, &link, c.time),
                &c.signature,
                c.time,
            )?
        {
            start = (c.seq, link);
            break;
        }
    }
    Ok(start)
}

/// Recomputes `name` from the trusted `start` through position `end`, reading what is stored.
/// Returns the recomputed link at `end` and at `cut` (if asked), or `None` if any record on the
/// way is missing, out of place or altered.
fn recompute(
    store: &dyn Store,
    name: &str,
    start: (u64, Link),
    end: u64,
    cut: Option<u64>,
) -> Result<Option<(Link, Option<Link>)>, ChainError> {
    let (mut seq, mut prev) = start;
    let mut at_cut = (cut == Some(seq)).then_some(prev);
    while seq < end {
        let page = store.audit_chain_after_seq(name, seq, 5_000)?;
        if page.is_empty() {
            return Ok(None);
        }
        for r in page {
            let (Some(s), Some(stored)) = (r.seq, r.link.as_ref()) else {
                return Ok(None);
            };
            if s != seq + 1 || s > end {
                return Ok(if s > end { Some((prev, at_cut)) } else { None });
            }
            let link = chain::link(&prev, s, &r.record, &r.details_text);
            if link.as_slice() != stored.as_slice() {
                return Ok(None);
            }
            (seq, prev) = (s, link);
            if cut == Some(s) {
                at_cut = Some(link);
            }
            if s == end {
                break;
            }
        }
    }
    Ok(Some((prev, at_cut)))
}

/// Signs a checkpoint of every chain whose head moved since its last checkpoint, after
/// recomputing everything appended since the last trusted point: a chain edited or relinked
/// in the meantime is refused (and logged), never blessed. Returns the checkpoints made.
pub fn checkpoint(
    store: &dyn Store,
    custody: &Custody,
    now: UnixTime,
) -> Result<Vec<Checkpoint>, ChainError> {
    let signer = custody.signer();
    let mut made = Vec::new();
    for (name, seq, link) in store.audit_heads()? {
        let start = trusted_start(store, custody, &name)?;
        if start.0 >= seq {
            continue;
        }
        match recompute(store, &name, start, seq, None)? {
            Some((computed, _)) if computed == link => {}
            _ => {
                tracing::error!(target: "keypost::security", chain = %name,
                    "audit chain does not recompute since its last checkpoint: not signing (run keypost audit verify)");
                continue;
            }
        }
        let realm = signing_realm(&name)?;
        let message = chain::checkpoint_message(&name, seq, &link, now);
        let (key, signature) =
            signer.sign_raw(&realm, KeyPurpose::Audit, Algorithm::EdDSA, &message, now)?;
        let c = Checkpoint {
            chain: name,
            seq,
            link: link.to_vec(),
            time: now,
            kid: key.kid,
            signature: signature.0,
        };
        store.add_checkpoint(&c)?;
        made.push(c);
    }
    Ok(made)
}

/// Walks one chain in append order, recomputing links.
struct Walk {
    expected: u64,
    prev: Link,
    records: u64,
    /// The stored link at each position, for the checkpoint comparison.
    links: std::collections::HashMap<u64, Vec<u8>>,
    problems: Vec<Problem>,
}

impl Walk {
    fn new() -> Self {
        Self {
            expected: 1,
            prev: GENESIS,
            records: 0,
            links: Default::default(),
            problems: Vec::new(),
        }
    }

    /// A chain whose records through the tombstone's position expired: it continues from the
    /// tombstone's link.
    fn after(t: &Tombstone) -> Self {
        let mut w = Self::new();
        w.expected = t.through_seq + 1;
        w.prev = t.link.as_slice().try_into().unwrap_or(GENESIS);
        w.links.insert(t.through_seq, t.link.clone());
        w
    }

    fn step(&mut self, r: &ChainedRecord) {
        self.records += 1;
        let id = r.record.id;
        let (Some(seq), Some(stored)) = (r.seq, r.link.as_ref()) else {
            self.problems.push(Problem::Unlinked { id });
            return;
        };
        // After any break, continue from what is stored, so each later break is reported
        // on its own rather than as a cascade.
        let resync = |w: &mut Self| {
            w.prev = stored.as_slice().try_into().unwrap_or(GENESIS);
            w.expected = seq + 1;
        };
        if seq > self.expected {
            self.problems.push(Problem::Missing {
                from_seq: self.expected,
                to_seq: seq - 1,
            });
        } else if seq < self.expected {
            self.problems.push(Problem::OutOfOrder {
                id,
                seq,
                expected: self.expected,
            });
        } else if chain::link(&self.prev, seq, &r.record, &r.details_text).as_slice()
            != stored.as_slice()
        {
            self.problems.push(Problem::Altered { id, seq });
        }
        self.links.insert(seq, stored.clone());
        resync(self);
    }
}

/// Verifies every chain (or one), with the checkpoints' signatures checked against the audit
/// keys `custody` knows.
pub fn verify(
    store: &dyn Store,
    custody: &Custody,
    only: Option<&str>,
) -> Result<Vec<ChainReport>, ChainError> {
    const PAGE: u64 = 10_000;
    let heads = store.audit_heads()?;
    let mut names: Vec<String> = heads.iter().map(|(c, _, _)| c.clone()).collect();
    // Records can sit in a chain that has no head (inserted by hand): find those chains too.
    let mut walks: std::collections::BTreeMap<String, Walk> = Default::default();
    let mut tombstone_problems: Vec<(String, Problem)> = Vec::new();
    let mut expired: std::collections::HashMap<String, u64> = Default::default();
    for name in &names {
        if let Some(t) = store.tombstone(name)? {
            let message = t
                .link
                .as_slice()
                .try_into()
                .map(|l: Link| chain::tombstone_message(name, t.through_seq, &l, t.time));
            let signed = match message {
                Ok(m) => audit_signed(custody, name, t.kid.as_str(), &m, &t.signature, t.time)?,
                Err(_) => false,
            };
            if !signed {
                tombstone_problems.push((
                    name.clone(),
                    Problem::BadTombstone {
                        through_seq: t.through_seq,
                        kid: t.kid.to_string(),
                    },
                ));
            }
            walks.insert(name.clone(), Walk::after(&t));
            expired.insert(name.clone(), t.through_seq);
        }
    }
    let mut after = 0;
    loop {
        let page = store.audit_chain(only, after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.record.id;
        for r in &page {
            walks
                .entry(r.chain.clone())
                .or_insert_with(Walk::new)
                .step(r);
        }
    }
    for name in walks.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut reports = Vec::new();
    for name in names.into_iter().filter(|n| only.is_none_or(|o| o == n)) {
        let mut walk = walks.remove(&name).unwrap_or_else(Walk::new);
        for (_, p) in tombstone_problems.iter().filter(|(c, _)| c == &name) {
            walk.problems.push(p.clone());
        }
        let expired_through = expired.get(&name).copied();
        let last_seq = walk.expected.saturating_sub(1);
        if let Some((_, head_seq, head_link)) = heads.iter().find(|(c, _, _)| c == &name)
            && (*head_seq != last_seq
                || walk
                    .links
                    .get(head_seq)
                    .is_some_and(|l| l.as_slice() != head_link))
        {
            walk.problems.push(Problem::HeadMismatch {
                head_seq: *head_seq,
                last_seq,
            });
        }
        let checkpoints = store.checkpoints(&name)?;
        for c in &checkpoints {
            let message = c
                .link
                .as_slice()
                .try_into()
                .map(|l: Link| chain::checkpoint_message(&name, c.seq, &l, c.time));
            let signed = match &message {
                Ok(m) => audit_signed(custody, &name, c.kid.as_str(), m, &c.signature, c.time)?,
                Err(_) => false,
            };
            // Positions a tombstone expired are gone; their checkpoints have nothing to match.
            if expired_through.is_some_and(|through| c.seq < through) {
                if !signed {
                    walk.problems.push(Problem::BadSignature {
                        seq: c.seq,
                        kid: c.kid.to_string(),
                    });
                }
                continue;
            }
            if !signed {
                walk.problems.push(Problem::BadSignature {
                    seq: c.seq,
                    kid: c.kid.to_string(),
                });
            }
            if c.seq > last_seq {
                walk.problems.push(Problem::Truncated {
                    checkpoint_seq: c.seq,
                    last_seq,
                });
            } else if walk.links.get(&c.seq).is_none_or(|l| l != &c.link) {
                walk.problems
                    .push(Problem::CheckpointMismatch { seq: c.seq });
            }
        }
        reports.push(ChainReport {
            chain: name,
            records: walk.records,
            last_seq,
            checkpoints: checkpoints.len(),
            last_checkpoint: checkpoints.last().map(|c| c.seq),
            problems: walk.problems,
        });
    }
    Ok(reports)
}

/// Expires, in every chain, the records older than `before` (retention): removes them and
/// leaves a tombstone signed by the chain's audit key, from which the chain still verifies.
/// Only records a checkpoint already covers expire, and only after the chain recomputes from its
/// last trusted point through that checkpoint, so nobody can steer retention by editing a
/// record's time. Returns the tombstones made.
pub fn expire(
    store: &dyn Store,
    custody: &Custody,
    before: UnixTime,
    now: UnixTime,
) -> Result<Vec<Tombstone>, ChainError> {
    let signer = custody.signer();
    let mut made = Vec::new();
    for (name, _, _) in store.audit_heads()? {
        let Some((old, _, _)) = store.expiry_point(&name, before)? else {
            continue;
        };
        let Some(last) = store.checkpoints(&name)?.pop() else {
            continue;
        };
        let Ok(last_link) = <Link>::try_from(last.link.as_slice()) else {
            continue;
        };
        let start = match store.tombstone(&name)? {
            Some(t) => match <Link>::try_from(t.link.as_slice()) {
                Ok(l) => (t.through_seq, l),
                Err(_) => continue,
            },
            None => (0, GENESIS),
        };
        let cut = old.min(last.seq);
        if cut <= start.0 {
            continue;
        }
        let link = match recompute(store, &name, start, last.seq, Some(cut))? {
            Some((end, Some(at_cut))) if end == last_link => at_cut,
            _ => {
                tracing::error!(target: "keypost::security", chain = %name,
                    "audit chain does not recompute to its checkpoint: not expiring (run keypost audit verify)");
                continue;
            }
        };
        let realm = signing_realm(&name)?;
        let message = chain::tombstone_message(&name, cut, &link, now);
        let (key, signature) =
            signer.sign_raw(&realm, KeyPurpose::Audit, Algorithm::EdDSA, &message, now)?;
        let mut t = Tombstone {
            chain: name,
            through_seq: cut,
            link: link.to_vec(),
            time: now,
            records: 0,
            kid: key.kid,
            signature: signature.0,
        };
        t.records = store.expire_audit(&t)?;
        made.push(t);
    }
    Ok(made)
}
