//! The command line: one enum per noun, one variant per verb. Each verb opens the services it
//! needs, calls the library, and prints a table or (with `--json`) JSON.
//!
//! This module holds the top-level [`Command`], [`run`] (which hands each noun to its own
//! module) and the wiring every verb shares ([`Services`], [`services`], [`web_services`]); each
//! noun's module holds its subcommand enum and the verbs' handler.

use std::path::PathBuf;
use std::sync::Arc;

use ::keys::{Custody, Kek};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use identity::Identity;
use store::{RealmId, Store};
use zeroize::Zeroizing;

use crate::config::Config;

mod alerts;
mod audit;
mod client;
mod investigate;
mod keys;
mod mail;
mod output;
mod sessions;
mod tenant;
mod user;

pub(crate) use self::alerts::AlertsCmd;
pub(crate) use self::audit::AuditCmd;
pub(crate) use self::client::ClientCmd;
pub(crate) use self::investigate::InvestigateArgs;
pub(crate) use self::keys::KeysCmd;
pub(crate) use self::mail::MailCmd;
pub(crate) use self::sessions::SessionsCmd;
pub(crate) use self::tenant::TenantCmd;
pub(crate) use self::user::UserCmd;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run Keypost (HTTP now; SMTP and IMAP as they land) on the configured addresses. The
    /// private keys live in a signer child process that `serve` starts and restarts.
    Serve,
    /// Run the signer alone: the only process that unseals private keys. It signs over a Unix
    /// socket (mode 0600, in a 0700 directory), keeps every realm's keys on schedule and signs
    /// the audit checkpoints. `serve` starts one itself; run this only to place it elsewhere.
    ///
    /// With `[signer] address` (or `--listen`) it listens on TCP with mutually authenticated
    /// TLS instead, and `serve` processes configured with the same address sign through it.
    Signer {
        /// The socket to listen on (default: {data_dir}/signer/signer.sock).
        #[arg(long, conflicts_with = "listen")]
        socket: Option<PathBuf>,
        /// Listen on HOST:PORT with mutual TLS (`[signer]` ca_file, cert_file, key_file)
        /// instead of a Unix socket; default `[signer] address` when that is set.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// Started by `serve`: end when it ends.
        #[arg(long, hide = true)]
        child: bool,
    },
    /// Enterprise tenants (one realm each).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Accounts in any realm.
    #[command(subcommand)]
    User(UserCmd),
    /// OAuth clients of a realm.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Signing keys: list, rotate, revoke, import.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Mail in accounts.
    #[command(subcommand)]
    Mail(MailCmd),
    /// Sign-in sessions and the tokens issued in them.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Alerts raised by the detection rules, and the rules' per-tenant settings.
    #[command(subcommand)]
    Alerts(AlertsCmd),
    /// The blast radius of a key, token, source address or client, from the audit log: tenants,
    /// accounts, mail items read (and when, from where), refused attempts.
    Investigate(InvestigateArgs),
    /// Print the effective configuration (file, then environment) as TOML.
    Config,
}

#[derive(Debug, Args)]
pub(crate) struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What a verb needs: the identity service over the opened data directory.
pub(crate) struct Services {
    pub(crate) identity: Arc<Identity>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) custody: Arc<Custody>,
    pub(crate) config: Config,
}

fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store = store::StoreConfig::in_data_dir(&config.data_dir);
    store::open(&store).with_context(|| format!("opening the store {store}"))
}

pub(crate) fn open_mail(svc: &Services) -> Result<::mail::Mail> {
    let blobs = Arc::new(store::FsBlobStore::open(
        &svc.config.data_dir.join("blobs"),
    )?);
    Ok(::mail::Mail::new(svc.store.clone(), blobs)
        .with_default_quota(svc.config.mail_quota)
        .with_upload_policy(svc.config.uploads))
}

/// `KEYPOST_KEK`, taken out of the environment at start ([`take_kek_from_env`]).
static KEK_FROM_ENV: std::sync::OnceLock<Option<Zeroizing<String>>> = std::sync::OnceLock::new();

