//! Sign-in attempts in progress in this process, by key (an account, a source address).
//!
//! The throttle counts recorded failures; a guess is recorded as one only after its password
//! hash was checked (tens of milliseconds). Guesses sent in parallel would all read the count
//! from before any of them failed — hundreds of guesses per window instead of five — so the
//! attempts still running count too, and one that would exceed the limit waits for them.
//! Per process: with several nodes, each admits its own share, still bounded.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Attempts in progress, by key; a waiter is woken whenever one finishes.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Mutex<HashMap<String, u64>>, Condvar);

impl InFlight {
    /// Registers an attempt under each of `keys` until the returned guard is dropped, with how
    /// many other attempts each key had in progress.
    pub(crate) fn begin(&self, keys: Vec<String>) -> (Attempt<'_>, Vec<u64>) {
        let mut map = self.lock();
        let busy = keys
            .iter()
            .map(|k| {
                let n = map.entry(k.clone()).or_insert(0);
                *n += 1;
                *n - 1
            })
            .collect();
        drop(map);
        (Attempt { set: self, keys }, busy)
    }

    /// Waits until some attempt finishes, or `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) {
        let map = self.lock();
        let _ = self.1.wait_timeout(map, timeout);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One attempt in progress; finished when dropped (whatever the outcome, a panic included).
pub(crate) struct Attempt<'a> {
    set: &'a InFlight,
    keys: Vec<String>,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut map = self.set.lock();
        for k in &self.keys {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    // Keys come and go with their attempts: the map holds only what runs.
                    map.remove(k);
                }
            }
        }
        drop(map);
        self.set.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_while_they_run_and_leave_nothing_behind() {
        let set = InFlight::default();
        let (a, busy) = set.begin(vec!["account:x".into(), "source:1".into()]);
        assert_eq!(busy, [0, 0]);
        let (b, busy) = set.begin(vec!["account:x".into(), "source:2".into()]);
        assert_eq!(busy, [1, 0]);
        drop(a);
        let (_c, busy) = set.begin(vec!["account:x".into()]);
        assert_eq!(busy, [1], "b still runs");
        drop(b);
        drop(_c);
        assert!(set.lock().is_empty());
    }
}
