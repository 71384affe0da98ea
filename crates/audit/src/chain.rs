//! Proving the log was not quietly edited: signed checkpoints of each chain's head, and the
//! verifier that recomputes every link ([`store::chain`]) and checks every checkpoint.
//!
//! A checkpoint is signed by the chain's realm's audit key (the provider chain by the
//! `consumers` realm's), which lives with the other private keys under the key-encryption key.
//! Someone who can write the database but not use that key can edit records and even relink
//! the whole chain, but cannot make a later checkpoint agree: that is what `verify` catches.

use std::collections::BTreeMap;
use std::fmt;

use keys::{Algorithm, Custody, SignService};
use store::chain::{self, ChainedRecord, Checkpoint, GENESIS, Link, Tombstone};
use store::{KeyPurpose, RealmId, Store, UnixTime};

use crate::signed_heads::{HeadsError, HeadsGuard, SignedHead, SignedHeads};
use crate::{AuditLog, Event, Operation};

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
    /// Checkpoints with these numbers are missing between the ones that are there.
    CheckpointsMissing { from_number: u64, to_number: u64 },
    /// A checkpoint does not name the one before it: checkpoints were replaced.
    CheckpointUnlinked { number: u64 },
    /// The signer's own record says it signed this checkpoint, and the database no longer
    /// holds it: the newest checkpoints were removed (with whatever they covered).
    SignedCheckpointMissing { number: u64, seq: u64 },
    /// A published checkpoint (`verify --against`) the database does not hold.
    PublishedMissing { number: u64, seq: u64 },
    /// A published checkpoint whose number the database holds with other content.
    PublishedMismatch { number: u64 },
    /// A published checkpoint whose signature does not verify with the realm's audit keys.
    PublishedBadSignature { number: u64, kid: String },
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
            Problem::CheckpointsMissing {
                from_number,
                to_number,
            } => write!(
                f,
                "checkpoints {from_number}..={to_number} are missing (removed from the database)"
            ),
            Problem::CheckpointUnlinked { number } => write!(
                f,
                "checkpoint {number} does not name the checkpoint before it (checkpoints replaced)"
            ),
            Problem::SignedCheckpointMissing { number, seq } => write!(
                f,
                "the signer signed checkpoint {number} (position {seq}) and the database no longer holds it"
            ),
            Problem::PublishedMissing { number, seq } => write!(
                f,
                "published checkpoint {number} (position {seq}) is not in the database"
            ),
            Problem::PublishedMismatch { number } => write!(
                f,
                "published checkpoint {number} differs from the database's checkpoint {number}"
            ),
            Problem::PublishedBadSignature { number, kid } => write!(
                f,
                "published checkpoint {number} has a bad signature (key {kid})"
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
    /// The signer's own record of signed heads could not be used.
    #[error(transparent)]
    Heads(#[from] HeadsError),
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

/// Whether checkpoint `c` of `chain` carries a signature the sealed audit keys vouch for.
fn checkpoint_signed(custody: &Custody, chain: &str, c: &Checkpoint) -> Result<bool, ChainError> {
    match c.message() {
        Some(m) => audit_signed(custody, chain, c.kid.as_str(), &m, &c.signature, c.time),
        None => Ok(false),
    }
}

/// The position and link of the latest of `checkpoints` whose signature holds.
fn latest_signed_checkpoint(
    custody: &Custody,
    name: &str,
    checkpoints: &[Checkpoint],
) -> Result<Option<(u64, Link)>, ChainError> {
    for c in checkpoints.iter().rev() {
        if let Ok(link) = <Link>::try_from(c.link.as_slice())
            && checkpoint_signed(custody, name, c)?
        {
            return Ok(Some((c.seq, link)));
        }
    }
    Ok(None)
}

/// Where a chain continues after retention: its tombstone, if its signature holds, or the
/// genesis.
fn trusted_tombstone(
    store: &dyn Store,
    custody: &Custody,
    name: &str,
) -> Result<(u64, Link), ChainError> {
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
        return Ok((t.through_seq, link));
    }
    Ok((0, GENESIS))
}

/// Where the trusted part of a chain ends: its latest checkpoint or tombstone whose signature
/// holds (position and link), or the genesis.
fn trusted_start(
    store: &dyn Store,
    custody: &Custody,
    name: &str,
    checkpoints: &[Checkpoint],
) -> Result<(u64, Link), ChainError> {
    let tombstone = trusted_tombstone(store, custody, name)?;
    Ok(
        match latest_signed_checkpoint(custody, name, checkpoints)? {
            Some(checkpoint) if checkpoint.0 > tombstone.0 => checkpoint,
            _ => tombstone,
        },
    )
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

/// Why the signer would not checkpoint a chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// The chain.
    pub chain: String,
    /// What was wrong: `checkpoint_removed`, `checkpoint_forged`, `truncated` or `rewritten`.
    pub problem: &'static str,
    /// For people.
    pub detail: String,
}

/// One checkpointing pass: what was signed, and what was refused.
#[derive(Debug, Default)]
pub struct Pass {
    /// Checkpoints signed.
    pub made: Vec<Checkpoint>,
    /// Chains refused, each audited as `AuditChainRefused` (which the detection rules raise
    /// as a critical alert).
    pub refused: Vec<Refusal>,
}

/// Where a new checkpoint of a chain starts from: the trusted position and link, and the
/// number and `prev` the new checkpoint takes.
struct Anchor {
    start: (u64, Link),
    number: u64,
    prev: Link,
}

/// The anchor of `name` when the signer has a record of it: the checkpoint it last signed
/// must still be in the database, unchanged, followed only by checkpoints that extend it
/// (signed, numbered on, naming their predecessor: made by a pass whose record was not
/// written). Anything else is tampering.
fn anchor_from_record(
    custody: &Custody,
    name: &str,
    known: &SignedHead,
    checkpoints: &[Checkpoint],
) -> Result<Result<Anchor, Refusal>, ChainError> {
    let refuse = |problem, detail: String| {
        Ok(Err(Refusal {
            chain: name.to_owned(),
            problem,
            detail,
        }))
    };
    let Some(pos) = checkpoints.iter().position(|c| known.is(c)) else {
        return refuse(
            "checkpoint_removed",
            format!(
                "checkpoint {} (position {}), which the signer signed, is no longer in the database",
                known.number, known.seq
            ),
        );
    };
    let mut last = &checkpoints[pos];
    for c in &checkpoints[pos + 1..] {
        let extends = c.number == last.number + 1
            && c.prev.is_some()
            && c.prev == last.digest()
            && checkpoint_signed(custody, name, c)?;
        if !extends {
            return refuse(
                "checkpoint_forged",
                format!(
                    "checkpoint {} does not extend checkpoint {}, the signer's last",
                    c.number, last.number
                ),
            );
        }
        last = c;
    }
    let (Ok(link), Some(prev)) = (<Link>::try_from(last.link.as_slice()), last.digest()) else {
        return refuse("checkpoint_forged", "a checkpoint link is malformed".into());
    };
    Ok(Ok(Anchor {
        start: (last.seq, link),
        number: last.number + 1,
        prev,
    }))
}

/// Signs a checkpoint of every chain whose head moved since its last checkpoint. The chain
/// must extend the last head the signer itself signed (its record, `heads`, kept beside the
/// key-encryption key where the database's writers cannot reach): everything appended since
/// is recomputed, and the checkpoint the signer last signed must still be in the database.
/// A chain that fails is refused — audited as `AuditChainRefused` and logged — never blessed.
/// A chain the record does not know yet (new, or first seen after an upgrade) starts from
/// its latest checkpoint whose signature holds.
pub fn checkpoint(
    store: &dyn Store,
    custody: &Custody,
    heads: &SignedHeads,
    now: UnixTime,
) -> Result<Pass, ChainError> {
    let signer = custody.signer();
    let mut record = heads.lock()?;
    let mut pass = Pass::default();
    let heads_now = store.audit_heads()?;
    // A chain the signer signed and the database no longer has was deleted whole.
    let gone: Vec<String> = record
        .chains()
        .filter(|c| !heads_now.iter().any(|(h, _, _)| h == c))
        .map(str::to_owned)
        .collect();
    for chain in gone {
        let known = record.get(&chain).map_or(0, |k| k.number);
        let refusal = Refusal {
            detail: format!(
                "the chain is gone from the database; the signer signed its checkpoint {known}"
            ),
            chain,
            problem: "chain_removed",
        };
        refuse(store, &refusal, now);
        pass.refused.push(refusal);
    }
    for (name, seq, link) in heads_now {
        let checkpoints = store.checkpoints(&name)?;
        let anchor = match record.get(&name) {
            Some(known) => anchor_from_record(custody, &name, known, &checkpoints)?,
            None => {
                let start = trusted_start(store, custody, &name, &checkpoints)?;
                let last = checkpoints.last();
                Ok(Anchor {
                    start,
                    number: last.map_or(1, |c| c.number + 1),
                    prev: last.and_then(Checkpoint::digest).unwrap_or(GENESIS),
                })
            }
        };
        let anchor = match anchor {
            Ok(a) => a,
            Err(refusal) => {
                refuse(store, &refusal, now);
                pass.refused.push(refusal);
                continue;
            }
        };
        let (start_seq, start_link) = anchor.start;
        let problem = if seq < start_seq {
            Some((
                "truncated",
                format!("the chain ends at {seq}, before the checkpoint at {start_seq}"),
            ))
        } else if seq == start_seq {
            (link != start_link).then(|| {
                (
                    "rewritten",
                    format!("the head at {seq} is not the checkpointed one"),
                )
            })
        } else {
            match recompute(store, &name, anchor.start, seq, None)? {
                Some((computed, _)) if computed == link => None,
                _ => Some((
                    "rewritten",
                    format!("the chain does not recompute from position {start_seq} to {seq}"),
                )),
            }
        };
        if let Some((problem, detail)) = problem {
            let refusal = Refusal {
                chain: name,
                problem,
                detail,
            };
            refuse(store, &refusal, now);
            pass.refused.push(refusal);
            continue;
        }
        if seq == start_seq {
            continue;
        }
        let realm = signing_realm(&name)?;
        let message =
            chain::checkpoint_message(&name, anchor.number, seq, &link, now, &anchor.prev);
        // One chain that cannot be signed (its realm has no audit key) must not leave the
        // others unsigned.
        let (key, signature) =
            match signer.sign_raw(&realm, KeyPurpose::Audit, Algorithm::EdDSA, &message, now) {
                Ok(signed) => signed,
                Err(e) => {
                    tracing::error!(target: "keypost::security", chain = %name, error = %e,
                        "audit checkpoint not signed");
                    continue;
                }
            };
        let c = Checkpoint {
            chain: name,
            number: anchor.number,
            prev: Some(anchor.prev),
            seq,
            link: link.to_vec(),
            time: now,
            kid: key.kid,
            signature: signature.0,
        };
        // The database first: should the record's write fail, the next pass finds this
        // checkpoint extending the recorded one and adopts it.
        store.add_checkpoint(&c)?;
        remember(&mut record, &c)?;
        pass.made.push(c);
    }
    Ok(pass)
}

fn remember(record: &mut HeadsGuard<'_>, c: &Checkpoint) -> Result<(), ChainError> {
    if let Some(head) = SignedHead::of(c) {
        record.set(&c.chain, head)?;
    }
    Ok(())
}

/// Audits and logs a refused chain. The record goes into the chain's own realm, where the
/// detection rules raise it to the tenant's admins as a critical alert.
fn refuse(store: &dyn Store, r: &Refusal, now: UnixTime) {
    tracing::error!(target: "keypost::security", chain = %r.chain, problem = r.problem,
        detail = %r.detail, "audit chain refused: not signing a rewritten log (run keypost audit verify)");
    let mut ev = Event::failure(Operation::AuditChainRefused)
        .actor("keypost-signer")
        .detail("chain", r.chain.clone())
        .detail("problem", r.problem)
        .detail("detail", r.detail.clone());
    if let Ok(realm) = RealmId::new(&r.chain) {
        ev = ev.realm(&realm);
    }
    if let Err(e) = store.append_audit(&[AuditLog::prepare(ev, now)]) {
        tracing::error!(target: "keypost::security", error = %e, "auditing a refused audit chain failed");
    }
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

/// What [`verify`] holds the database to, besides its own records.
#[derive(Debug, Default, Clone, Copy)]
pub struct Evidence<'a> {
    /// The signer's own record of what it signed, where this process can read it (it lives
    /// beside the key-encryption key).
    pub signed_heads: Option<&'a SignedHeads>,
    /// Checkpoints published before (`/realms/{realm}/audit-checkpoints`) and kept by an
    /// auditor or a second site: each must be in the database as published.
    pub published: &'a [Checkpoint],
}

/// Checks `checkpoints` (one chain's, in number order) among themselves: numbered without
/// gaps and each naming its predecessor, from the first of the numbered format on.
fn checkpoint_sequence(checkpoints: &[Checkpoint], problems: &mut Vec<Problem>) {
    let mut previous: Option<&Checkpoint> = None;
    for c in checkpoints {
        let expected = previous.map_or(1, |p| p.number + 1);
        if c.prev.is_some() {
            if c.number > expected {
                problems.push(Problem::CheckpointsMissing {
                    from_number: expected,
                    to_number: c.number - 1,
                });
            } else if c.number < expected {
                problems.push(Problem::CheckpointUnlinked { number: c.number });
            }
            let named = previous.and_then(Checkpoint::digest).unwrap_or(GENESIS);
            if c.number == expected && c.prev != Some(named) {
                problems.push(Problem::CheckpointUnlinked { number: c.number });
            }
        }
        previous = Some(c);
    }
}

/// Holds one chain's checkpoints to the signer's record and to what was published.
fn checkpoint_evidence(
    custody: &Custody,
    name: &str,
    checkpoints: &[Checkpoint],
    evidence: &Evidence<'_>,
    record: Option<&BTreeMap<String, SignedHead>>,
    problems: &mut Vec<Problem>,
) -> Result<(), ChainError> {
    if let Some(known) = record.and_then(|r| r.get(name))
        && !checkpoints.iter().any(|c| known.is(c))
    {
        problems.push(Problem::SignedCheckpointMissing {
            number: known.number,
            seq: known.seq,
        });
    }
    for p in evidence.published.iter().filter(|p| p.chain == name) {
        if !checkpoint_signed(custody, name, p)? {
            problems.push(Problem::PublishedBadSignature {
                number: p.number,
                kid: p.kid.to_string(),
            });
            continue;
        }
        match checkpoints.iter().find(|c| c.number == p.number) {
            None => problems.push(Problem::PublishedMissing {
                number: p.number,
                seq: p.seq,
            }),
            Some(c) if c.digest() != p.digest() => {
                problems.push(Problem::PublishedMismatch { number: p.number })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Verifies every chain (or one), with the checkpoints' signatures checked against the audit
/// keys `custody` knows, their numbering and links among themselves, and the `evidence`.
pub fn verify(
    store: &dyn Store,
    custody: &Custody,
    only: Option<&str>,
    evidence: &Evidence<'_>,
) -> Result<Vec<ChainReport>, ChainError> {
    // A copy, the lock released at once: a long verification must not hold up the signer.
    let record = evidence
        .signed_heads
        .map(|h| h.lock().map(HeadsGuard::into_heads))
        .transpose()?;
    const PAGE: u64 = 10_000;
    let heads = store.audit_heads()?;
    let mut names: Vec<String> = heads.iter().map(|(c, _, _)| c.clone()).collect();
    // Chains the signer signed, or a mirror published, are held to account even if the
    // database no longer has a trace of them (deleted whole).
    let known = record
        .iter()
        .flat_map(|r| r.keys().cloned())
        .chain(evidence.published.iter().map(|c| c.chain.clone()));
    for name in known {
        if !names.contains(&name) {
            names.push(name);
        }
    }
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
        checkpoint_sequence(&checkpoints, &mut walk.problems);
        checkpoint_evidence(
            custody,
            &name,
            &checkpoints,
            evidence,
            record.as_ref(),
            &mut walk.problems,
        )?;
        for c in &checkpoints {
            let signed = checkpoint_signed(custody, &name, c)?;
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
    heads: &SignedHeads,
    before: UnixTime,
    now: UnixTime,
) -> Result<Vec<Tombstone>, ChainError> {
    let signer = custody.signer();
    let record = heads.lock()?;
    let mut made = Vec::new();
    for (name, _, _) in store.audit_heads()? {
        let Some((old, _, _)) = store.expiry_point(&name, before)? else {
            continue;
        };
        // Only what a checkpoint the signer stands by covers may expire: the one its record
        // names (or one extending it), or — for a chain it has no record of — the latest
        // whose signature holds. A checkpoint row written by hand never steers retention.
        let checkpoints = store.checkpoints(&name)?;
        let (last_seq, last_link) = match record.get(&name) {
            Some(known) => match anchor_from_record(custody, &name, known, &checkpoints)? {
                Ok(anchor) => anchor.start,
                Err(refusal) => {
                    tracing::error!(target: "keypost::security", chain = %name, problem = refusal.problem,
                        "audit checkpoints do not extend the signer's record: not expiring (run keypost audit verify)");
                    continue;
                }
            },
            None => match latest_signed_checkpoint(custody, &name, &checkpoints)? {
                Some(at) => at,
                None => continue,
            },
        };
        // From the last tombstone whose signature holds (or the genesis).
        let start = trusted_tombstone(store, custody, &name)?;
        let cut = old.min(last_seq);
        if cut <= start.0 {
            continue;
        }
        let link = match recompute(store, &name, start, last_seq, Some(cut))? {
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
