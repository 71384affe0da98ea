//! `keypost investigate`, and the blast-radius report it shares with `keys revoke`: what a key,
//! token, source address or client reached, from the audit log.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::output::{print_json, rfc3339, table};
use super::{JsonFlag, Services, parse_since, services};
use crate::config::Config;

#[derive(Debug, Args)]
#[group(id = "what", required = true, multiple = false)]
pub(crate) struct InvestigateArgs {
    /// A signing key id.
    #[arg(long, group = "what", allow_hyphen_values = true)]
    kid: Option<String>,
    /// A token id.
    #[arg(long, group = "what", allow_hyphen_values = true)]
    jti: Option<String>,
    /// A source address.
    #[arg(long, group = "what")]
    ip: Option<String>,
    /// A client id.
    #[arg(long, group = "what")]
    client: Option<String>,
    /// Only records at or after this time (RFC 3339, or a duration ago such as "24h").
    #[arg(long)]
    since: Option<String>,
    /// Also print the subject of each mail item read.
    #[arg(long)]
    subjects: bool,
    #[command(flatten)]
    out: JsonFlag,
}

pub(super) fn run(config: Config, args: InvestigateArgs) -> Result<()> {
    let svc = services(config)?;
    let (subject, what) = match (&args.kid, &args.jti, &args.ip, &args.client) {
        (Some(k), ..) => (
            audit::investigate::Subject::Kid(k.clone()),
            format!("key {k}"),
        ),
        (_, Some(j), ..) => (
            audit::investigate::Subject::Jti(j.clone()),
            format!("token {j}"),
        ),
        (_, _, Some(a), _) => (
            audit::investigate::Subject::Ip(a.clone()),
            format!("address {a}"),
        ),
        (_, _, _, Some(c)) => (
            audit::investigate::Subject::Client(c.clone()),
            format!("client {c}"),
        ),
        _ => bail!("give one of --kid, --jti, --ip, --client"),
    };
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let radius = audit::investigate::investigate(&*svc.store, &subject, since)?;
    print_blast_radius(&svc, &what, &radius, args.subjects, args.out.json)
}

pub(super) fn print_blast_radius(
    svc: &Services,
    what: &str,
    radius: &audit::investigate::BlastRadius,
    subjects: bool,
    json_out: bool,
) -> Result<()> {
    let subject_of = |item: &str| -> Option<String> {
        let id = store::EmailId::new(item).ok()?;
        svc.store.get_email(&id).ok().flatten().map(|e| e.subject)
    };
    if json_out {
        let mut v = serde_json::to_value(radius)?;
        if subjects && let Some(reached) = v.get_mut("reached").and_then(|r| r.as_array_mut()) {
            for r in reached {
                let items: Vec<String> = r["items_read"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| i.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                r["subjects"] = json!(
                    items
                        .iter()
                        .map(|i| json!({"item": i, "subject": subject_of(i)}))
                        .collect::<Vec<_>>()
                );
            }
        }
        return print_json(&v);
    }
    println!(
        "{what}: {} audit records; tenants: {}; {} tokens issued; {} refused attempts; {} accounts reached; {} mail items read",
        radius.records,
        if radius.tenants.is_empty() {
            "-".to_owned()
        } else {
            radius.tenants.join(", ")
        },
        radius.tokens_issued,
        radius.refused.len(),
        radius.reached.len(),
        radius.items_read,
    );
    if !radius.refused.is_empty() {
        println!("\nrefused:");
        table(
            &["TIME", "REALM", "REASON", "SUBJECT", "SOURCE", "RECORD"],
            radius
                .refused
                .iter()
                .map(|a| {
                    vec![
                        rfc3339(a.time),
                        a.realm.clone().unwrap_or_else(|| "-".into()),
                        a.reason.clone(),
                        a.sub.clone().unwrap_or_else(|| "-".into()),
                        a.source_ip.clone().unwrap_or_else(|| "-".into()),
                        a.record.to_string(),
                    ]
                })
                .collect(),
        );
    }
    if !radius.reached.is_empty() {
        println!("\nreached:");
        table(
            &[
                "REALM",
                "ACCOUNT",
                "ITEMS READ",
                "QUERIES",
                "CHANGES",
                "FIRST",
                "LAST",
                "SOURCES",
                "CLIENTS",
            ],
            radius
                .reached
                .iter()
                .map(|r| {
                    vec![
                        r.realm.clone().unwrap_or_else(|| "-".into()),
                        r.account.clone(),
                        r.items_read.len().to_string(),
                        r.queries.to_string(),
                        r.changes.to_string(),
                        rfc3339(r.first),
                        rfc3339(r.last),
                        r.sources.join(" "),
                        r.clients.join(" "),
                    ]
                })
                .collect(),
        );
        if subjects {
            for r in &radius.reached {
                for item in &r.items_read {
                    println!(
                        "  {} {item}: {}",
                        r.account,
                        subject_of(item).unwrap_or_else(|| "(gone)".into())
                    );
                }
            }
        }
    }
    Ok(())
}
