//! `keypost mail`: importing existing mail into an account, and its storage quota.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::output::print_json;
use super::{JsonFlag, open_mail, services};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum MailCmd {
    /// Import existing mail into an account: an .eml file, a Maildir, an mbox file, or a
    /// directory of .eml files. Importing the same source again adds nothing.
    Import {
        /// The account's email address.
        email: String,
        /// What to import.
        path: PathBuf,
        /// Target mailbox, by role: inbox (default), archive, sent, drafts, junk, trash.
        #[arg(long, default_value = "inbox")]
        mailbox: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show an account's mail storage, or set its limit: a size ("2GiB", "500MB"),
    /// "unlimited", or "default" (the configured mail.quota).
    Quota {
        /// The account's email address.
        email: String,
        /// New limit; omit to only show.
        limit: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
}

pub(super) fn run(config: Config, cmd: MailCmd, now: i64) -> Result<()> {
    match cmd {
        MailCmd::Import {
            email,
            path,
            mailbox,
            out,
        } => {
            let svc = services(config)?;
            let account = svc.identity.user(&email)?;
            let mail = open_mail(&svc)?;
            let target = mail.mailbox_by_role(&account.id, &mailbox)?;
            let report = mail.import(&account.id, &path, &target.id, now)?;
            let source = report.source.map(|s| s.as_str()).unwrap_or("unknown");
            svc.identity.audit().record(
                audit::Event::success(audit::Operation::MailImported)
                    .realm(&account.realm)
                    .actor("cli")
                    .target(account.email.clone())
                    .detail("source", source)
                    .detail("mailbox", target.id.to_string())
                    .detail("imported", report.imported)
                    .detail("duplicates", report.duplicates)
                    .detail("failed", report.failed.len()),
                now,
            )?;
            if out.json {
                let failed: Vec<_> = report
                    .failed
                    .iter()
                    .map(|(what, why)| json!({"message": what, "error": why}))
                    .collect();
                return print_json(&json!({
                    "account": account.email, "mailbox": target.name, "source": source,
                    "imported": report.imported, "duplicates": report.duplicates, "failed": failed,
                }));
            }
            println!(
                "imported {} messages into {} of {} ({source}); {} already there, {} skipped",
                report.imported,
                target.name,
                account.email,
                report.duplicates,
                report.failed.len()
            );
            for (what, why) in &report.failed {
                eprintln!("skipped {what}: {why}");
            }
            Ok(())
        }
        MailCmd::Quota { email, limit, out } => {
            let svc = services(config)?;
            let account = svc.identity.user(&email)?;
            let mail = open_mail(&svc)?;
            if let Some(limit) = &limit {
                let setting = match limit.trim().to_ascii_lowercase().as_str() {
                    "default" => store::QuotaSetting::Default,
                    _ => match crate::config::size("limit", limit)? {
                        None => store::QuotaSetting::Unlimited,
                        Some(n) => store::QuotaSetting::Limit(n),
                    },
                };
                mail.set_quota(&account.id, setting)?;
                svc.identity.audit().record(
                    audit::Event::success(audit::Operation::SettingsChanged)
                        .realm(&account.realm)
                        .actor("cli")
                        .target(account.email.clone())
                        .detail("quota", limit.clone()),
                    now,
                )?;
            }
            let q = mail.quota(&account.id)?;
            if out.json {
                return print_json(
                    &json!({"account": account.email, "used": q.used, "limit": q.limit}),
                );
            }
            let limit = q
                .limit
                .map_or("unlimited".to_owned(), |l| format!("{l} bytes"));
            println!("{}: {} bytes used of {limit}", account.email, q.used);
            Ok(())
        }
    }
}
