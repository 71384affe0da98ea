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

/// How often the signer looks for new realms to make keys for.
const REALM_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Where the signer listens unless told otherwise.
pub(crate) fn default_socket(config: &Config) -> PathBuf {
    config.data_dir.join("signer").join("signer.sock")
}

/// Where the signer listens.
pub(crate) enum Listen {
    /// A Unix socket; `child`: started by `serve`, so it ends when `serve` ends.
    Unix { socket: PathBuf, child: bool },
    /// TCP with mutually authenticated TLS (`[signer]` certificates), for a signer on
    /// another host or under another user.
    Tls(String),
}

/// Runs the signer until its listener fails.
pub(crate) fn run(svc: Services, listen: Listen) -> Result<()> {
    hardening::no_core_dumps().context("making the signer non-dumpable")?;
    if let Listen::Unix { child: true, .. } = listen {
        hardening::die_with_parent().context("tying the signer to serve")?;
    }
    if let Err(e) = hardening::lock_all_memory() {
        tracing::warn!(target: "keypost::security", error = %e,
            "signer memory not locked (needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK): keys could reach swap");
    }
    // Bind first, so a bad address or certificate fails before any work starts.
    enum Bound {
        Unix(std::os::unix::net::UnixListener),
        Tls(std::net::TcpListener, Arc<rustls::ServerConfig>),
    }
    let bound = match &listen {
        Listen::Unix { socket, .. } => Bound::Unix(bind_private_socket(socket)?),
        Listen::Tls(address) => {
            let files = svc
                .config
                .signer_tls
                .as_ref()
                .context("listening over TLS needs [signer] ca_file, cert_file and key_file")?;
            let config = files.server_config()?;
            let listener = std::net::TcpListener::bind(address)
                .with_context(|| format!("binding {address}"))?;
            Bound::Tls(listener, config)
        }
    };
    let retention = svc.config.audit_retention;
    let heads = svc.config.signed_heads();
    let identity = svc.identity.clone();
    let realm_ids =
        move |identity: &Identity, before: &[String]| match identity.store().list_realms() {
            Ok(list) => list.into_iter().map(|r| r.id.to_string()).collect(),
            Err(e) => {
                tracing::error!(error = %e, "listing realms failed");
                before.to_vec()
            }
        };
    // The first pass before answering anyone, so every existing realm can sign at once.
    let mut realms: Vec<String> = realm_ids(&identity, &[]);
    key_schedule_step(&identity, &heads, retention);
    std::thread::spawn(move || {
        // A full pass every interval, and at once when a realm appears (`serve`'s first start,
        // a tenant created elsewhere), so a new realm can sign within a second.
        let mut last_pass = Instant::now();
        loop {
            store::clock::sleep(REALM_WATCH_INTERVAL);
            let now_realms = realm_ids(&identity, &realms);
            if now_realms != realms || last_pass.elapsed() >= KEY_SCHEDULE_INTERVAL {
                key_schedule_step(&identity, &heads, retention);
                realms = now_realms;
                last_pass = Instant::now();
            }
        }
    });
    // Only the realm's own tokens are signed: its issuer and tenant, Keypost's audiences, the
    // realm's lifetimes (a compromised web process can ask, but not for anything else).
    let policy = tokens::SigningPolicy {
        access_ttl: svc.config.identity.access_ttl,
        id_ttl: svc.config.identity.id_ttl,
        leeway: svc.config.identity.leeway,
    };
    let service = keys::SignerService {
        signer: Arc::new(svc.custody.signer()),
        check: tokens::payload_check(&svc.config.public_url, policy),
        on_refused: audit_refusals(svc.identity.clone()),
    };
    match bound {
        Bound::Unix(listener) => {
            tracing::info!(socket = ?listener.local_addr().ok(), "signer ready");
            keys::serve_signer(listener, service).context("signer socket")
        }
        Bound::Tls(listener, config) => {
            tracing::info!(address = ?listener.local_addr().ok(), "signer ready (mutual TLS)");
            keys::serve_signer_tls(listener, config, service).context("signer listener")
        }
    }
}

