//! `keypost sessions`: revoking sessions and tokens by account, tenant or client, and pruning
//! the issuance ledger.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use store::ClientId;

use super::output::print_json;
use super::{JsonFlag, realm, services};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum SessionsCmd {
    /// Revoke at once every session and unexpired token of an account, a whole tenant, or
    /// every token issued to one client: each refused from the next request on.
    Revoke {
        /// An account (email).
        #[arg(long, group = "scope")]
        user: Option<String>,
        /// A tenant (realm).
        #[arg(long, group = "scope")]
        tenant: Option<String>,
        /// A client, as REALM/CLIENT_ID.
        #[arg(long, group = "scope")]
        client: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Delete the issuance ledger's rows of tokens that expired more than
    /// `tokens.ledger_retention` ago and were minted longer ago than the longest token or
    /// session lifetime plus that (family revocations are kept). `serve` does this every few
    /// minutes by itself.
    Prune {
        #[command(flatten)]
        out: JsonFlag,
    },
}

pub(super) fn run(config: Config, cmd: SessionsCmd, now: i64) -> Result<()> {
    match cmd {
        SessionsCmd::Revoke {
            user,
            tenant,
            client,
            out,
        } => {
            let svc = services(config)?;
            let (scope, realm_of, what) = match (user, tenant, client) {
                (Some(email), None, None) => {
                    let a = svc.identity.user(&email)?;
                    (
                        store::RevokeScope::Account(a.id.clone()),
                        a.realm.clone(),
                        format!("account {}", a.email),
                    )
                }
                (None, Some(t), None) => {
                    let r = realm(&t)?;
                    (
                        store::RevokeScope::Realm(r.clone()),
                        r,
                        format!("tenant {t}"),
                    )
                }
                (None, None, Some(c)) => {
                    let (r, id) = c
                        .split_once('/')
                        .ok_or_else(|| anyhow::anyhow!("--client takes REALM/CLIENT_ID"))?;
                    let r = realm(r)?;
                    let id =
                        ClientId::new(id).with_context(|| format!("{id:?} is not a client id"))?;
                    if svc.store.get_client(&r, &id)?.is_none() {
                        bail!("no client {id} in {r}");
                    }
                    (
                        store::RevokeScope::Client(r.clone(), id),
                        r,
                        format!("client {c}"),
                    )
                }
                _ => bail!("give exactly one of --user, --tenant, --client"),
            };
            let (sessions, tokens) = svc.store.revoke_scope(&scope, now)?;
            svc.identity.audit().record(
                audit::Event::success(audit::Operation::SessionsRevoked)
                    .realm(&realm_of)
                    .actor("cli")
                    .target(what.clone())
                    .detail("sessions", sessions)
                    .detail("tokens", tokens),
                now,
            )?;
            if out.json {
                return print_json(
                    &json!({"revoked": what, "sessions": sessions, "tokens": tokens}),
                );
            }
            println!(
                "{what}: {sessions} sessions and {tokens} tokens revoked; refused from the next request on"
            );
            Ok(())
        }
        SessionsCmd::Prune { out } => {
            let svc = services(config)?;
            let pruned = svc
                .identity
                .prune_ledger(svc.config.ledger_retention, now)?;
            if out.json {
                return print_json(&json!({"ledger_rows_pruned": pruned}));
            }
            println!("{pruned} ledger rows of long-expired tokens deleted");
            Ok(())
        }
    }
}
