//! `keypost keys`: signing keys: list, rotate, revoke (with the blast radius), import, rewrap.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use keys::{Kek, KeyPurpose};
use serde_json::json;
use store::Kid;
use zeroize::Zeroizing;

use super::investigate::print_blast_radius;
use super::output::{print_json, rfc3339, table};
use super::{JsonFlag, realm, services};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCmd {
    /// List keys with their state (pending, active, retiring, expired, revoked).
    List {
        /// Only this realm.
        #[arg(long)]
        realm: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Rotate now: new active keys for the realm; the old ones retire.
    Rotate {
        /// Realm.
        #[arg(long)]
        realm: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Revoke a key: refused for signing and validation at once; replaced if it was active.
    Revoke {
        /// Key id (base64url; may start with '-').
        #[arg(allow_hyphen_values = true)]
        kid: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Import an externally generated private key (PKCS#8 PEM or JWK: Ed25519, P-256, RSA
    /// ≥ 2048) and bind it to exactly one realm as its active key. Prints the kid.
    Import {
        /// Realm the key will sign for.
        #[arg(long)]
        realm: String,
        /// Key file.
        #[arg(long)]
        file: PathBuf,
        /// For RSA keys: RS256 (default) or PS256.
        #[arg(long, default_value = "RS256")]
        alg: String,
        /// What the key signs: access-token (default) or id-token.
        #[arg(long, default_value = "access-token")]
        purpose: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Re-seal every private key under a new key-encryption key (base64, 32 bytes, in FILE),
    /// then point `keys.kek_file` (or KEYPOST_KEK) at it. Safe to repeat.
    Rewrap {
        /// File holding the new key-encryption key (created, mode 0600, if absent).
        #[arg(long)]
        new_kek_file: PathBuf,
    },
}

pub(super) fn run(config: Config, cmd: KeysCmd, now: i64) -> Result<()> {
    match cmd {
        KeysCmd::List { realm: r, out } => {
            let svc = services(config)?;
            let r = r.as_deref().map(realm).transpose()?;
            let keys = svc.identity.custody().list(r.as_ref(), now)?;
            if out.json {
                return print_json(&keys);
            }
            table(
                &[
                    "KID",
                    "REALM",
                    "PURPOSE",
                    "ALG",
                    "STATE",
                    "ORIGIN",
                    "ACTIVATES",
                    "EXPIRES",
                ],
                keys.into_iter()
                    .map(|k| {
                        vec![
                            k.kid.to_string(),
                            k.realm.to_string(),
                            k.purpose.to_string(),
                            k.alg,
                            k.state.as_str().into(),
                            k.origin.to_string(),
                            rfc3339(k.activates_at),
                            rfc3339(k.expires_at),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        KeysCmd::Rotate { realm: r, out } => {
            let svc = services(config)?;
            let r = realm(&r)?;
            let kids = svc.identity.custody().rotate(&r, now)?;
            for kid in &kids {
                svc.identity.audit().record(
                    audit::Event::success(audit::Operation::KeyCreated)
                        .realm(&r)
                        .actor("cli")
                        .kid(kid.as_str())
                        .detail("reason", "manual rotation"),
                    now,
                )?;
            }
            if out.json {
                return print_json(&kids);
            }
            for kid in kids {
                println!("{kid}");
            }
            Ok(())
        }
        KeysCmd::Revoke { kid, out } => {
            let svc = services(config)?;
            let kid = Kid::new(kid.clone()).with_context(|| format!("{kid:?} is not a key id"))?;
            let Some((record, replacements)) = svc.identity.custody().revoke(&kid, now)? else {
                bail!("no key {kid}");
            };
            svc.identity.audit().record(
                audit::Event::success(audit::Operation::KeyRevoked)
                    .realm(&record.realm)
                    .actor("cli")
                    .kid(kid.as_str())
                    .detail(
                        "replacements",
                        replacements
                            .iter()
                            .map(|k| k.to_string())
                            .collect::<Vec<_>>(),
                    ),
                now,
            )?;
            // The answer to "what did this key open?" comes with the revocation.
            let radius = audit::investigate::investigate(
                &*svc.store,
                &audit::investigate::Subject::Kid(kid.to_string()),
                None,
            )?;
            if out.json {
                return print_json(
                    &json!({"kid": kid, "realm": record.realm, "revoked_at": record.revoked_at,
                            "replacements": replacements, "blast_radius": radius}),
                );
            }
            println!(
                "revoked {kid} (realm {}); refused for signing and validation from now on",
                record.realm
            );
            let radius = audit::investigate::investigate(
                &*svc.store,
                &audit::investigate::Subject::Kid(kid.to_string()),
                None,
            )?;
            print_blast_radius(
                &svc,
                &format!("blast radius of {kid}"),
                &radius,
                false,
                false,
            )?;
            for k in replacements {
                println!("new active key: {k}");
            }
            Ok(())
        }
        KeysCmd::Import {
            realm: r,
            file,
            alg,
            purpose,
            out,
        } => {
            let svc = services(config)?;
            let r = realm(&r)?;
            let bytes = Zeroizing::new(
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
            );
            // Audit keys are only ever generated inside Keypost: an imported one would let
            // whoever held it sign checkpoints over a rewritten log.
            let purpose: KeyPurpose = purpose
                .parse()
                .ok()
                .filter(|p| *p != KeyPurpose::Audit)
                .ok_or_else(|| anyhow::anyhow!("--purpose must be access-token or id-token"))?;
            let (kid, alg) =
                svc.identity
                    .custody()
                    .import(&r, purpose, &bytes, alg.parse()?, now)?;
            svc.identity.audit().record(
                audit::Event::success(audit::Operation::KeyImported)
                    .realm(&r)
                    .actor("cli")
                    .kid(kid.as_str())
                    .detail("alg", alg.as_str())
                    .detail("purpose", purpose.as_str()),
                now,
            )?;
            if out.json {
                return print_json(
                    &json!({"kid": kid, "realm": r, "alg": alg, "purpose": purpose}),
                );
            }
            println!("{kid}");
            Ok(())
        }
        KeysCmd::Rewrap { new_kek_file } => {
            let svc = services(config)?;
            let new = Kek::load_or_create(&new_kek_file)?;
            let n = svc.identity.custody().rewrap(&new)?;
            println!(
                "rewrapped {n} keys under {}; now set keys.kek_file = {:?}",
                new_kek_file.display(),
                new_kek_file.display()
            );
            Ok(())
        }
    }
}