/// A Unix socket, mode 0600, in a directory of the signer's own (0700).
fn bind_private_socket(socket: &Path) -> Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = socket
        .parent()
        .context("the socket path has no directory")?;
    // Created 0700, or refused if anyone else could reach into it (never chmod a directory
    // someone else owns, like /tmp).
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
    Ok(listener)
}

/// Every refused signing request (and refused TLS peer) becomes a `SigningRefused` record.
fn audit_refusals(identity: Arc<Identity>) -> keys::RefusalHook {
    Arc::new(move |r: &keys::Refusal| {
        tracing::warn!(target: "keypost::security", op = r.op, realm = %r.realm, purpose = %r.purpose, reason = r.reason, "signing request refused");
        let mut ev = audit::Event::failure(audit::Operation::SigningRefused)
            .detail("reason", r.reason)
            .detail("op", r.op)
            .detail("purpose", r.purpose.as_str())
            .detail("alg", r.alg.as_str());
        // The tenant's own chain when the realm exists; the provider's otherwise.
        if let Ok(realm) = store::RealmId::new(r.realm.as_str())
            && identity.store().get_realm(&realm).ok().flatten().is_some()
        {
            ev = ev.realm(&realm);
        } else if !r.realm.is_empty() {
            ev = ev.detail("realm_asked", r.realm.as_str());
        }
        if let Err(e) = identity.audit().record(ev, identity::now()) {
            tracing::error!(target: "keypost::security", error = %e, "auditing a signer refusal failed");
        }
    })
}

/// One pass of automatic rotation over every realm, then a signed checkpoint of every audit
/// chain that grew, and the expiry of records older than `retention` seconds. Failures are
/// logged loudly and retried on the next tick; they never stop the signer.
fn key_schedule_step(
    identity: &Arc<Identity>,
    heads: &audit::signed_heads::SignedHeads,
    retention: i64,
) {
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
    if let Err(e) = identity.custody().purge_revoked_hsm_keys() {
        tracing::error!(target: "keypost::security", error = %e, "destroying revoked HSM keys failed");
    }
    let custody = identity.custody();
    // Refused chains are logged and audited by the pass itself.
    if let Err(e) = audit::chain::checkpoint(identity.store(), custody, heads, now) {
        tracing::error!(target: "keypost::security", error = %e, "audit checkpoint failed");
    }
    match audit::chain::expire(
        identity.store(),
        custody,
        heads,
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
        // The very binary this process runs, even after an upgrade replaced the file: a signer
        // restarted later must speak this process's protocol, which carries no version.
        let proc_exe = Path::new("/proc/self/exe");
        let mut cmd = if proc_exe.exists() {
            let mut cmd = Command::new(proc_exe);
            std::os::unix::process::CommandExt::arg0(&mut cmd, &exe);
            cmd
        } else {
            Command::new(&exe)
        };
        // mimalloc reserves a gigabyte of address space up front, and the signer mlockall()s:
        // RLIMIT_MEMLOCK counts reserved space too. A small reserve keeps the signer's
        // address space near what glibc's allocator gave it.
        if std::env::var_os("MIMALLOC_ARENA_RESERVE").is_none() {
            cmd.env("MIMALLOC_ARENA_RESERVE", "64MiB");
        }
        if let Some(path) = &config.path {
            cmd.arg("--config").arg(path);
        }
        cmd.arg("signer").arg("--socket").arg(socket).arg("--child");
        // A KEK given in the environment goes to the signer alone (which takes it out of its
        // own environment at start, as this process did).
        if let Some(kek) = crate::cli::kek_from_env() {
            cmd.env("KEYPOST_KEK", kek.as_str());
        }
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
                    store::clock::sleep(Duration::from_millis(200));
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
                store::clock::sleep(Duration::from_secs(1));
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
            store::clock::sleep(Duration::from_millis(50));
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
