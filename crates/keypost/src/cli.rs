//! The command line: one enum per noun, one variant per verb. Each verb opens the services it
//! needs, calls the library, and prints a table or (with `--json`) JSON.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use identity::{Identity, NewClient};
use keys::{Algorithm, Custody, Kek, KeyPurpose};
use serde_json::json;
use store::{AuditQuery, ClientId, Kid, RealmId, Role, Store};
use zeroize::Zeroizing;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run Keypost (HTTP now; SMTP and IMAP as they land) on the configured addresses. The
    /// private keys live in a signer child process that `serve` starts and restarts.
    Serve,
    /// Run the signer alone: the only process that unseals private keys. It signs over a Unix
    /// socket (mode 0600, in a 0700 directory), keeps every realm's keys on schedule and signs
    /// the audit checkpoints. `serve` starts one itself; run this only to place it elsewhere.
    ///
    /// With `[signer] address` (or `--listen`) it listens on TCP with mutually authenticated
    /// TLS instead, and `serve` processes configured with the same address sign through it.
    Signer {
        /// The socket to listen on (default: {data_dir}/signer/signer.sock).
        #[arg(long, conflicts_with = "listen")]
        socket: Option<PathBuf>,
        /// Listen on HOST:PORT with mutual TLS (`[signer]` ca_file, cert_file, key_file)
        /// instead of a Unix socket; default `[signer] address` when that is set.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// Started by `serve`: end when it ends.
        #[arg(long, hide = true)]
        child: bool,
    },
    /// Enterprise tenants (one realm each).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Accounts in any realm.
    #[command(subcommand)]
    User(UserCmd),
    /// OAuth clients of a realm.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Signing keys: list, rotate, revoke, import.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Mail in accounts.
    #[command(subcommand)]
    Mail(MailCmd),
    /// Sign-in sessions and the tokens issued in them.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Alerts raised by the detection rules, and the rules' per-tenant settings.
    #[command(subcommand)]
    Alerts(AlertsCmd),
    /// The blast radius of a key, token, source address or client, from the audit log: tenants,
    /// accounts, mail items read (and when, from where), refused attempts.
    Investigate(InvestigateArgs),
    /// Print the effective configuration (file, then environment) as TOML.
    Config,
}

#[derive(Debug, Args)]
pub(crate) struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

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
    /// every minute).
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

fn alerts(config: Config, cmd: AlertsCmd, now: i64) -> Result<()> {
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

fn rfc3339(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
    )
    .to_string()
}

fn print_blast_radius(
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

/// What a verb needs: the identity service over the opened data directory.
pub(crate) struct Services {
    pub(crate) identity: Arc<Identity>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) custody: Arc<Custody>,
    pub(crate) config: Config,
}

fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store = store::StoreConfig::in_data_dir(&config.data_dir);
    store::open(&store).with_context(|| format!("opening the store {store}"))
}

pub(crate) fn open_mail(svc: &Services) -> Result<mail::Mail> {
    let blobs = Arc::new(store::FsBlobStore::open(
        &svc.config.data_dir.join("blobs"),
    )?);
    Ok(mail::Mail::new(svc.store.clone(), blobs)
        .with_default_quota(svc.config.mail_quota)
        .with_upload_policy(svc.config.uploads))
}

/// `KEYPOST_KEK`, taken out of the environment at start ([`take_kek_from_env`]).
static KEK_FROM_ENV: std::sync::OnceLock<Option<Zeroizing<String>>> = std::sync::OnceLock::new();

/// Takes `KEYPOST_KEK` out of this process's environment (only `main` calls it, first).
pub(crate) fn take_kek_from_env() -> Result<()> {
    let value = hardening::take_env_var("KEYPOST_KEK")
        .context("taking KEYPOST_KEK out of the environment")?
        .map(Zeroizing::new);
    let _ = KEK_FROM_ENV.set(value);
    Ok(())
}

/// The key-encryption key given in `KEYPOST_KEK`, if it was: for the signer child alone.
pub(crate) fn kek_from_env() -> Option<&'static Zeroizing<String>> {
    KEK_FROM_ENV.get().and_then(Option::as_ref)
}

fn load_kek(config: &Config) -> Result<Kek> {
    match kek_from_env() {
        Some(v) => Ok(Kek::from_base64(v)?),
        None => Ok(Kek::load_or_create(&config.kek_file)?),
    }
}

