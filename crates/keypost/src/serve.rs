//! `keypost serve`: opens the data directory, bootstraps an empty installation, starts the
//! signer process (which holds the keys and keeps them on schedule), and serves HTTP until
//! interrupted. This process holds no private key and no key-encryption key.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::Services;
use crate::config::Config;

/// How often the detector looks at new audit records: alerts land within about this long
/// (plus delivery) of the event, and each idle pass costs one indexed read.
const DETECT_INTERVAL: Duration = Duration::from_millis(200);
/// How often the refused-token windows that ended are summarised in the audit log.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);
/// How often the ledger is pruned of long-expired tokens (the first pass at start).
const PRUNE_INTERVAL: Duration = Duration::from_secs(300);
/// How often expired uploads are forgotten (and their blobs removed if nothing else is stored
/// as them): an upload outlives its time to live by at most this.
const UPLOAD_EXPIRY_INTERVAL: Duration = Duration::from_secs(600);
/// How long a stopping server waits for background passes once every request is answered.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn run(config: Config) -> Result<()> {
    // No key lives here, but tokens, sessions and mail pass through: no core dumps either.
    hardening::no_core_dumps().context("making the process non-dumpable")?;
    let socket = crate::signer::default_socket(&config);
    let remote = match &config.signer_address {
        Some(address) => {
            let files = config
                .signer_tls
                .as_ref()
                .context("signer.address needs [signer] certificates")?;
            Arc::new(keys::RemoteSigner::tls(address, files)?)
        }
        None => Arc::new(keys::RemoteSigner::new(&socket)),
    };
    let svc = if cfg!(feature = "bench-in-process-signer") {
        // Only in a binary built for `bench/mint.sh`'s comparison: keys in this process.
        tracing::warn!(target: "keypost::security", "BENCHMARK BUILD: private keys are held in the web-facing process");
        crate::cli::services(config.clone())?
    } else {
        crate::cli::web_services(config.clone(), remote.clone())?
    };
    let mail = crate::cli::open_mail(&svc)?;
    let expirer = mail.clone();
    let detector = Arc::new(
        detect::Detector::new(
            svc.store.clone(),
            mail.clone(),
            &svc.config.identity.consumer_domain,
        )
        .with_mail_cap(svc.config.alert_mail_per_hour),
    );
    // JMAP gets its own gate (and verified-token cache) over the same store and keys, and
    // shares the ledger cache the token endpoint fills.
    let gate = Arc::new(
        tokens::Gate::new(
            svc.store.clone(),
            svc.custody.clone(),
            &svc.config.public_url,
            svc.config.identity.access_ttl,
            svc.config.identity.leeway,
        )
        .with_ledger_cache(svc.identity.ledger_cache()),
    );
    let jmap_gate = gate.clone();
    let jmap_service = Arc::new(
        jmap::Jmap::new(gate, mail, svc.store.clone(), &svc.config.public_url)
            .with_trusted_proxies(svc.config.identity.trusted_proxies.clone()),
    );
    let Services {
        identity,
        config,
        store,
        ..
    } = svc;
    if let Some((email, password)) = identity.bootstrap(identity::now())? {
        // Printed once, to stdout, for the operator; never logged.
        println!("provider admin: {email}");
        println!("one-time password: {}", password.as_str());
        println!(
            "(store it now: it is not shown again; change it with `keypost user set-password {email}`)"
        );
    }
    // After the bootstrap, so the signer's first pass creates the new realm's keys.
    let signer = match &config.signer_address {
        None if cfg!(feature = "bench-in-process-signer") => None,
        None => Some(crate::signer::Supervisor::start(&config, &socket)?),
        Some(address) => {
            // Someone else runs it; minting answers 503 until it is reachable.
            if !remote.ping() {
                tracing::error!(target: "keypost::security", %address, "the signer does not answer (yet); minting fails until it does");
            }
            None
        }
    };
    let at_stop = (identity.clone(), jmap_gate.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.http).await.with_context(|| format!("binding {}", config.http))?;
        tracing::info!(address = %config.http, public_url = %config.public_url, "keypost listening");
        // Off the request path; a failed detection pass is retried from the same cursor.
        every(DETECT_INTERVAL, "detection", move || {
            if let Err(e) = detector.run_once(identity::now()) {
                tracing::error!(target: "keypost::security", error = %e, "detection pass failed");
            }
        });
        // Garbage tokens past a source's budget are counted, not written one by one; each
        // source's count is written as one record when its window ends.
        let summariser = identity.clone();
        every(SUMMARY_INTERVAL, "refused-token summaries", move || {
            let now = identity::now();
            let flushed = summariser
                .flush_refusal_summaries(now)
                .and_then(|_| jmap_gate.flush_refusal_summaries(now));
            if let Err(e) = flushed {
                tracing::error!(error = %e, "writing refused-token summaries failed");
            }
        });
        let pruner = identity.clone();
        let retention = config.ledger_retention;
        every(PRUNE_INTERVAL, "ledger pruning", move || {
            match pruner.prune_ledger(retention, identity::now()) {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "pruned the ledger of long-expired tokens"),
                Err(e) => tracing::error!(error = %e, "pruning the ledger failed"),
            }
        });
        every(UPLOAD_EXPIRY_INTERVAL, "upload expiry", move || {
            match expirer.expire_uploads(identity::now()) {
                Ok((0, _)) => {}
                Ok((uploads, files)) => tracing::info!(uploads, files, "expired uploads"),
                Err(e) => tracing::error!(error = %e, "expiring uploads failed"),
            }
        });
        if let Some(target) = config.syslog.clone() {
            let host = std::env::var("HOSTNAME").unwrap_or_default();
            tokio::spawn(crate::forward::syslog(store.clone(), target, host));
        }
        if let Some((uri, secret)) = config.webhook.clone() {
            tokio::spawn(crate::forward::webhook(store.clone(), uri, secret));
        }
        let app = identity::router(identity).merge(jmap::router(jmap_service));
        let trusted = config.identity.trusted_proxies.clone();
        crate::http_edge::serve(listener, app, config.http_limits.clone(), trusted, shutdown()).await;
        anyhow::Ok(())
    });
    // Every request has been answered (or its connection closed at the edge's drain bound,
    // `listen.request_timeout`). Background passes (detection, ledger pruning) are not
    // waited for beyond this: each works in transactions, so one cut short rolls back and is
    // taken up by the next start (a pruning backlog can take minutes).
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    // What the refused-token budgets counted is written before the process goes.
    let (identity, jmap_gate) = at_stop;
    let now = identity::now();
    let flushed = identity
        .flush_all_refusal_summaries(now)
        .and_then(|_| jmap_gate.flush_all_refusal_summaries(now));
    if let Err(e) = flushed {
        tracing::error!(error = %e, "writing refused-token summaries at shutdown failed");
    }
    if let Some(signer) = signer {
        signer.stop();
    }
    served
}

/// Runs `pass` on a blocking thread every `period`, the first at once, for as long as the
/// server runs; a pass still running when a tick comes delays it.
fn every(period: Duration, what: &'static str, pass: impl Fn() + Send + Sync + 'static) {
    let pass = Arc::new(pass);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let p = pass.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || p()).await {
                // Not the error's text: a panic's message may quote request data.
                tracing::error!(panicked = e.is_panic(), "the {what} task failed");
            }
        }
    });
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
