//! The signer process: the one process that unseals private keys. `keypost signer` runs it;
//! `keypost serve` starts it as a child, restarts it if it dies, and signs through its socket.
//!
//! It hardens itself before it loads a key (non-dumpable, no core file, memory locked where the
//! system allows), listens on a Unix socket in a 0700 directory, keeps every realm's keys on
//! schedule, and signs the audit checkpoints and retention tombstones.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use identity::Identity;

use crate::cli::Services;
use crate::config::Config;

/// How often the key schedule is checked. Keys are published a day ahead, so a minute is
/// plenty; it also bounds how long a stalled rotation could go unnoticed.
const KEY_SCHEDULE_INTERVAL: Duration = Duration::from_secs(60);

/// Where the signer listens unless told otherwise.
pub(crate) fn default_socket(config: &Config) -> PathBuf {
    config.data_dir.join("signer").join("signer.sock")
}

/// Runs the signer until its socket fails.
pub(crate) fn run(svc: Services, socket: &Path, child: bool) -> Result<()> {
    hardening::no_core_dumps().context("making the signer non-dumpable")?;
    if child {
        hardening::die_with_parent().context("tying the signer to serve")?;
    }
    if let Err(e) = hardening::lock_all_memory() {
        tracing::warn!(target: "keypost::security", error = %e,
            "signer memory not locked (needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK): keys could reach swap");
    }
    let dir = socket
        .parent()
        .context("the socket path has no directory")?;
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // The directory is the signer's own: created 0700, or refused if anyone else could
        // reach into it (never chmod a directory someone else owns, like /tmp).
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let meta = std::fs::metadata(dir)?;
        let me = std::fs::metadata("/proc/self").map_or(meta.uid(), |m| m.uid());
        if meta.uid() != me || meta.mode() & 0o077 != 0 {
            bail!(
                "{} must be a directory of this user that nobody else can enter (mode 0700)",
                dir.display()
            );
        }
        let _ = std::fs::remove_file(socket);
        let listener = std::os::unix::net::UnixListener::bind(socket)
            .with_context(|| format!("binding {}", socket.display()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        let retention = svc.config.audit_retention;
        key_schedule_step(&svc.identity, retention);
        let identity = svc.identity.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(KEY_SCHEDULE_INTERVAL);
                key_schedule_step(&identity, retention);
            }
        });
        tracing::info!(socket = %socket.display(), "signer ready");
        let audit = svc.identity.clone();
        let on_refused: keys::RefusalHook = Arc::new(move |r: &keys::Refusal| {
            tracing::warn!(target: "keypost::security", op = r.op, realm = %r.realm, purpose = %r.purpose, reason = r.reason, "signing request refused");
            let mut ev = audit::Event::failure(audit::Operation::SigningRefused)
                .detail("reason", r.reason)
                .detail("op", r.op)
                .detail("purpose", r.purpose.as_str())
                .detail("alg", r.alg.as_str());
            // The tenant's own chain when the realm exists; the provider's otherwise.
            if let Ok(realm) = store::RealmId::new(r.realm.as_str())
                && audit.store().get_realm(&realm).ok().flatten().is_some()
            {
                ev = ev.realm(&realm);
            } else if !r.realm.is_empty() {
                ev = ev.detail("realm_asked", r.realm.as_str());
            }
            if let Err(e) = audit.audit().record(ev, identity::now()) {
                tracing::error!(target: "keypost::security", error = %e, "auditing a signer refusal failed");
            }
        });
        keys::serve_signer(listener, Arc::new(svc.custody.signer()), on_refused)
            .context("signer socket")
    }
}

/// One pass of automatic rotation over every realm, then a signed checkpoint of every audit
/// chain that grew, and the expiry of records older than `retention` seconds. Failures are
/// logged loudly and retried on the next tick; they never stop the signer.
fn key_schedule_step(identity: &Arc<Identity>, retention: i64) {
    let now = identity::now();
    match identity.realms() {
        Ok(realms) => {
            for r in realms {
                match identity.custody().ensure(&r.id, now) {
                    Ok(created) => {
                        for kid in created {
                            tracing::info!(target: "keypost::security", realm = %r.id, %kid, "scheduled key created");
                            // The key history is in the audit log too.
                            let ev = audit::Event::success(audit::Operation::KeyCreated)
                                .realm(&r.id)
                                .actor("keypost-schedule")
                                .kid(kid.as_str());
                            if let Err(e) = identity.audit().record(ev, now) {
                                tracing::error!(error = %e, "auditing a scheduled key failed");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(target: "keypost::security", realm = %r.id, error = %e, "key rotation failed")
                    }
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "listing realms for key rotation failed"),
    }
    let custody = identity.custody();
    if let Err(e) = audit::chain::checkpoint(identity.store(), custody, now) {
        tracing::error!(target: "keypost::security", error = %e, "audit checkpoint failed");
    }
    match audit::chain::expire(
        identity.store(),
        custody,
        now.saturating_sub(retention),
        now,
    ) {
        Ok(made) => {
            for t in made {
                tracing::info!(chain = %t.chain, records = t.records, through = t.through_seq, "audit records expired");
            }
        }
        Err(e) => tracing::error!(target: "keypost::security", error = %e, "audit expiry failed"),
    }
}

/// Keeps a signer child running for `serve`: starts it, restarts it a second after it dies,
/// and stops it with `serve`.
pub(crate) struct Supervisor {
    child: Arc<Mutex<Option<Child>>>,
    stopping: Arc<AtomicBool>,
}

impl Supervisor {
    /// Starts the signer child and waits (up to 30 s) until it answers on `socket`.
    pub(crate) fn start(config: &Config, socket: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the keypost binary")?;
        let mut cmd = Command::new(exe);
        if let Some(path) = &config.path {
            cmd.arg("--config").arg(path);
        }
        cmd.arg("signer").arg("--socket").arg(socket).arg("--child");
        let child: Arc<Mutex<Option<Child>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let (slot, stop) = (child.clone(), stopping.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match cmd.spawn() {
                    Ok(c) => *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(c),
                    Err(e) => tracing::error!(error = %e, "starting the signer failed"),
                }
                // Wait for it to end, looking up now and then so `stop` can reach it.
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
                    match guard.as_mut().map(Child::try_wait) {
                        Some(Ok(None)) => continue,
                        Some(Ok(Some(status))) if !stop.load(Ordering::SeqCst) => {
                            tracing::error!(target: "keypost::security", %status, "the signer exited; restarting it");
                        }
                        Some(Err(e)) => tracing::error!(error = %e, "watching the signer failed"),
                        Some(Ok(Some(_))) | None => {}
                    }
                    *guard = None;
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let client = keys::RemoteSigner::new(socket);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client.ping() {
            if Instant::now() > deadline {
                bail!(
                    "the signer did not answer on {} within 30 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, stopping })
    }

    /// Stops the signer for good.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(c) = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
