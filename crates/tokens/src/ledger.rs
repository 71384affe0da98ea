//! The issuance-ledger contract the validator checks against. A token Keypost never issued
//! is refused even if its signature is perfect: a stolen signing key mints nothing usable.
//!
//! [`StoreLedger`] answers from the store: one read per validation. [`LedgerCache`] keeps in
//! memory the access and refresh tokens this process minted (recorded once their ledger rows
//! are durable; a refresh token until it is rotated here) and the session, account and client
//! states validations and refresh grants last read, so the first validation of a token minted
//! here, and a refresh of a token minted here, cost no read at all. It is hand-rolled because
//! its one rule is the policy's: everything in it was read (or written) at a known revocation
//! generation, and it answers only while the store's generation is still that one — any
//! revoked token, family or session, or any account or client change empties it in effect,
//! exactly as it does the verified-token cache.

use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use store::{
    AccountState, ClientId, Jti, LedgerEntry, LedgerView, RealmId, SessionId, SessionState, Store,
    TokenKind,
};

use crate::validate::Rejection;

// The cache's maps hash with foldhash (randomly seeded) rather than SipHash: a validation
// looks up four keys, and SipHash was a third of what answering from memory cost. No request
// chooses what goes in — jtis this process minted, and ids of rows the store holds (accounts,
// sessions, and clients, whose ids administrators choose) — and a lookup of any other key
// costs what a miss costs; each map also starts over at `CAPACITY` entries.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
type HashSet<T> = StdHashSet<T, foldhash::fast::RandomState>;

/// What the ledger knows about one presented jti, lent to the validator's checks.
#[derive(Debug, Clone, Copy)]
pub struct LedgerFacts<'a> {
    /// The ledger row, if Keypost issued this jti.
    pub entry: Option<&'a Arc<LedgerEntry>>,
    /// Whether the presented client is registered in the expected realm.
    pub client_known: bool,
    /// The row's session, if it has one and it exists.
    pub session: Option<&'a SessionState>,
    /// The account named by the row's subject, if it is an account.
    pub account: Option<&'a AccountState>,
}

impl<'a> LedgerFacts<'a> {
    /// What a store read says, its row (if any) shared as `entry`.
    fn read(v: &'a LedgerView, entry: Option<&'a Arc<LedgerEntry>>) -> Self {
        Self {
            entry,
            client_known: v.client_known,
            session: v.session.as_ref(),
            account: v.account.as_ref(),
        }
    }
}

/// The ledger checks' outcome: the token's row, or why it is refused.
pub type LedgerVerdict = Result<Arc<LedgerEntry>, Rejection>;

/// What [`crate::validate`] asks of the ledger: one consultation per validation.
pub trait Ledger {
    /// Hands what the ledger knows about `jti` (and whether `client` is registered in `realm`)
    /// to `check`, and returns its verdict. Implementations fail closed: on error, or for ids
    /// that are not valid ones, `check` sees a ledger that knows nothing.
    fn consult(
        &self,
        jti: &str,
        realm: &RealmId,
        client: &str,
        check: &mut dyn FnMut(LedgerFacts<'_>) -> LedgerVerdict,
    ) -> LedgerVerdict;
}

/// The ledger backed by a [`Store`]. A storage failure reads as "not issued", so an outage
/// fails closed.
#[derive(Clone)]
pub struct StoreLedger(pub Arc<dyn Store>);

impl std::fmt::Debug for StoreLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLedger")
    }
}

impl StoreLedger {
    fn view(&self, jti: &Jti, realm: &RealmId, client: &ClientId) -> LedgerView {
        self.0.ledger_view(jti, realm, client).unwrap_or_else(|e| {
            tracing::error!(error = %e, "ledger lookup failed; refusing the token");
            nothing_known()
        })
    }
}

fn nothing_known() -> LedgerView {
    LedgerView {
        entry: None,
        client_known: false,
        session: None,
        account: None,
    }
}

