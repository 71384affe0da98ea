//! `keypost audit`: searching, exporting, verifying, checkpointing and expiring the audit log.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use store::{AuditQuery, RealmId};

use super::output::{print_json, rfc3339, table};
use super::{JsonFlag, parse_since, realm, services};
use crate::config::Config;

/// Which audit records: every flag narrows.
#[derive(Debug, Args)]
pub(crate) struct AuditFilter {
    /// Realm (tenant).
    #[arg(long, visible_alias = "tenant")]
    realm: Option<String>,
    /// Operation, e.g. TokenRejected, SignInFailed.
    #[arg(long)]
    operation: Option<String>,
    /// Actor (email, client id).
    #[arg(long)]
    user: Option<String>,
    /// Source address.
    #[arg(long)]
    ip: Option<String>,
    /// Client id.
    #[arg(long)]
    client: Option<String>,
    /// Token id.
    #[arg(long, allow_hyphen_values = true)]
    jti: Option<String>,
    /// Key id.
    #[arg(long, allow_hyphen_values = true)]
    kid: Option<String>,
    /// Only records at or after this time (RFC 3339, or a duration ago such as "1h").
    #[arg(long)]
    since: Option<String>,
    /// Only records before this time (RFC 3339, or a duration ago).
    #[arg(long)]
    until: Option<String>,
}

