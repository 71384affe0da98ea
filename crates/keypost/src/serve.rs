//! `keypost serve`: opens the data directory, bootstraps an empty installation, keeps every
//! realm's keys on schedule, and serves HTTP until interrupted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use identity::Identity;

use crate::cli::Services;

/// How often the key schedule is checked. Keys are published a day ahead, so a minute is
/// plenty; it also bounds how long a stalled rotation could go unnoticed.
const KEY_SCHEDULE_INTERVAL: Duration = Duration::from_secs(60);

/// How often the detector looks at new audit records: alerts land within about this long
/// (plus delivery) of the event, and each idle pass costs one indexed read.
const DETECT_INTERVAL: Duration = Duration::from_millis(200);

pub(crate) fn run(svc: Services) -> Result<()> {
    // This process holds private keys (until the signer is a process of its own): it must
    // never leave them in a core dump. Refusing to run unhardened is the safe failure.
    hardening::no_core_dumps().context("making the process non-dumpable")?;
    let mail = crate::cli::open_mail(&svc)?;
    let detector = Arc::new(detect::Detector::new(
        svc.store.clone(),
        mail.clone(),
        &svc.config.identity.consumer_domain,
    ));
    // JMAP gets its own gate (and verified-token cache) over the same store and keys.
    let gate = Arc::new(tokens::Gate::new(
        svc.store.clone(),
        svc.custody.clone(),
        &svc.config.public_url,
        svc.config.identity.access_ttl,
        svc.config.identity.leeway,
    ));
    let jmap_service = Arc::new(jmap::Jmap::new(
        gate,
        mail,
        svc.store.clone(),
        &svc.config.public_url,
    ));
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
    let retention = config.audit_retention;
    key_schedule_step(&identity, retention);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.http).await.with_context(|| format!("binding {}", config.http))?;
        tracing::info!(address = %config.http, public_url = %config.public_url, "keypost listening");
        let schedule = identity.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEY_SCHEDULE_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let id = schedule.clone();
                let _ = tokio::task::spawn_blocking(move || key_schedule_step(&id, retention)).await;
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DETECT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let d = detector.clone();
                // Off the request path; a failed pass is retried from the same cursor.
                match tokio::task::spawn_blocking(move || d.run_once(identity::now())).await {
                    Ok(Err(e)) => tracing::error!(target: "keypost::security", error = %e, "detection pass failed"),
                    Err(e) => tracing::error!(error = %e, "detection task panicked"),
                    Ok(Ok(_)) => {}
                }
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
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown())
            .await
            .context("HTTP server failed")
    })
}

/// One pass of automatic rotation over every realm, then a signed checkpoint of every audit
/// chain that grew, and the expiry of records older than `retention` seconds. Failures are logged loudly and retried on the next tick; they never stop
/// the server.
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
    let signer = identity.custody().signer();
    if let Err(e) = audit::chain::checkpoint(identity.store(), &signer, now) {
        tracing::error!(target: "keypost::security", error = %e, "audit checkpoint failed");
    }
    match audit::chain::expire(
        identity.store(),
        &signer,
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