impl Ledger for StoreLedger {
    fn consult(
        &self,
        jti: &str,
        realm: &RealmId,
        client: &str,
        check: &mut dyn FnMut(LedgerFacts<'_>) -> LedgerVerdict,
    ) -> LedgerVerdict {
        let mut view = match (Jti::new(jti), ClientId::new(client)) {
            (Ok(jti), Ok(client)) => self.view(&jti, realm, &client),
            _ => nothing_known(),
        };
        let entry = view.entry.take().map(Arc::new);
        check(LedgerFacts::read(&view, entry.as_ref()))
    }
}

/// Most entries each of the cache's maps holds; past it the map starts over (its contents
/// are read again from the store as needed).
const CAPACITY: usize = 100_000;

/// What the cache let go of, freed by its caller once the lock is released: dropping a full
/// map takes about 30 ms (measured, 100,000 access-token rows), which every mint and
/// validation of the process would otherwise wait for. Anything that large is freed on a
/// thread of its own, since the caller may be an async task.
#[derive(Default)]
struct Evicted {
    maps: Vec<Box<dyn std::any::Any + Send>>,
    entries: usize,
}

/// Evictions of at least this many entries are freed off the caller's thread.
const FREE_ELSEWHERE: usize = 10_000;

impl Evicted {
    fn push<T: Send + 'static>(&mut self, map: T, entries: usize) {
        self.maps.push(Box::new(map));
        self.entries += entries;
    }
}

impl Drop for Evicted {
    fn drop(&mut self) {
        if self.entries >= FREE_ELSEWHERE {
            let maps = std::mem::take(&mut self.maps);
            // Should no thread start, the closure and the maps with it are dropped here.
            let _ = std::thread::Builder::new()
                .name("keypost-cache-free".into())
                .spawn(move || drop(maps));
        }
    }
}

/// Ledger rows this process issued and states recently read, valid at one revocation
/// generation (see the module documentation). Shared by the minter that fills it and the
/// gates that read it.
#[derive(Default)]
pub struct LedgerCache {
    inner: Mutex<Known>,
    hits: AtomicU64,
}

impl std::fmt::Debug for LedgerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerCache").finish_non_exhaustive()
    }
}

/// Everything the cache knows, all of it true at revocation generation `generation`.
#[derive(Default)]
struct Known {
    generation: i64,
    /// Shared (with the principals of their validations): a row is ~300 bytes, and the map
    /// moves every entry each time it grows.
    tokens: HashMap<Jti, Arc<LedgerEntry>>,
    clients: HashMap<RealmId, HashSet<ClientId>>,
    sessions: HashMap<SessionId, SessionState>,
    /// By subject: `None` records that the subject is no account (a client's own token).
    /// Sound because creating an account bumps the generation (migration 15).
    accounts: HashMap<String, Option<AccountState>>,
}

impl Known {
    /// Brings the contents to `generation` if it is newer (letting go of them all); whether
    /// they now describe exactly `generation`.
    fn at(&mut self, generation: i64, evicted: &mut Evicted) -> bool {
        if generation > self.generation {
            let old = std::mem::replace(
                self,
                Known {
                    generation,
                    ..Known::default()
                },
            );
            let entries = old.tokens.len() + old.sessions.len() + old.accounts.len();
            evicted.push(old, entries);
        }
        generation == self.generation
    }

    /// Everything known about `jti`, if enough is known to answer without the store.
    fn facts<'a>(&'a self, jti: &str, realm: &RealmId, client: &str) -> Option<LedgerFacts<'a>> {
        let entry = self.tokens.get(jti)?;
        let client_known = self.clients.get(realm)?.contains(client);
        let session = match &entry.session_id {
            Some(s) => Some(self.sessions.get(s)?),
            None => None,
        };
        let account = self.accounts.get(entry.subject.as_str())?.as_ref();
        // Only a known client is remembered, so "unknown" here is not an answer.
        client_known.then_some(LedgerFacts {
            entry: Some(entry),
            client_known,
            session,
            account,
        })
    }

    /// Learns from `view`, a store read whose row is `entry` (taken out of it or not).
    fn learn(
        &mut self,
        realm: &RealmId,
        client: &ClientId,
        entry: Option<&LedgerEntry>,
        view: &LedgerView,
        evicted: &mut Evicted,
    ) {
        // Only what a validation can rely on later: a registered client (deleting one bumps
        // the generation), and the session and account of a row that exists.
        let Some(entry) = entry else { return };
        if view.client_known {
            bounded_insert(
                &mut self.clients,
                realm.clone(),
                HashSet::default(),
                evicted,
            )
            .insert(client.clone());
        }
        if let (Some(id), Some(state)) = (&entry.session_id, &view.session) {
            bounded_insert(&mut self.sessions, id.clone(), state.clone(), evicted);
        }
        bounded_insert(
            &mut self.accounts,
            entry.subject.clone(),
            view.account.clone(),
            evicted,
        );
    }
}

