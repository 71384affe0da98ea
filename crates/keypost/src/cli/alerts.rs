//! `keypost alerts`: the alerts the detection rules raise, and the rules' per-tenant settings.

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::json;
use store::AuditQuery;

use super::output::{print_json, rfc3339, table};
use super::{JsonFlag, open_mail, realm, services};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCmd {
    /// List alerts, newest first.
    List {
        /// Only this realm's.
        #[arg(long)]
        realm: Option<String>,
        /// Only in this status: open, acknowledged or resolved.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show one alert with its evidence.
    Show {
        /// Alert id.
        id: i64,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Acknowledge an alert (someone is on it).
    Ack {
        /// Alert id.
        id: i64,
    },
    /// Resolve an alert; a repeat after this raises a new one.
    Resolve {
        /// Alert id.
        id: i64,
    },
    /// The detection rules, what each catches, and a realm's settings.
    Rules {
        /// Show this realm's settings.
        #[arg(long)]
        realm: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Change a rule for a realm: turn it on or off, or set its threshold.
    SetRule {
        /// Realm (tenant slug or `consumers`).
        realm: String,
        /// Rule id (see `keypost alerts rules`).
        rule: String,
        /// Turn the rule off for this realm.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Turn the rule (back) on.
        #[arg(long)]
        enable: bool,
        /// The rule's threshold (accounts, addresses or items, as the rule says).
        #[arg(long)]
        threshold: Option<u64>,
    },
    /// Run the detection rules once over the audit records not yet evaluated (`serve` does
    /// this continuously).
    Scan,
}

pub(super) fn run(config: Config, cmd: AlertsCmd, now: i64) -> Result<()> {
    let svc = services(config)?;
    let status_change = |id: i64, status: store::AlertStatus| -> Result<()> {
        let Some(a) = svc.store.get_alert(id)? else {
            bail!("no alert {id}");
        };
        svc.store.set_alert_status(id, status, "cli", now)?;
        let mut ev = audit::Event::success(audit::Operation::AlertUpdated)
            .actor("cli")
            .target(id.to_string())
            .detail("status", status.as_str());
        if let Some(r) = &a.realm {
            ev = ev.realm(r);
        }
        svc.identity.audit().record(ev, now)?;
        println!("alert {id} {status}");
        Ok(())
    };
    match cmd {
        AlertsCmd::List {
            realm: r,
            status,
            limit,
            out,
        } => {
            let realm = r.as_deref().map(realm).transpose()?;
            let status = status
                .as_deref()
                .map(str::parse::<store::AlertStatus>)
                .transpose()
                .map_err(|_| anyhow::anyhow!("--status must be open, acknowledged or resolved"))?;
            let list = svc.store.list_alerts(realm.as_ref(), status, limit)?;
            if out.json {
                return print_json(&list);
            }
            table(
                &[
                    "ID",
                    "SEVERITY",
                    "STATUS",
                    "REALM",
                    "RULE",
                    "COUNT",
                    "LAST SEEN",
                    "TITLE",
                ],
                list.iter()
                    .map(|a| {
                        vec![
                            a.id.to_string(),
                            a.severity.to_string(),
                            a.status.to_string(),
                            a.realm.as_ref().map_or("-".into(), |r| r.to_string()),
                            a.rule.clone(),
                            a.count.to_string(),
                            rfc3339(a.last_seen),
                            a.title.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        AlertsCmd::Show { id, out } => {
            let Some(a) = svc.store.get_alert(id)? else {
                bail!("no alert {id}");
            };
            if out.json {
                return print_json(&a);
            }
            println!("alert {}: {} ({}, {})", a.id, a.title, a.severity, a.status);
            println!(
                "rule: {}   realm: {}",
                a.rule,
                a.realm.as_ref().map_or("-".into(), |r| r.to_string())
            );
            println!(
                "seen {} times, first {}, last {}",
                a.count,
                rfc3339(a.first_seen),
                rfc3339(a.last_seen)
            );
            println!("evidence (audit records): {:?}", a.evidence);
            println!("details: {}", a.details);
            Ok(())
        }
        AlertsCmd::Ack { id } => status_change(id, store::AlertStatus::Acknowledged),
        AlertsCmd::Resolve { id } => status_change(id, store::AlertStatus::Resolved),
        AlertsCmd::Rules { realm: r, out } => {
            let realm = r.as_deref().map(realm).transpose()?;
            let mut rows = Vec::new();
            for (rule, what) in detect::RULES {
                let setting = match &realm {
                    Some(r) => svc.store.rule_setting(r, rule)?,
                    None => None,
                };
                let (enabled, threshold) = setting.unwrap_or((true, None));
                rows.push(json!({"rule": rule, "enabled": enabled, "threshold": threshold, "catches": what}));
            }
            if out.json {
                return print_json(&rows);
            }
            for r in &rows {
                let threshold = r["threshold"]
                    .as_u64()
                    .map_or("default".into(), |t| t.to_string());
                println!(
                    "{} ({}, threshold {threshold})",
                    r["rule"].as_str().unwrap_or(""),
                    if r["enabled"] == true { "on" } else { "off" }
                );
                println!("    {}", r["catches"].as_str().unwrap_or(""));
            }
            Ok(())
        }
        AlertsCmd::SetRule {
            realm: r,
            rule,
            disable,
            enable: _,
            threshold,
        } => {
            let r = realm(&r)?;
            if !detect::RULES.iter().any(|(id, _)| *id == rule) {
                bail!("no rule {rule:?} (see `keypost alerts rules`)");
            }
            let current = svc.store.rule_setting(&r, &rule)?;
            let threshold = threshold.or(current.and_then(|(_, t)| t));
            svc.store.set_rule_setting(&r, &rule, !disable, threshold)?;
            svc.identity.audit().record(
                audit::Event::success(audit::Operation::SettingsChanged)
                    .realm(&r)
                    .actor("cli")
                    .target(rule.clone())
                    .detail("enabled", !disable)
                    .detail("threshold", threshold),
                now,
            )?;
            println!("{rule} in {r}: {}", if disable { "off" } else { "on" });
            Ok(())
        }
        AlertsCmd::Scan => {
            let mail = open_mail(&svc)?;
            let detector = detect::Detector::new(
                svc.store.clone(),
                mail,
                &svc.config.identity.consumer_domain,
            )
            .with_mail_cap(svc.config.alert_mail_per_hour);
            let mut raised = Vec::new();
            loop {
                let pass = detector.run_once(now)?;
                if pass.is_empty()
                    && svc
                        .store
                        .search_audit(&AuditQuery {
                            after_id: Some(svc.store.cursor(detect::CURSOR)?),
                            limit: Some(1),
                            ..Default::default()
                        })?
                        .is_empty()
                {
                    break;
                }
                raised.extend(pass);
            }
            let new = raised.iter().filter(|r| r.new).count();
            println!("{new} new alerts, {} repeats counted", raised.len() - new);
            Ok(())
        }
    }
}
