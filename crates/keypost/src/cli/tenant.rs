//! `keypost tenant`: creating enterprise tenants (a realm each) and listing realms.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::output::{print_json, table};
use super::{JsonFlag, services};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCmd {
    /// Create a tenant: its own realm, issuer and signing keys.
    Create {
        /// Tenant slug (lowercase letters, digits, hyphens): the realm id.
        slug: String,
        /// A mail domain of the tenant; repeat for several.
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Display name (default: the slug).
        #[arg(long)]
        name: Option<String>,
        /// Access-token algorithm: EdDSA (default), ES256, RS256 or PS256.
        #[arg(long, default_value = "EdDSA")]
        token_alg: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List realms (the consumer realm and every tenant).
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
}

pub(super) fn run(config: Config, cmd: TenantCmd, now: i64) -> Result<()> {
    match cmd {
        TenantCmd::Create {
            slug,
            domains,
            name,
            token_alg,
            out,
        } => {
            let svc = services(config)?;
            let r = svc.identity.create_tenant(
                &slug,
                name.as_deref(),
                &domains,
                token_alg.parse()?,
                now,
            )?;
            if out.json {
                return print_json(&json!({"realm": r, "issuer": svc.identity.issuer(&r.id)}));
            }
            println!(
                "created tenant {} ({}), issuer {}",
                r.id,
                r.domains.join(", "),
                svc.identity.issuer(&r.id)
            );
            Ok(())
        }
        TenantCmd::List { out } => {
            let svc = services(config)?;
            let realms = svc.identity.realms()?;
            if out.json {
                return print_json(&realms);
            }
            table(
                &["REALM", "KIND", "NAME", "DOMAINS", "TOKEN ALG"],
                realms
                    .into_iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.kind.to_string(),
                            r.display_name,
                            r.domains.join(","),
                            r.access_token_alg,
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
    }
}