/// Inserts `key` (keeping an existing value) into `map`, starting the map over first if it
/// is full (the old one goes to `evicted`).
fn bounded_insert<'m, K, V>(
    map: &'m mut HashMap<K, V>,
    key: K,
    value: V,
    evicted: &mut Evicted,
) -> &'m mut V
where
    K: std::hash::Hash + Eq + Send + 'static,
    V: Send + 'static,
{
    if map.len() >= CAPACITY && !map.contains_key(&key) {
        evicted.push(std::mem::take(map), CAPACITY);
    }
    map.entry(key).or_insert(value)
}

impl LedgerCache {
    /// Records access and refresh tokens whose ledger rows are now durable (ID-token rows are
    /// never presented, so not kept). `generation` is the revocation generation read *before*
    /// they were written: nothing that happened before that read can concern rows that did
    /// not exist yet, and anything after it bumps it.
    pub fn issued(&self, entries: impl IntoIterator<Item = LedgerEntry>, generation: i64) {
        let mut evicted = Evicted::default();
        let mut known = self.lock();
        if known.at(generation, &mut evicted) {
            for entry in entries.into_iter().filter(|e| e.kind != TokenKind::Id) {
                let jti = entry.jti.clone();
                bounded_insert(&mut known.tokens, jti, Arc::new(entry), &mut evicted);
            }
        }
        drop(known);
        drop(evicted);
    }

    /// Forgets a refresh token this process has rotated: its row is no longer unused.
    /// (A token rotated by another process still looks unused here; see
    /// [`LedgerCache::refresh_view`].)
    pub fn consumed(&self, jti: &Jti) {
        let gone = self.lock().tokens.remove(jti);
        drop(gone);
    }

    /// The refresh grant's read of a presented refresh token: its ledger row, session and
    /// account, from memory while all of them are known at the store's current revocation
    /// generation (read first), otherwise from `store`, whose session, account and client
    /// then are remembered. Unlike a validation's, a storage failure is returned, not read as
    /// "not issued": an outage must not make a client throw its grant away.
    ///
    /// Sound for rotation because the rotation's durable write decides: it requires the row
    /// unused (a use by another process, invisible here, is refused there as a reuse, like a
    /// second use racing the first) and still live — unrevoked, its family, session and
    /// account too — whatever was read here up to `store::GENERATIONS_STALE_AFTER` before.
    pub fn refresh_view(
        &self,
        store: &dyn Store,
        jti: &Jti,
        realm: &RealmId,
        client: &ClientId,
    ) -> store::Result<LedgerView> {
        // Before anything is looked at: what is answered was true at this generation.
        let generation = store.generations()?.revocations;
        let remembered =
            self.answer_from_memory(jti.as_str(), realm, client.as_str(), generation, |facts| {
                LedgerView {
                    entry: facts.entry.map(|e| LedgerEntry::clone(e)),
                    client_known: facts.client_known,
                    session: facts.session.cloned(),
                    account: facts.account.cloned(),
                }
            });
        if let Some(view) = remembered {
            return Ok(view);
        }
        let view = store.ledger_view(jti, realm, client)?;
        self.learn(realm, client, view.entry.as_ref(), &view, generation);
        Ok(view)
    }

