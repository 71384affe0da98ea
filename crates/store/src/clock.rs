//! The one clock. Every read of the wall clock and every deliberate pause in Keypost goes
//! through here — clippy's `disallowed-methods` (clippy.toml) refuses `SystemTime::now` and
//! `thread::sleep` anywhere else — so time is a value the entry points read once and pass down
//! (`now: UnixTime` parameters), and tests choose it instead of waiting for it.

#![allow(clippy::disallowed_methods)] // The one place these are allowed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::UnixTime;

/// Now, in Unix seconds (0 if the clock is before 1970).
pub fn now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Now, in Unix milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Blocks this thread for `d` (a retry's pause, a poll's interval).
pub fn sleep(d: Duration) {
    std::thread::sleep(d);
}