impl AuditFilter {
    fn query(&self) -> Result<AuditQuery> {
        Ok(AuditQuery {
            realm: self.realm.as_deref().map(realm).transpose()?,
            operation: self.operation.clone(),
            actor: self.user.clone(),
            source_ip: self.ip.clone(),
            client_id: self.client.clone(),
            jti: self.jti.clone(),
            kid: self.kid.clone(),
            since: self.since.as_deref().map(parse_since).transpose()?,
            until: self.until.as_deref().map(parse_since).transpose()?,
            ..Default::default()
        })
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Search the audit log (oldest first).
    Search {
        #[command(flatten)]
        filter: AuditFilter,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Stream the matching records, oldest first, for a SIEM or an archive: JSON Lines as
    /// stored (`jsonl`) or shaped as OCSF 1.1 events (`ocsf`), one per line.
    Export {
        #[command(flatten)]
        filter: AuditFilter,
        /// `jsonl` or `ocsf`.
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Check the audit log: recompute every record's link in its tenant's hash chain and check
    /// every signed checkpoint. Says where anything was edited, deleted, inserted or reordered,
    /// and exits non-zero if so.
    Verify {
        /// Only this realm's chain.
        #[arg(long)]
        realm: Option<String>,
        /// Also prove the log consistent with checkpoints published before: a file holding
        /// what `/realms/{realm}/audit-checkpoints` served (a page, or an array of its
        /// entries), or that URL itself (http://, every page is fetched). Repeatable.
        #[arg(long, value_name = "FILE|URL")]
        against: Vec<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Sign a checkpoint of every chain whose head moved since its last one (`serve` does this
    /// every minute). A chain that no longer extends the last checkpoint the signer signed
    /// (its record beside the key-encryption key) is refused, audited and alerted, and the
    /// command exits non-zero.
    Checkpoint,
    /// Expire records older than the retention (`audit.retention`, or --older-than): each
    /// chain's expired prefix is removed behind a tombstone signed with the audit key, from
    /// which the chain still verifies (`serve` does this every minute).
    Expire {
        /// Expire records older than this (default: `audit.retention`).
        #[arg(long)]
        older_than: Option<String>,
    },
}

pub(super) fn run(config: Config, cmd: AuditCmd, now: i64) -> Result<()> {
    match cmd {
        AuditCmd::Verify {
            realm: r,
            against,
            out,
        } => {
            let svc = services(config)?;
            let only = r.as_deref().map(realm).transpose()?;
            let mut published = Vec::new();
            for source in &against {
                published.extend(crate::published::read(source)?);
            }
            let heads = svc.config.signed_heads();
            let evidence = audit::chain::Evidence {
                signed_heads: Some(&heads),
                published: &published,
            };
            let reports = audit::chain::verify(
                &*svc.store,
                &svc.custody,
                only.as_ref().map(RealmId::as_str),
                &evidence,
            )?;
            let broken = reports.iter().filter(|c| !c.problems.is_empty()).count();
            if out.json {
                print_json(&reports)?;
            } else {
                for c in &reports {
                    let name = if c.chain.is_empty() {
                        "(provider)"
                    } else {
                        c.chain.as_str()
                    };
                    let checkpoint = c
                        .last_checkpoint
                        .map_or("no checkpoint yet".to_owned(), |s| {
                            format!("last checkpoint at {s}")
                        });
                    let verdict = if c.problems.is_empty() {
                        "intact"
                    } else {
                        "TAMPERED"
                    };
                    println!(
                        "{name}: {verdict}: {} records, positions 1..={}, {} checkpoints ({checkpoint})",
                        c.records, c.last_seq, c.checkpoints
                    );
                    for p in &c.problems {
                        println!("  {p}");
                    }
                }
            }
            if broken > 0 {
                anyhow::bail!("{broken} audit chain(s) failed verification");
            }
            Ok(())
        }
        AuditCmd::Expire { older_than } => {
            let svc = services(config)?;
            let age = match older_than {
                Some(d) => {
                    let d = humantime::parse_duration(&d).with_context(|| {
                        format!("--older-than {d:?}: expected a duration like 365d")
                    })?;
                    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
                }
                None => svc.config.audit_retention,
            };
            let made = audit::chain::expire(
                &*svc.store,
                &svc.custody,
                &svc.config.signed_heads(),
                now.saturating_sub(age),
                now,
            )?;
            for t in &made {
                let name = if t.chain.is_empty() {
                    "(provider)"
                } else {
                    t.chain.as_str()
                };
                println!(
                    "{name}: {} records expired through position {}, tombstone signed by {}",
                    t.records, t.through_seq, t.kid
                );
            }
            if made.is_empty() {
                println!("nothing older than the retention");
            }
            Ok(())
        }
        AuditCmd::Checkpoint => {
            let svc = services(config)?;
            let heads = svc.config.signed_heads();
            let pass = audit::chain::checkpoint(&*svc.store, &svc.custody, &heads, now)?;
            let shown = |chain: &str| {
                if chain.is_empty() {
                    "(provider)".to_owned()
                } else {
                    chain.to_owned()
                }
            };
            for c in &pass.made {
                println!(
                    "checkpoint {} number {} at position {} signed by {}",
                    shown(&c.chain),
                    c.number,
                    c.seq,
                    c.kid
                );
            }
            for r in &pass.refused {
                println!(
                    "REFUSED {}: {} ({}): run keypost audit verify",
                    shown(&r.chain),
                    r.problem,
                    r.detail
                );
            }
            if pass.made.is_empty() && pass.refused.is_empty() {
                println!("every chain already has a checkpoint at its head");
            }
            if !pass.refused.is_empty() {
                bail!(
                    "{} audit chain(s) no longer extend what the signer signed",
                    pass.refused.len()
                );
            }
            Ok(())
        }
        AuditCmd::Export { filter, format } => {
            let svc = services(config)?;
            let ocsf = match format.as_str() {
                "jsonl" => false,
                "ocsf" => true,
                other => bail!("--format must be jsonl or ocsf, not {other:?}"),
            };
            let mut q = filter.query()?;
            q.limit = Some(5_000);
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            loop {
                let page = svc.store.search_audit(&q)?;
                let Some(last) = page.last().map(|r| r.id) else {
                    break;
                };
                for r in &page {
                    let line = if ocsf {
                        serde_json::to_string(&audit::export::ocsf(r))?
                    } else {
                        serde_json::to_string(r)?
                    };
                    std::io::Write::write_all(&mut out, line.as_bytes())?;
                    std::io::Write::write_all(&mut out, b"\n")?;
                }
                q.after_id = Some(last);
            }
            std::io::Write::flush(&mut out)?;
            Ok(())
        }
        AuditCmd::Search { filter, limit, out } => {
            let svc = services(config)?;
            let q = AuditQuery {
                limit: Some(limit),
                ..filter.query()?
            };
            let records = svc.identity.audit().search(&q)?;
            if out.json {
                return print_json(&records);
            }
            table(
                &[
                    "ID",
                    "TIME",
                    "REALM",
                    "OPERATION",
                    "RESULT",
                    "ACTOR",
                    "SOURCE",
                    "DETAILS",
                ],
                records
                    .into_iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            rfc3339(r.time),
                            r.realm.map(|x| x.to_string()).unwrap_or_default(),
                            r.operation,
                            r.result,
                            r.actor.unwrap_or_default(),
                            r.source_ip.unwrap_or_default(),
                            r.details.to_string(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
    }
}