    /// `answer` applied, under the lock, to what the cache knows of `jti` at `generation`,
    /// if that is enough to answer without the store (a hit); `None` otherwise.
    fn answer_from_memory<R>(
        &self,
        jti: &str,
        realm: &RealmId,
        client: &str,
        generation: i64,
        answer: impl FnOnce(LedgerFacts<'_>) -> R,
    ) -> Option<R> {
        let mut evicted = Evicted::default();
        let mut known = self.lock();
        let answered = if known.at(generation, &mut evicted) {
            known.facts(jti, realm, client).map(answer)
        } else {
            None
        };
        if answered.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        drop(known);
        drop(evicted);
        answered
    }

    /// Remembers what `view`, a store read whose row is `entry`, says of `client`, the row's
    /// session and its account, if the cache is at `generation` (when it was read).
    fn learn(
        &self,
        realm: &RealmId,
        client: &ClientId,
        entry: Option<&LedgerEntry>,
        view: &LedgerView,
        generation: i64,
    ) {
        let mut evicted = Evicted::default();
        let mut known = self.lock();
        if known.at(generation, &mut evicted) {
            known.learn(realm, client, entry, view, &mut evicted);
        }
        drop(known);
        drop(evicted);
    }

    /// How many consultations were answered from memory so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ledger for one validation, answering from this cache while the store's revocation
    /// generation is `generation` (read before the validation began) and from `store`
    /// otherwise, learning from what it reads there.
    pub fn ledger<'a>(&'a self, store: &'a StoreLedger, generation: i64) -> CachedLedger<'a> {
        CachedLedger {
            cache: self,
            store,
            generation,
        }
    }
}

/// A [`Ledger`] over a [`LedgerCache`] and the store (see [`LedgerCache::ledger`]).
#[derive(Debug)]
pub struct CachedLedger<'a> {
    cache: &'a LedgerCache,
    store: &'a StoreLedger,
    generation: i64,
}

impl Ledger for CachedLedger<'_> {
    fn consult(
        &self,
        jti: &str,
        realm: &RealmId,
        client: &str,
        check: &mut dyn FnMut(LedgerFacts<'_>) -> LedgerVerdict,
    ) -> LedgerVerdict {
        let remembered =
            self.cache
                .answer_from_memory(jti, realm, client, self.generation, &mut *check);
        if let Some(verdict) = remembered {
            return verdict;
        }
        let (Ok(jti), Ok(client)) = (Jti::new(jti), ClientId::new(client)) else {
            return check(LedgerFacts::read(&nothing_known(), None));
        };
        let mut view = self.store.view(&jti, realm, &client);
        let entry = view.entry.take().map(Arc::new);
        let verdict = check(LedgerFacts::read(&view, entry.as_ref()));
        let entry = entry.as_deref();
        self.cache
            .learn(realm, &client, entry, &view, self.generation);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_starts_over_and_its_old_contents_are_handed_out() {
        let mut map: HashMap<u32, u32> = (0..CAPACITY as u32).map(|k| (k, k)).collect();
        let mut evicted = Evicted::default();
        // A key already there keeps its value and evicts nothing.
        assert_eq!(*bounded_insert(&mut map, 7, 0, &mut evicted), 7);
        assert!(evicted.maps.is_empty());
        // A new key past the capacity: the map starts over with it alone, and the old map is
        // the caller's to drop (after it has released the cache's lock).
        assert_eq!(*bounded_insert(&mut map, u32::MAX, 1, &mut evicted), 1);
        assert_eq!(map.len(), 1);
        assert_eq!(evicted.maps.len(), 1);
        let old = evicted.maps[0].downcast_ref::<HashMap<u32, u32>>().unwrap();
        assert_eq!(old.len(), CAPACITY);
        assert!(evicted.entries >= FREE_ELSEWHERE, "freed off this thread");
    }

    #[test]
    fn a_newer_generation_hands_out_everything_known() {
        let mut known = Known::default();
        let mut evicted = Evicted::default();
        assert!(known.at(0, &mut evicted));
        known.accounts.insert("someone".into(), None);
        assert!(
            evicted.maps.is_empty(),
            "the same generation keeps what it knows"
        );
        assert!(known.at(3, &mut evicted));
        assert!(known.accounts.is_empty());
        assert_eq!((evicted.maps.len(), evicted.entries), (1, 1));
        assert!(
            !known.at(2, &mut evicted),
            "an older generation is not described"
        );
    }
}
