//! How much work one request, and one account, may make the server do: the output limits of an
//! API request (what result references may copy, how large one method's response and the
//! whole response may grow, how many bytes one `Email/parse` reads) and the concurrency limits
//! the session object advertises (RFC 8620 §2 `maxConcurrentRequests`, `maxConcurrentUpload`).
//!
//! Every limit refuses at once, in the protocol's own form; nothing here waits or queues, so a
//! client that sends more than it may is answered, not held.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use store::AccountId;

use crate::{
    MAX_CONCURRENT_REQUESTS, MAX_CONCURRENT_UPLOAD, MAX_PARSE_BYTES, MAX_REFERENCE_BYTES,
    MAX_SIZE_METHOD_RESPONSE, MAX_SIZE_RESPONSE,
};

/// The output limits of one API request (the defaults are the crate's constants; tests use
/// smaller ones to reach them cheaply).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most bytes the result references of one call may copy from earlier responses.
    pub(crate) reference_bytes: usize,
    /// Largest serialised response of one method call.
    pub(crate) method_response: usize,
    /// Largest serialised API response.
    pub(crate) response: usize,
    /// Most blob bytes one `Email/parse` reads.
    pub(crate) parse_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            reference_bytes: MAX_REFERENCE_BYTES,
            method_response: MAX_SIZE_METHOD_RESPONSE,
            response: MAX_SIZE_RESPONSE,
            parse_bytes: MAX_PARSE_BYTES,
        }
    }
}

/// A writer that takes at most `room` more bytes into `out` and fails past that, so
/// serialising a value too large for its budget stops as soon as the budget is spent instead
/// of building the whole thing first.
struct Bounded<'a> {
    out: &'a mut Vec<u8>,
    room: usize,
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.room {
            return Err(std::io::Error::other("over the size limit"));
        }
        self.room -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts the bytes written, failing past `room`: measures a value without keeping its text.
struct Counter {
    written: usize,
    room: usize,
}

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.room - self.written {
            return Err(std::io::Error::other("over the size limit"));
        }
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends the JSON of `value` to `out` if it takes at most `room` bytes; otherwise leaves
/// `out` as it was and answers `false`.
pub(crate) fn append_within(value: &impl Serialize, out: &mut Vec<u8>, room: usize) -> bool {
    let mark = out.len();
    let fits = serde_json::to_writer(Bounded { out, room }, value).is_ok();
    if !fits {
        out.truncate(mark);
    }
    fits
}

/// The length of the JSON of `value`, if it is at most `room` bytes.
pub(crate) fn size_within(value: &impl Serialize, room: usize) -> Option<usize> {
    let mut c = Counter { written: 0, room };
    serde_json::to_writer(&mut c, value)
        .ok()
        .map(|()| c.written)
}

/// What a method that builds a long list (`Email/get`, `Email/parse`) may still add to its
/// response: measured as each object is built, so a call over the limit stops there instead of
/// holding the whole list before the response's own check refuses it. (The one place a
/// response is measured apart from being written: the objects are built long before.)
pub(crate) struct OutputBudget {
    room: usize,
}

impl OutputBudget {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            room: limits.method_response,
        }
    }

    /// Counts `value` against the budget; `false` once it no longer fits.
    pub(crate) fn take(&mut self, value: &impl Serialize) -> bool {
        match size_within(value, self.room) {
            Some(n) => {
                self.room -= n;
                true
            }
            None => false,
        }
    }
}

/// Which of an account's concurrency limits a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    /// The API endpoint (`maxConcurrentRequests`).
    Api,
    /// The upload endpoint (`maxConcurrentUpload`).
    Upload,
}

impl Endpoint {
    /// The session object's name for this limit (the `limit` of the refusal).
    pub(crate) fn limit_name(self) -> &'static str {
        match self {
            Self::Api => "maxConcurrentRequests",
            Self::Upload => "maxConcurrentUpload",
        }
    }
}

/// How many requests each account has running per endpoint. An account at its limit is
/// refused (not queued); an idle account takes no entry.
#[derive(Debug)]
pub(crate) struct Concurrency {
    max_api: usize,
    max_upload: usize,
    running: Arc<Mutex<HashMap<(AccountId, Endpoint), usize>>>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            max_api: MAX_CONCURRENT_REQUESTS,
            max_upload: MAX_CONCURRENT_UPLOAD,
            running: Arc::default(),
        }
    }
}

/// One running request of an account; the count goes down when it is dropped.
#[derive(Debug)]
#[must_use = "the request counts as running only while the permit is held"]
pub(crate) struct Permit {
    running: Arc<Mutex<HashMap<(AccountId, Endpoint), usize>>>,
    key: (AccountId, Endpoint),
}

impl Concurrency {
    /// Counts a request of `account` to `endpoint` as running, or `None` if the account
    /// already runs as many as it may.
    pub(crate) fn admit(&self, account: &AccountId, endpoint: Endpoint) -> Option<Permit> {
        let max = match endpoint {
            Endpoint::Api => self.max_api,
            Endpoint::Upload => self.max_upload,
        };
        let key = (account.clone(), endpoint);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(&key).copied().unwrap_or(0) >= max {
            return None;
        }
        *running.entry(key.clone()).or_default() += 1;
        Some(Permit {
            running: self.running.clone(),
            key,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn serialising_stops_at_the_budget() {
        let v = json!({"a": "x".repeat(100)});
        let exact = serde_json::to_vec(&v).unwrap().len();
        assert_eq!(size_within(&v, exact), Some(exact));
        assert_eq!(size_within(&v, exact - 1), None);
        let mut out = b"[".to_vec();
        assert!(!append_within(&v, &mut out, exact - 1));
        assert_eq!(out, b"[", "a value that does not fit leaves nothing behind");
        assert!(append_within(&v, &mut out, exact));
        assert_eq!(&out[1..], serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn an_account_runs_at_most_its_limit_and_idle_accounts_take_no_entry() {
        let c = Concurrency::default();
        let alice = AccountId::new("alice").unwrap();
        let bob = AccountId::new("bob").unwrap();
        let held: Vec<Permit> = (0..MAX_CONCURRENT_REQUESTS)
            .map(|_| c.admit(&alice, Endpoint::Api).unwrap())
            .collect();
        assert!(c.admit(&alice, Endpoint::Api).is_none());
        assert!(c.admit(&bob, Endpoint::Api).is_some(), "per account");
        assert!(
            c.admit(&alice, Endpoint::Upload).is_some(),
            "uploads count separately"
        );
        drop(held);
        assert!(c.running.lock().unwrap().is_empty());
        assert!(c.admit(&alice, Endpoint::Api).is_some());
    }
}