/// What an operator's verb (and the signer process) gets: custody with the key-encryption key
/// and an in-process signer.
pub(crate) fn services(config: Config) -> Result<Services> {
    let store = open_store(&config)?;
    let kek = Arc::new(load_kek(&config)?);
    let mut custody = Custody::new(store.clone(), kek, config.key_policy);
    if let Some(hsm) = &config.hsm {
        custody = custody.with_hsm(Arc::new(
            keys::Hsm::open(&hsm.to_config())
                .context("opening the HSM ([hsm] in the configuration)")?,
        ));
    }
    let custody = Arc::new(custody);
    let signer: Arc<dyn keys::SignService> = Arc::new(custody.signer());
    wire(store, custody, signer, config)
}

/// What the web-facing `serve` gets: public keys only, and signing through the signer process
/// (`signer`). No private key and no key-encryption key is ever in this process.
pub(crate) fn web_services(config: Config, signer: Arc<keys::RemoteSigner>) -> Result<Services> {
    let store = open_store(&config)?;
    let custody = Arc::new(Custody::public(store.clone(), config.key_policy));
    wire(store, custody, signer, config)
}

fn wire(
    store: Arc<dyn Store>,
    custody: Arc<Custody>,
    signer: Arc<dyn keys::SignService>,
    config: Config,
) -> Result<Services> {
    let identity = Arc::new(Identity::new(
        store.clone(),
        custody.clone(),
        signer,
        config.identity.clone(),
    ));
    identity.ensure_consumers(identity::now())?;
    Ok(Services {
        identity,
        store,
        custody,
        config,
    })
}

fn realm(s: &str) -> Result<RealmId> {
    RealmId::new(s).with_context(|| format!("{s:?} is not a realm id"))
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

fn time(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
    )
    .to_string()
}

fn parse_since(s: &str) -> Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64);
    }
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{s:?}: expected an RFC 3339 time or a duration like 1h"))?;
    Ok(identity::now() - d.as_secs() as i64)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as an aligned table.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&w)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub(crate) fn run(cmd: Command, config: Config) -> Result<()> {
    let now = identity::now();
    match cmd {
        Command::Serve => crate::serve::run(config),
        Command::Signer {
            socket,
            listen,
            child,
        } => {
            use crate::signer::Listen;
            let listen = match (socket, listen.or(config.signer_address.clone())) {
                (Some(socket), _) => Listen::Unix { socket, child },
                (None, Some(address)) if !child => Listen::Tls(address),
                (None, _) => Listen::Unix {
                    socket: crate::signer::default_socket(&config),
                    child,
                },
            };
            crate::signer::run(services(config)?, listen)
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&config.file)?);
            Ok(())
        }
        Command::Tenant(TenantCmd::Create {
            slug,
            domains,
            name,
            token_alg,
            out,
        }) => {
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
        Command::Tenant(TenantCmd::List { out }) => {
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
        Command::User(UserCmd::Create {
            email,
            admin,
            name,
            out,
        }) => {
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
        Command::User(UserCmd::List { realm: r, out }) => {
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
        Command::User(UserCmd::Disable { email }) => {
            let a = services(config)?.identity.disable_user(&email, now)?;
            println!("disabled {}", a.email);
            Ok(())
        }
        Command::User(UserCmd::SetPassword { email, temporary }) => {
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
        Command::Client(ClientCmd::Create {
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
        }) => {
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
        Command::Client(ClientCmd::List { realm: r, out }) => {
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
        Command::Keys(KeysCmd::List { realm: r, out }) => {
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
                            time(k.activates_at),
                            time(k.expires_at),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        Command::Keys(KeysCmd::Rotate { realm: r, out }) => {
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
        Command::Keys(KeysCmd::Revoke { kid, out }) => {
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
        Command::Keys(KeysCmd::Import {
            realm: r,
            file,
            alg,
            purpose,
            out,
        }) => {
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
        Command::Keys(KeysCmd::Rewrap { new_kek_file }) => {
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
        Command::Mail(MailCmd::Import {
            email,
            path,
            mailbox,
            out,
        }) => {
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
        Command::Mail(MailCmd::Quota { email, limit, out }) => {
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
        Command::Alerts(cmd) => alerts(config, cmd, now),
        Command::Sessions(SessionsCmd::Revoke {
            user,
            tenant,
            client,
            out,
        }) => {
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
        Command::Sessions(SessionsCmd::Prune { out }) => {
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
        Command::Investigate(args) => {
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
        Command::Audit(AuditCmd::Verify {
            realm: r,
            against,
            out,
        }) => {
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
        Command::Audit(AuditCmd::Expire { older_than }) => {
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
        Command::Audit(AuditCmd::Checkpoint) => {
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
        Command::Audit(AuditCmd::Export { filter, format }) => {
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
        Command::Audit(AuditCmd::Search { filter, limit, out }) => {
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
                            time(r.time),
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
