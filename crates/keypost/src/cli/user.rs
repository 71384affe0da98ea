//! `keypost user`: accounts in any realm: create, list, disable, set a password.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use store::Role;
use zeroize::Zeroizing;

use super::output::{print_json, table};
use super::{JsonFlag, realm, services};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum UserCmd {
    /// Create an account; the realm follows from the address's domain. Reads the password as
    /// one line from standard input.
    Create {
        /// Email address.
        email: String,
        /// Make the account an admin (tenant admin, or provider admin in the consumer realm).
        #[arg(long)]
        admin: bool,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List accounts.
    List {
        /// Only this realm.
        #[arg(long)]
        realm: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Disable an account: sign-in refused and its tokens stop validating at once.
    Disable {
        /// Email address.
        email: String,
    },
    /// Set an account's password, read as one line from standard input.
    SetPassword {
        /// Email address.
        email: String,
        /// A temporary password: the user must choose a new one at the next sign-in (in the
        /// browser) before any token is issued.
        #[arg(long)]
        temporary: bool,
    },
}

pub(super) fn run(config: Config, cmd: UserCmd, now: i64) -> Result<()> {
    match cmd {
        UserCmd::Create {
            email,
            admin,
            name,
            out,
        } => {
            let svc = services(config)?;
            let pw = read_password()?;
            let role = match (admin, svc.identity.realm_of_email(&email)?.is_consumers()) {
                (false, _) => Role::User,
                (true, true) => Role::ProviderAdmin,
                (true, false) => Role::TenantAdmin,
            };
            let a = svc
                .identity
                .create_user(&email, name.as_deref(), &pw, role, false, now)?;
            if out.json {
                return print_json(&a);
            }
            println!(
                "created {} in realm {} (sub {}, role {})",
                a.email, a.realm, a.id, a.role
            );
            Ok(())
        }
        UserCmd::List { realm: r, out } => {
            let svc = services(config)?;
            let r = r.as_deref().map(realm).transpose()?;
            let users = svc.identity.users(r.as_ref())?;
            if out.json {
                return print_json(&users);
            }
            table(
                &["EMAIL", "REALM", "ROLE", "DISABLED", "SUB"],
                users
                    .into_iter()
                    .map(|a| {
                        vec![
                            a.email,
                            a.realm.to_string(),
                            a.role.to_string(),
                            a.disabled.to_string(),
                            a.id.to_string(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        UserCmd::Disable { email } => {
            let a = services(config)?.identity.disable_user(&email, now)?;
            println!("disabled {}", a.email);
            Ok(())
        }
        UserCmd::SetPassword { email, temporary } => {
            let svc = services(config)?;
            let pw = read_password()?;
            svc.identity.set_password(&email, &pw, temporary, now)?;
            let note = if temporary {
                " (temporary: to be changed at next sign-in)"
            } else {
                ""
            };
            println!("password changed for {}{note}", email.to_ascii_lowercase());
            Ok(())
        }
    }
}

fn read_password() -> Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let pw = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    if pw.is_empty() {
        bail!(
            "no password on standard input (pipe one line, e.g. `echo '...' | keypost user create ...`)"
        );
    }
    Ok(pw)
}