/// Takes `KEYPOST_KEK` out of this process's environment (only `main` calls it, first).
pub(crate) fn take_kek_from_env() -> Result<()> {
    let value = hardening::take_env_var("KEYPOST_KEK")
        .context("taking KEYPOST_KEK out of the environment")?
        .map(Zeroizing::new);
    let _ = KEK_FROM_ENV.set(value);
    Ok(())
}

/// The key-encryption key given in `KEYPOST_KEK`, if it was: for the signer child alone.
pub(crate) fn kek_from_env() -> Option<&'static Zeroizing<String>> {
    KEK_FROM_ENV.get().and_then(Option::as_ref)
}

fn load_kek(config: &Config) -> Result<Kek> {
    match kek_from_env() {
        Some(v) => Ok(Kek::from_base64(v)?),
        None => Ok(Kek::load_or_create(&config.kek_file)?),
    }
}

/// What an operator's verb (and the signer process) gets: custody with the key-encryption key
/// and an in-process signer.
pub(crate) fn services(config: Config) -> Result<Services> {
    let store = open_store(&config)?;
    let kek = Arc::new(load_kek(&config)?);
    let mut custody = Custody::new(store.clone(), kek, config.key_policy);
    if let Some(hsm) = &config.hsm {
        custody = custody.with_hsm(Arc::new(
            ::keys::Hsm::open(&hsm.to_config())
                .context("opening the HSM ([hsm] in the configuration)")?,
        ));
    }
    let custody = Arc::new(custody);
    let signer: Arc<dyn ::keys::SignService> = Arc::new(custody.signer());
    wire(store, custody, signer, config)
}

/// What the web-facing `serve` gets: public keys only, and signing through the signer process
/// (`signer`). No private key and no key-encryption key is ever in this process.
pub(crate) fn web_services(config: Config, signer: Arc<::keys::RemoteSigner>) -> Result<Services> {
    let store = open_store(&config)?;
    let custody = Arc::new(Custody::public(store.clone(), config.key_policy));
    wire(store, custody, signer, config)
}

fn wire(
    store: Arc<dyn Store>,
    custody: Arc<Custody>,
    signer: Arc<dyn ::keys::SignService>,
    config: Config,
) -> Result<Services> {
    let identity = Arc::new(Identity::new(
        store.clone(),
        custody.clone(),
        signer,
        config.identity.clone(),
    ));
    identity.ensure_consumers(identity::now())?;
    Ok(Services {
        identity,
        store,
        custody,
        config,
    })
}

fn realm(s: &str) -> Result<RealmId> {
    RealmId::new(s).with_context(|| format!("{s:?} is not a realm id"))
}

fn parse_since(s: &str) -> Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64);
    }
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{s:?}: expected an RFC 3339 time or a duration like 1h"))?;
    Ok(identity::now() - d.as_secs() as i64)
}

pub(crate) fn run(cmd: Command, config: Config) -> Result<()> {
    let now = identity::now();
    match cmd {
        Command::Serve => crate::serve::run(config),
        Command::Signer {
            socket,
            listen,
            child,
        } => {
            use crate::signer::Listen;
            let listen = match (socket, listen.or(config.signer_address.clone())) {
                (Some(socket), _) => Listen::Unix { socket, child },
                (None, Some(address)) if !child => Listen::Tls(address),
                (None, _) => Listen::Unix {
                    socket: crate::signer::default_socket(&config),
                    child,
                },
            };
            crate::signer::run(services(config)?, listen)
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&config.file)?);
            Ok(())
        }
        Command::Tenant(cmd) => tenant::run(config, cmd, now),
        Command::User(cmd) => user::run(config, cmd, now),
        Command::Client(cmd) => client::run(config, cmd, now),
        Command::Keys(cmd) => keys::run(config, cmd, now),
        Command::Mail(cmd) => mail::run(config, cmd, now),
        Command::Alerts(cmd) => alerts::run(config, cmd, now),
        Command::Sessions(cmd) => sessions::run(config, cmd, now),
        Command::Investigate(args) => investigate::run(config, args),
        Command::Audit(cmd) => audit::run(config, cmd, now),
    }
}
