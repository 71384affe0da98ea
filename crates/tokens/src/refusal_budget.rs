//! How many refusals of tokens that are not even validly signed one source may have audited one
//! by one. Anyone who can send a request can send garbage, and every refusal used to be its own
//! durable audit write: a flood of garbage was a flood of fsyncs and records. Past a budget per
//! source network and minute, such refusals are counted in memory instead and written as one
//! summary record per source and window (how many, which reasons, from when to when), so the
//! log still says everything that happened — nothing is dropped silently.
//!
//! Only refusals decided before any signature verified are counted this way. A token whose
//! signature verified, or that names another realm's key (someone may hold a signing key), is
//! always audited on its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use store::{RealmId, UnixTime};

use crate::validate::Rejection;

/// Refusals no detection rule looks at (not a token, no key named, a bad signature) one
/// source network has audited one by one per window.
pub(crate) const PER_WINDOW: u32 = 20;
/// Refusals the detection rules do look at (a made-up key, a forbidden algorithm or header)
/// audited one by one per window: enough that a probe is seen, with its kid, among a flood.
pub(crate) const ALERTING_PER_WINDOW: u32 = 200;
/// Distinct kids a summary keeps.
const KIDS_KEPT: usize = 20;
/// The window (seconds).
pub(crate) const WINDOW: i64 = 60;
/// Sources tracked at once; past it, a new source's refusals are audited one by one (the
/// budget fails towards writing, never towards silence).
const MAX_SOURCES: usize = 10_000;

/// How many refusals for `reason` a source may have audited one by one per window; `None` for
/// those always audited on their own (decided after a signature verified, or naming another
/// realm's key: evidence of a key or a token that exists).
pub(crate) fn budget_of(reason: Rejection) -> Option<u32> {
    use Rejection::*;
    match reason {
        Malformed | KidMissing | SignatureInvalid => Some(PER_WINDOW),
        UnknownKid | AlgorithmNotAllowed | AlgorithmMismatch | HeaderKeyForbidden
        | CritUnsupported => Some(ALERTING_PER_WINDOW),
        _ => None,
    }
}

/// Whose refusals are counted together: the realm they were recorded in and the source's
/// network.
pub(crate) type Key = (Option<RealmId>, String);

#[derive(Debug)]
struct Window {
    started: UnixTime,
    last: UnixTime,
    /// Audited one by one, per budget (the plain and the alerting one).
    audited: HashMap<u32, u32>,
    counted: BTreeMap<&'static str, u64>,
    kids: Vec<String>,
}

/// What a source's window held back: to be written as one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) key: Key,
    pub(crate) from: UnixTime,
    pub(crate) until: UnixTime,
    pub(crate) reasons: BTreeMap<&'static str, u64>,
    /// The first distinct kids the counted tokens presented.
    pub(crate) kids: Vec<String>,
}

impl Summary {
    pub(crate) fn total(&self) -> u64 {
        self.reasons.values().sum()
    }
}

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it, as every refusal used to be.
    Audit,
    /// Counted into its source's summary.
    Counted,
}

#[derive(Debug, Default)]
pub(crate) struct RefusalBudget {
    windows: Mutex<HashMap<Key, Window>>,
}

impl RefusalBudget {
    /// Admits one garbage refusal of `key` at `now`; also returns the summary of `key`'s
    /// previous window if it ended.
    pub(crate) fn admit(
        &self,
        key: Key,
        reason: Rejection,
        kid: Option<&str>,
        now: UnixTime,
    ) -> (Admit, Option<Summary>) {
        let Some(budget) = budget_of(reason) else {
            return (Admit::Audit, None);
        };
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended = None;
        if let Some(w) = windows.get(&key)
            && now - w.started >= WINDOW
        {
            ended = windows.remove(&key).and_then(|w| summary(key.clone(), w));
        }
        if !windows.contains_key(&key) && windows.len() >= MAX_SOURCES {
            return (Admit::Audit, ended);
        }
        let w = windows.entry(key).or_insert(Window {
            started: now,
            last: now,
            audited: HashMap::new(),
            counted: BTreeMap::new(),
            kids: Vec::new(),
        });
        w.last = w.last.max(now);
        let audited = w.audited.entry(budget).or_default();
        if *audited < budget {
            *audited += 1;
            return (Admit::Audit, ended);
        }
        *w.counted.entry(reason.name()).or_default() += 1;
        if let Some(kid) = kid
            && w.kids.len() < KIDS_KEPT
            && !w.kids.iter().any(|k| k == kid)
        {
            w.kids.push(kid.chars().take(256).collect());
        }
        (Admit::Counted, ended)
    }

