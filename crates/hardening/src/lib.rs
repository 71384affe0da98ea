//! The one place Keypost calls the operating system directly: keeping a process that holds
//! private keys out of core dumps and out of swap.
//!
//! A crash dump carried out of an isolated signing system is the leading theory of how the
//! 2023 key left it (THREAT-MODEL step 2). A process that holds keys therefore marks itself
//! non-dumpable (`PR_SET_DUMPABLE 0`: no core file, no ptrace attach, `/proc/PID/mem` readable
//! by root only) and sets its core-size limit to zero, and may lock its memory so keys are never
//! written to swap. Everything here is Linux; elsewhere the calls report `Unsupported`.
//!
//! This crate is the only one that allows `unsafe`: each block is one libc call with a comment
//! saying why it is sound.
#![deny(unsafe_code)]

/// A hardening step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The system call failed.
    #[error("{call} failed: {source}")]
    Os {
        /// Which call.
        call: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not available on this platform.
    #[error("{0} is not available on this platform")]
    Unsupported(&'static str),
}

fn check(call: &'static str, rc: libc::c_int) -> Result<(), Error> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Os {
            call,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// No core dumps of this process, ever: marks it non-dumpable and sets `RLIMIT_CORE` to zero
/// (soft and hard, so it cannot be raised again).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn no_core_dumps() -> Result<(), Error> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only and changes a flag of
    // the calling process; no memory is passed or retained.
    check("prctl(PR_SET_DUMPABLE)", unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0)
    })?;
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid, initialised rlimit that outlives the call; setrlimit only
    // reads it.
    check("setrlimit(RLIMIT_CORE)", unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &zero)
    })
}

/// No core dumps (unsupported platform).
#[cfg(not(target_os = "linux"))]
pub fn no_core_dumps() -> Result<(), Error> {
    Err(Error::Unsupported("no_core_dumps"))
}

/// Whether the process is non-dumpable (what [`no_core_dumps`] set).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn is_dumpable() -> bool {
    // SAFETY: prctl(PR_GET_DUMPABLE) takes no pointers and only returns the flag.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// Whether the process is dumpable (unsupported platform: assume so).
#[cfg(not(target_os = "linux"))]
pub fn is_dumpable() -> bool {
    true
}

/// Locks every page of the process, now and future, in RAM so nothing (keys included) is ever
/// written to swap. Needs `CAP_IPC_LOCK` or a large enough `RLIMIT_MEMLOCK`; meant for the
/// small signer process, not for a mail server's whole heap.
///
/// Pages are locked as they are first touched (`MCL_ONFAULT`, Linux 4.4), which is before
/// anything is written to them: address space an allocator merely reserves (mimalloc reserves
/// a gigabyte) is not filled with locked zero pages.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn lock_all_memory() -> Result<(), Error> {
    // SAFETY: mlockall takes a flag set only; it changes the paging of the calling process.
    check("mlockall", unsafe {
        libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT)
    })
}

/// Asks the kernel to end this process when its parent dies, so a signer never outlives the
/// server that started it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn die_with_parent() -> Result<(), Error> {
    // SAFETY: prctl(PR_SET_PDEATHSIG, signal) takes integers only and sets a flag of the
    // calling process.
    check("prctl(PR_SET_PDEATHSIG)", unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0)
    })
}

/// Takes `name` out of this process's environment and returns its value, so that a secret
/// handed over in the environment (`KEYPOST_KEK`) is not left in `/proc/PID/environ`, in what
/// child processes inherit, or in a crash report. Refused unless the process has a single
/// thread: changing the environment while another thread may read it is undefined behaviour
/// in C, so this must run first thing in `main`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn take_env_var(name: &str) -> Result<Option<String>, Error> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|source| Error::Os {
        call: "read /proc/self/status",
        source,
    })?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if threads != Some(1) {
        return Err(Error::Unsupported(
            "take_env_var once the process has more than one thread",
        ));
    }
    let value = std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    if value.is_some() {
        // SAFETY: the process has exactly one thread (checked just above, and this thread
        // starts no other before the call returns), so no other thread can be reading or
        // writing the environment while it changes.
        unsafe { std::env::remove_var(name) };
        scrub_initial_environment(name)?;
    }
    Ok(value)
}

/// Overwrites `name=value` in the environment block the process was started with, which
/// `/proc/PID/environ` shows (removing the variable only drops libc's pointer to it). Through
/// `/proc/self/mem`, so no raw pointer is involved.
#[cfg(target_os = "linux")]
fn scrub_initial_environment(name: &str) -> Result<(), Error> {
    use std::io::{Seek, SeekFrom, Write};
    let os = |call: &'static str| move |source| Error::Os { call, source };
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(os("read /proc/self/stat"))?;
    // Fields after the command name (which may hold spaces, inside parentheses) start at 3;
    // env_start is field 50 (proc(5)).
    let env_start = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(50 - 3))
        .and_then(|f| f.parse::<u64>().ok())
        .ok_or(Error::Unsupported("env_start in /proc/self/stat"))?;
    let block = std::fs::read("/proc/self/environ").map_err(os("read /proc/self/environ"))?;
    let entry = format!("{name}=");
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .map_err(os("open /proc/self/mem"))?;
    let mut offset = 0;
    for var in block.split(|&b| b == 0) {
        if var.starts_with(entry.as_bytes()) {
            mem.seek(SeekFrom::Start(env_start + offset as u64))
                .and_then(|_| mem.write_all(&vec![0u8; var.len()]))
                .map_err(os("write /proc/self/mem"))?;
        }
        offset += var.len() + 1;
    }
    Ok(())
}

/// Taking a variable out of the environment (unsupported platform).
#[cfg(not(target_os = "linux"))]
pub fn take_env_var(_name: &str) -> Result<Option<String>, Error> {
    Err(Error::Unsupported("take_env_var"))
}

/// Parent-death signal (unsupported platform).
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent() -> Result<(), Error> {
    Err(Error::Unsupported("die_with_parent"))
}

/// Memory locking (unsupported platform).
#[cfg(not(target_os = "linux"))]
pub fn lock_all_memory() -> Result<(), Error> {
    Err(Error::Unsupported("lock_all_memory"))
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn the_environment_is_not_changed_while_other_threads_run() {
        // The test harness runs tests on threads of their own: never a single thread here.
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let busy = std::thread::spawn(move || held.recv());
        assert!(super::take_env_var("PATH").is_err());
        assert!(std::env::var_os("PATH").is_some());
        drop(hold);
        let _ = busy.join().unwrap();
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_hardened_process_cannot_dump() {
        // Runs in the test process itself: afterwards it can never dump, which is harmless.
        assert!(super::no_core_dumps().is_ok());
        assert!(!super::is_dumpable());
    }
}
