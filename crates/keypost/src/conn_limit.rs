//! How many connections a listener holds open: a cap for the whole process and a cap per
//! source, so that one client (a slowloris, a runaway script) can take only its share. Owns the
//! counting only; what a connection may do once admitted (deadlines, protocol) belongs to the
//! listener (`http_edge` for HTTP; the SMTP and IMAP listeners take the same type).
//!
//! The source is the TCP peer. IPv6 peers count per /64, the smallest network a single
//! subscriber is usually given (one host can pick any address in it). Behind a proxy every
//! connection comes from the proxy: peers in `listen.trusted_proxies` are not capped per source
//! (the proxy must limit its clients), only by the total.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use audit::TrustedProxies;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where a connection counts: an IPv4 address, or an IPv6 /64 (IPv4-mapped addresses count
/// as the IPv4 address they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey(IpAddr);

impl SourceKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        Self(audit::network_of(ip, audit::DEFAULT_V6_PREFIX))
    }
}

/// Counts open connections per source and refuses one beyond `max`. The map holds only
/// sources with a connection open, so it is bounded by the total cap it is used under.
#[derive(Debug)]
pub(crate) struct SourceLimiter {
    max: NonZeroUsize,
    open: Mutex<HashMap<SourceKey, usize>>,
}

impl SourceLimiter {
    pub(crate) fn new(max: NonZeroUsize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more connection from `ip`, held as long as the connection is open;
    /// `None` if that source already has `max` open.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourcePermit> {
        let key = SourceKey::of(ip);
        // A panic while holding the lock cannot leave the counts half-updated: every update
        // is a single statement.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max.get() {
            return None;
        }
        *count += 1;
        Some(SourcePermit {
            limiter: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s source.
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&SourceKey::of(ip)).copied().unwrap_or(0)
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One open connection's place in its source's count; given back on drop.
#[derive(Debug)]
pub(crate) struct SourcePermit {
    limiter: Arc<SourceLimiter>,
    key: SourceKey,
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A listener's caps: `total` open connections in all, at most `per_source` of them from one
/// source (none for trusted proxies; `None`: no per-source cap).
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    total: Arc<Semaphore>,
    max_total: u32,
    per_source: Option<Arc<SourceLimiter>>,
    exempt: TrustedProxies,
}

/// A free place in the total, taken before accepting (so a full listener leaves new
/// connections waiting in the kernel's backlog instead of accepting and dropping them).
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// An admitted connection's places, given back when it is dropped (the connection closed).
#[derive(Debug)]
pub(crate) struct Admitted {
    _slot: Slot,
    _source: Option<SourcePermit>,
}

impl ConnectionLimits {
    pub(crate) fn new(
        max_total: std::num::NonZeroU32,
        per_source: Option<NonZeroUsize>,
        exempt: TrustedProxies,
    ) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total.get() as usize)),
            max_total: max_total.get(),
            per_source: per_source.map(SourceLimiter::new),
            exempt,
        }
    }

    /// Waits until fewer than the total are open.
    pub(crate) async fn slot(&self) -> Slot {
        match self.total.clone().acquire_owned().await {
            Ok(permit) => Slot { _permit: permit },
            // The semaphore is never closed; if it were, waiting forever is the honest answer.
            Err(_) => std::future::pending().await,
        }
    }

    /// Admits a connection accepted from `peer` into `slot`, or gives the slot back and
    /// refuses it (its source already has its share open).
    pub(crate) fn admit(&self, slot: Slot, peer: IpAddr) -> Option<Admitted> {
        let source = match &self.per_source {
            Some(limiter) if !self.exempt.contains(peer) => Some(limiter.try_acquire(peer)?),
            _ => None,
        };
        Some(Admitted {
            _slot: slot,
            _source: source,
        })
    }

    /// Waits until every admitted connection has closed.
    pub(crate) async fn drained(&self) {
        // Taking every place at once succeeds only when none is held.
        let _all = self.total.acquire_many(self.max_total).await;
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn n(v: usize) -> NonZeroUsize {
        NonZeroUsize::new(v).unwrap()
    }

    #[test]
    fn a_source_gets_its_share_and_no_more() {
        let limiter = SourceLimiter::new(n(2));
        let a = ip("192.0.2.1");
        let first = limiter.try_acquire(a).unwrap();
        let second = limiter.try_acquire(a).unwrap();
        assert!(limiter.try_acquire(a).is_none(), "the third is refused");
        assert!(
            limiter.try_acquire(ip("192.0.2.2")).is_some(),
            "another source is not affected"
        );
        drop(first);
        let third = limiter
            .try_acquire(a)
            .expect("a closed connection frees its place");
        assert_eq!(limiter.open_from(a), 2);
        drop((second, third));
        assert_eq!(limiter.open_from(a), 0);
        assert_eq!(
            limiter.sources(),
            0,
            "a source with nothing open is forgotten"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = SourceLimiter::new(n(1));
        let _held = limiter.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            limiter.try_acquire(ip("2001:db8:1:2:ffff::9")).is_none(),
            "another address of the same /64 is the same source"
        );
        assert!(limiter.try_acquire(ip("2001:db8:1:3::1")).is_some());
        let _v4 = limiter.try_acquire(ip("198.51.100.7")).unwrap();
        assert!(limiter.try_acquire(ip("::ffff:198.51.100.7")).is_none());
    }

    #[test]
    fn a_refused_source_leaves_no_entry() {
        let limiter = SourceLimiter::new(n(1));
        let a = ip("192.0.2.1");
        let held = limiter.try_acquire(a).unwrap();
        for _ in 0..10 {
            assert!(limiter.try_acquire(a).is_none());
        }
        assert_eq!(limiter.open_from(a), 1, "refusals are not counted");
        drop(held);
        assert_eq!(limiter.sources(), 0);
    }

    #[tokio::test]
    async fn trusted_proxies_are_capped_only_by_the_total() {
        let limits = ConnectionLimits::new(
            NonZeroU32::new(3).unwrap(),
            Some(n(1)),
            TrustedProxies::parse(&["10.0.0.0/8"]).unwrap(),
        );
        let proxy = ip("10.1.2.3");
        let client = ip("192.0.2.1");
        let p1 = limits.admit(limits.slot().await, proxy).unwrap();
        let p2 = limits.admit(limits.slot().await, proxy).unwrap();
        let c1 = limits.admit(limits.slot().await, client).unwrap();
        // The total is reached: the next slot waits until a connection closes.
        let waiting = tokio::time::timeout(Duration::from_millis(50), limits.slot()).await;
        assert!(waiting.is_err(), "no fourth place while three are open");
        drop(p1);
        let slot = limits.slot().await;
        assert!(
            limits.admit(slot, client).is_none(),
            "the client's share is taken"
        );
        // The refused connection gave its slot back.
        let _p3 = limits.admit(limits.slot().await, proxy).unwrap();
        drop((p2, c1));
    }

    #[tokio::test]
    async fn drained_waits_for_every_connection() {
        let limits =
            ConnectionLimits::new(NonZeroU32::new(4).unwrap(), None, TrustedProxies::default());
        let open = limits.admit(limits.slot().await, ip("192.0.2.1")).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(50), limits.drained()).await;
        assert!(early.is_err(), "a connection is still open");
        drop(open);
        limits.drained().await;
    }
}