    /// Takes out every window that ended by `now`, and the summaries of those that held
    /// anything back.
    pub(crate) fn due(&self, now: UnixTime) -> Vec<Summary> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<Key> = windows
            .iter()
            .filter(|(_, w)| now - w.started >= WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| windows.remove(&k).and_then(|w| summary(k, w)))
            .collect()
    }
}

fn summary(key: Key, w: Window) -> Option<Summary> {
    (!w.counted.is_empty()).then_some(Summary {
        key,
        from: w.started,
        until: w.last,
        reasons: w.counted,
        kids: w.kids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(net: &str) -> Key {
        (None, net.to_owned())
    }

    #[test]
    fn past_the_budget_refusals_are_counted_and_summarised_once_the_window_ends() {
        let b = RefusalBudget::default();
        for _ in 0..PER_WINDOW {
            assert_eq!(
                b.admit(key("a"), Rejection::Malformed, None, 0),
                (Admit::Audit, None)
            );
        }
        for i in 0..30 {
            let reason = if i % 3 == 0 {
                Rejection::Malformed
            } else {
                Rejection::SignatureInvalid
            };
            assert_eq!(b.admit(key("a"), reason, Some("k"), 10).0, Admit::Counted);
        }
        // Refusals the rules alert on have a budget of their own, and are audited well past
        // the plain one.
        for _ in 0..ALERTING_PER_WINDOW {
            assert_eq!(
                b.admit(key("a"), Rejection::UnknownKid, Some("x"), 10).0,
                Admit::Audit
            );
        }
        assert_eq!(
            b.admit(key("a"), Rejection::UnknownKid, Some("y"), 10).0,
            Admit::Counted
        );
        // Another source has a budget of its own.
        assert_eq!(
            b.admit(key("b"), Rejection::Malformed, None, 10).0,
            Admit::Audit
        );
        assert!(b.due(WINDOW - 1).is_empty(), "the window is still open");
        let (admit, ended) = b.admit(key("a"), Rejection::Malformed, None, WINDOW);
        assert_eq!(admit, Admit::Audit, "a new window, a new budget");
        let s = ended.unwrap();
        assert_eq!((s.from, s.until, s.total()), (0, 10, 31));
        assert_eq!(s.reasons["Malformed"], 10);
        assert_eq!(s.reasons["SignatureInvalid"], 20);
        assert_eq!(s.reasons["UnknownKid"], 1);
        assert_eq!(s.kids, ["k", "y"]);
        // b's window held nothing back: it ends without a summary.
        assert!(b.due(WINDOW + 10).is_empty());
    }

    #[test]
    fn refusals_after_a_verified_signature_are_never_garbage() {
        for r in [
            Rejection::NotIssued,
            Rejection::KeyNotInRealm,
            Rejection::LedgerMismatch,
            Rejection::TenantMismatch,
            Rejection::AudienceMismatch,
            Rejection::WrongKeyPurpose,
            Rejection::Expired,
        ] {
            assert_eq!(budget_of(r), None, "{r:?}");
        }
        assert_eq!(budget_of(Rejection::SignatureInvalid), Some(PER_WINDOW));
        assert_eq!(budget_of(Rejection::UnknownKid), Some(ALERTING_PER_WINDOW));
    }
}
