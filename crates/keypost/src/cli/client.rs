//! `keypost client`: registering and listing the OAuth clients of a realm.

use anyhow::{Context, Result};
use clap::Subcommand;
use identity::NewClient;
use keys::Algorithm;
use serde_json::json;
use store::ClientId;

use super::output::{print_json, table};
use super::{JsonFlag, realm, services};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCmd {
    /// Register an OAuth client. A confidential client's secret is printed once.
    Create {
        /// Realm (tenant slug or `consumers`).
        realm: String,
        /// Client id.
        client_id: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Confidential client (gets a secret); default is a public client (PKCE required).
        #[arg(long)]
        confidential: bool,
        /// First-party client: may use the password grant.
        #[arg(long)]
        first_party: bool,
        /// Allowed redirect URI (exact match); repeat for several.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Allowed grant type; repeat for several (default: authorization_code, refresh_token).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// ID-token algorithm if not RS256 (ES256, PS256, EdDSA).
        #[arg(long)]
        id_token_alg: Option<String>,
        /// A scope the client may be granted (openid, profile, email, offline_access, mail,
        /// audit); repeat, or give several separated by spaces. Default: any for a
        /// first-party client, else openid profile email offline_access — reading mail must
        /// be granted here.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List a realm's clients.
    List {
        /// Realm.
        realm: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

pub(super) fn run(config: Config, cmd: ClientCmd, now: i64) -> Result<()> {
    match cmd {
        ClientCmd::Create {
            realm: r,
            client_id,
            name,
            confidential,
            first_party,
            redirect_uris,
            grants,
            id_token_alg,
            scopes,
            out,
        } => {
            let svc = services(config)?;
            let id_token_alg = id_token_alg.map(|a| a.parse::<Algorithm>()).transpose()?;
            let created = svc.identity.create_client(
                NewClient {
                    realm: realm(&r)?,
                    client_id: ClientId::new(client_id.clone())
                        .with_context(|| format!("{client_id:?} is not a client id"))?,
                    name: name.unwrap_or_else(|| client_id.clone()),
                    confidential,
                    first_party,
                    redirect_uris,
                    grant_types: grants,
                    id_token_alg,
                    scopes: (!scopes.is_empty()).then_some(scopes),
                },
                now,
            )?;
            let secret = created.secret.as_ref().map(|s| s.as_str().to_owned());
            if out.json {
                return print_json(
                    &json!({"client": created.client, "client_id": client_id, "client_secret": secret}),
                );
            }
            println!("created client {client_id} in realm {r}");
            if let Some(s) = secret {
                println!("client secret (shown once): {s}");
            }
            Ok(())
        }
        ClientCmd::List { realm: r, out } => {
            let svc = services(config)?;
            let r = realm(&r)?;
            svc.identity
                .realm(&r)?
                .with_context(|| format!("unknown realm {r}"))?;
            let clients = svc.store.list_clients(&r)?;
            if out.json {
                return print_json(&clients);
            }
            table(
                &[
                    "CLIENT",
                    "KIND",
                    "FIRST-PARTY",
                    "GRANTS",
                    "SCOPES",
                    "REDIRECT URIS",
                ],
                clients
                    .into_iter()
                    .map(|c| {
                        let kind = if c.secret_hash.is_some() {
                            "confidential"
                        } else {
                            "public"
                        };
                        vec![
                            c.client_id.to_string(),
                            kind.into(),
                            c.first_party.to_string(),
                            c.grant_types.join(","),
                            c.scopes.as_ref().map_or("any".into(), |s| s.join(",")),
                            c.redirect_uris.join(" "),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
    }
}
