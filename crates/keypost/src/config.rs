//! Configuration: one TOML file, every key overridable by a `KEYPOST_*` environment variable,
//! and defaults that need no file at all. Parsed in two stages, as ripgrep does with flags:
//! [`FileConfig`] is what the file says (strings, unknown keys refused), [`Config`] is the
//! validated form the rest of the binary uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The file as written. Every field has a default; unknown keys are an error naming the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FileConfig {
    /// Base URL clients reach Keypost at; issuers are `{public_url}/realms/{realm}`.
    public_url: String,
    /// Where the database, the key-encryption key and (later) mail live.
    data_dir: PathBuf,
    /// Mail domain of the consumer realm.
    consumer_domain: String,
    listen: Listen,
    tokens: Tokens,
    keys: Keys,
    login: Login,
    mail: MailSection,
    audit: AuditSection,
    alerts: AlertsSection,
    hsm: HsmSection,
    signer: SignerSection,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SignerSection {
    /// `host:port` of a signer run elsewhere (`keypost signer` listens there; `serve` signs
    /// through it over mutual TLS instead of starting its own). Empty: `serve` runs the signer
    /// as a child on a Unix socket.
    address: String,
    /// The operator CA that issued both sides' certificates (PEM).
    ca_file: String,
    /// This side's certificate: the signer's server certificate on the signer host, the
    /// client certificate on the hosts that run `serve`.
    cert_file: String,
    /// This side's private key (PEM).
    key_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HsmSection {
    /// The PKCS#11 module; empty means no HSM (every key is sealed under the KEK).
    module: String,
    /// The label of the token holding Keypost's keys.
    token: String,
    /// The token's user PIN. Prefer `KEYPOST_HSM_PIN` to writing it in the file.
    pin: Secret,
    /// Realms whose token-signing keys are made in the HSM; `["*"]` for every realm.
    /// `KEYPOST_HSM_REALMS` takes a comma-separated list.
    realms: Vec<String>,
}

impl Default for HsmSection {
    fn default() -> Self {
        Self {
            module: String::new(),
            token: "keypost".into(),
            pin: Secret::default(),
            realms: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuditSection {
    /// How long audit records are kept; older ones expire behind a signed tombstone.
    retention: String,
    /// Every record is also sent here as RFC 5424 syslog: `udp://host:port` or `tcp://host:port`.
    syslog: String,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            retention: "365d".into(),
            syslog: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AlertsSection {
    /// Every alert is POSTed here as JSON (http:// only).
    webhook: String,
    /// The key of the webhook's HMAC-SHA256 signature (`X-Keypost-Signature`); required with
    /// `webhook`. Prefer `KEYPOST_ALERTS_WEBHOOK_SECRET` to writing it in the file.
    webhook_secret: Secret,
    /// Alert mails per tenant (and for the provider's own alerts) per clock hour; the alerts
    /// beyond are stored and named in one summary mail after the hour.
    mail_per_hour: u32,
}

impl Default for AlertsSection {
    fn default() -> Self {
        Self {
            webhook: String::new(),
            webhook_secret: Secret::default(),
            mail_per_hour: detect::DEFAULT_MAIL_CAP,
        }
    }
}

/// A secret read from the configuration: zeroized on drop, never printed (`keypost config`
/// and `Debug` show `[redacted]`).
#[derive(Clone, Default)]
pub(crate) struct Secret(zeroize::Zeroizing<String>);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Self(zeroize::Zeroizing::new(String::deserialize(d)?)))
    }
}

impl Secret {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MailSection {
    /// Storage per account unless set per account (`keypost mail quota`): a size such as
    /// "10GiB" or "500MB", or "unlimited".
    quota: String,
    /// How long an upload is kept (RFC 8620 §6.1: at least an hour).
    upload_ttl: String,
    /// Most bytes of uploads an account may have that no email of it is stored as yet (at
    /// least the largest message); the oldest make room for new ones.
    upload_pending: String,
}

impl Default for MailSection {
    fn default() -> Self {
        Self {
            quota: "10GiB".into(),
            upload_ttl: "24h".into(),
            upload_pending: "100MiB".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Listen {
    http: String,
    smtp: String,
    submission: String,
    imap: String,
    /// Proxies (addresses or CIDR networks) whose `X-Forwarded-For` names the client of an
    /// HTTP request, for audit records and sign-in throttling. Empty: the peer is the client.
    /// `KEYPOST_LISTEN_TRUSTED_PROXIES` takes a comma-separated list. Their connections are
    /// capped only by `max_connections`, not per source.
    trusted_proxies: Vec<String>,
    /// How long an HTTP client has to send a request's head: from connecting, or from the
    /// first byte of a later request on the same connection. Then it is disconnected.
    header_read_timeout: String,
    /// How long a kept-alive HTTP connection may wait for its next request, and how long a
    /// client may leave a response unread (its receive window full), before it is closed.
    idle_timeout: String,
    /// Every HTTP request is answered within this, its body's upload included: 408 if the body
    /// was still arriving, 503 if the server was still working on it.
    request_timeout: String,
    /// The longest a JMAP push stream (EventSource) stays open; then it ends and the client
    /// reconnects. The request timeout covers only its start.
    push_lifetime: String,
    /// Open HTTP connections in all; beyond it, new ones wait in the kernel's backlog until one
    /// closes. Keep it below the open-file limit (`ulimit -n`).
    max_connections: u64,
    /// Open HTTP connections from one source (an IPv4 address, an IPv6 /64); more are closed at
    /// once. 0: no per-source cap.
    max_connections_per_source: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Tokens {
    access_token_ttl: String,
    id_token_ttl: String,
    refresh_token_ttl: String,
    session_ttl: String,
    auth_code_ttl: String,
    clock_leeway: String,
    /// How much longer than needed the issuance ledger keeps a token's row: it goes once the
    /// token expired this long ago and was minted longer ago than the longest lifetime plus this.
    ledger_retention: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Keys {
    rotation_period: String,
    publish_ahead: String,
    /// Key-encryption key file; empty means `{data_dir}.kek`, beside (not inside) the data
    /// directory. `KEYPOST_KEK` (base64) wins.
    kek_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Login {
    max_failures_per_account: u64,
    max_failures_per_source: u64,
    throttle_window: String,
    ipv6_prefix: u8,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            data_dir: "./keypost-data".into(),
            consumer_domain: "keypost.test".into(),
            listen: Listen::default(),
            tokens: Tokens::default(),
            keys: Keys::default(),
            login: Login::default(),
            mail: MailSection::default(),
            audit: AuditSection::default(),
            alerts: AlertsSection::default(),
            hsm: HsmSection::default(),
            signer: SignerSection::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:8080".into(),
            smtp: "127.0.0.1:2525".into(),
            submission: "127.0.0.1:5870".into(),
            imap: "127.0.0.1:1430".into(),
            trusted_proxies: Vec::new(),
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            request_timeout: "60s".into(),
            push_lifetime: "1h".into(),
            max_connections: 512,
            max_connections_per_source: 64,
        }
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Self {
            access_token_ttl: "10m".into(),
            id_token_ttl: "10m".into(),
            refresh_token_ttl: "30d".into(),
            session_ttl: "30d".into(),
            auth_code_ttl: "60s".into(),
            clock_leeway: "30s".into(),
            ledger_retention: "1d".into(),
        }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            rotation_period: "7d".into(),
            publish_ahead: "24h".into(),
            kek_file: String::new(),
        }
    }
}

impl Default for Login {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_source: 20,
            throttle_window: "15m".into(),
            ipv6_prefix: audit::DEFAULT_V6_PREFIX,
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) file: FileConfig,
    /// The file it was read from, if any (`serve` hands it to the signer process).
    pub(crate) path: Option<PathBuf>,
    pub(crate) public_url: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) http: std::net::SocketAddr,
    /// The HTTP listener's deadlines and connection caps.
    pub(crate) http_limits: crate::http_edge::EdgeLimits,
    pub(crate) identity: identity::IdentityConfig,
    pub(crate) key_policy: keys::KeyPolicy,
    pub(crate) kek_file: PathBuf,
    /// Default mail storage per account (`None`: unlimited).
    pub(crate) mail_quota: Option<u64>,
    /// How long uploads are kept and how much of them an account may have pending.
    pub(crate) uploads: mail::UploadPolicy,
    /// Seconds audit records are kept.
    pub(crate) audit_retention: i64,
    /// Seconds the issuance ledger keeps a row beyond what its token needs (see `Tokens`).
    pub(crate) ledger_retention: i64,
    /// Where audit records are also sent.
    pub(crate) syslog: Option<crate::forward::SyslogTarget>,
    /// Where alerts are posted, and the signing key.
    pub(crate) webhook: Option<(hyper::Uri, Secret)>,
    /// Alert mails per tenant and clock hour.
    pub(crate) alert_mail_per_hour: u32,
    /// The PKCS#11 token that holds some realms' keys.
    pub(crate) hsm: Option<HsmSettings>,
    /// A signer elsewhere, reached over mutual TLS (`None`: a child on a Unix socket).
    pub(crate) signer_address: Option<String>,
    /// This side's certificates for the signer link.
    pub(crate) signer_tls: Option<keys::TlsFiles>,
}

/// A validated `[hsm]` section.
#[derive(Debug, Clone)]
pub(crate) struct HsmSettings {
    pub(crate) module: PathBuf,
    pub(crate) token: String,
    pub(crate) pin: Secret,
    pub(crate) realms: keys::HsmRealms,
}

impl HsmSettings {
    pub(crate) fn to_config(&self) -> keys::HsmConfig {
        keys::HsmConfig {
            module: self.module.clone(),
            token: self.token.clone(),
            pin: zeroize::Zeroizing::new(self.pin.as_str().to_owned()),
            realms: self.realms.clone(),
        }
    }
}

impl MailSection {
    fn upload_policy(&self) -> Result<mail::UploadPolicy> {
        let ttl = secs("mail.upload_ttl", &self.upload_ttl)?;
        if ttl < 3600 {
            bail!("mail.upload_ttl must be at least 1h (RFC 8620 §6.1)");
        }
        let least = mail::MAX_MESSAGE_SIZE as u64;
        let pending_bytes = size("mail.upload_pending", &self.upload_pending)?
            .with_context(|| "mail.upload_pending cannot be unlimited")?;
        if pending_bytes < least {
            bail!(
                "mail.upload_pending must be at least the largest message, {least} bytes (RFC 8620 §6.1)"
            );
        }
        Ok(mail::UploadPolicy { ttl, pending_bytes })
    }
}

/// A size such as `10GiB`, `500MB`, `1048576` (bytes) or `unlimited` (`None`).
pub(crate) fn size(name: &str, v: &str) -> Result<Option<u64>> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits
        .parse()
        .with_context(|| format!("{name} = {v:?} is not a size like \"10GiB\" or \"unlimited\""))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            bail!("{name}: unknown size unit {other:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        }
    };
    n.checked_mul(scale)
        .map(Some)
        .with_context(|| format!("{name} = {v:?} is too large"))
}

fn duration(name: &str, v: &str) -> Result<Duration> {
    let d: Duration = humantime::parse_duration(v)
        .with_context(|| format!("{name} = {v:?} is not a duration like \"10m\" or \"7d\""))?;
    if d.is_zero() {
        bail!("{name} must be positive");
    }
    Ok(d)
}

fn secs(name: &str, v: &str) -> Result<i64> {
    i64::try_from(duration(name, v)?.as_secs()).with_context(|| format!("{name} is too large"))
}

/// Environment variables that are not configuration keys.
const NON_CONFIG_ENV: [&str; 3] = ["KEYPOST_CONFIG", "KEYPOST_KEK", "KEYPOST_LOG"];

/// Applies `KEYPOST_*` overrides: each leaf key `a.b_c` is `KEYPOST_A_B_C`. Unknown
/// `KEYPOST_*` variables are errors, like unknown keys in the file.
fn overlay_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<()> {
    let defaults = toml::Table::try_from(FileConfig::default())?;
    let mut leaves: Vec<(Vec<String>, toml::Value)> = Vec::new();
    for (k, v) in &defaults {
        match v {
            toml::Value::Table(t) => {
                for (k2, v2) in t {
                    leaves.push((vec![k.clone(), k2.clone()], v2.clone()));
                }
            }
            other => leaves.push((vec![k.clone()], other.clone())),
        }
    }
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("KEYPOST_") else {
            continue;
        };
        if NON_CONFIG_ENV.contains(&name.as_str()) {
            continue;
        }
        let Some((path, default)) = leaves
            .iter()
            .find(|(p, _)| p.join("_").eq_ignore_ascii_case(rest))
        else {
            bail!(
                "unknown configuration variable {name} (keys: {})",
                leaves
                    .iter()
                    .map(|(p, _)| format!("KEYPOST_{}", p.join("_").to_uppercase()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let parsed = match default {
            toml::Value::Integer(_) => toml::Value::Integer(
                value
                    .parse()
                    .with_context(|| format!("{name} must be an integer"))?,
            ),
            // Lists are comma-separated in the environment.
            toml::Value::Array(_) => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| toml::Value::String(v.to_owned()))
                    .collect(),
            ),
            _ => toml::Value::String(value.clone()),
        };
        let mut t = &mut *table;
        for seg in &path[..path.len() - 1] {
            t = t
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .with_context(|| format!("{seg} must be a table"))?;
        }
        t.insert(path[path.len() - 1].clone(), parsed);
    }
    Ok(())
}

impl Config {
    /// Where the signer keeps its own record of the audit heads it signed: beside the
    /// key-encryption key, out of the database's reach.
    pub(crate) fn signed_heads(&self) -> audit::signed_heads::SignedHeads {
        audit::signed_heads::SignedHeads::beside(&self.kek_file)
    }

    /// Loads `explicit` (must exist), else `./keypost.toml` if present, else defaults; then the
    /// environment on top.
    pub(crate) fn load(explicit: Option<&Path>) -> Result<Self> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("KEYPOST_"))
            .collect();
        let text = match explicit {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?,
            ),
            None => std::fs::read_to_string("keypost.toml").ok(),
        };
        let name = explicit
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "keypost.toml".into());
        let mut config = Self::from_parts(text.as_deref(), &name, &env)?;
        config.path = text.as_ref().map(|_| PathBuf::from(&name));
        Ok(config)
    }

    pub(crate) fn from_parts(
        text: Option<&str>,
        name: &str,
        env: &[(String, String)],
    ) -> Result<Self> {
        let mut table: toml::Table = match text {
            Some(t) => toml::from_str(t).with_context(|| format!("parsing {name}"))?,
            None => toml::Table::new(),
        };
        overlay_env(&mut table, env)?;
        let file: FileConfig = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("in {name}"))?;
        file.validate()
    }
}

/// The KEK's default home: beside the data directory (`./keypost-data.kek`), never inside it,
/// so a copy or backup of the data directory holds no usable private key.
fn default_kek_file(data_dir: &Path) -> Result<PathBuf> {
    let name = data_dir
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .with_context(|| {
            format!(
                "data_dir {} has no name to put the key-encryption key beside; set keys.kek_file",
                data_dir.display()
            )
        })?;
    let mut kek = name.to_os_string();
    kek.push(".kek");
    Ok(data_dir.with_file_name(kek))
}

impl FileConfig {
    fn validate(self) -> Result<Config> {
        let public_url = self.public_url.trim_end_matches('/').to_owned();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            bail!("public_url must start with http:// or https://");
        }
        let http = self.listen.http.parse().with_context(|| {
            format!(
                "listen.http = {:?} is not an address:port",
                self.listen.http
            )
        })?;
        let http_limits = self.listen.http_limits()?;
        let t = &self.tokens;
        let access_ttl = secs("tokens.access_token_ttl", &t.access_token_ttl)?;
        let id_ttl = secs("tokens.id_token_ttl", &t.id_token_ttl)?;
        let identity = identity::IdentityConfig {
            public_url: public_url.clone(),
            consumer_domain: self.consumer_domain.trim().to_ascii_lowercase(),
            access_ttl,
            id_ttl,
            refresh_ttl: secs("tokens.refresh_token_ttl", &t.refresh_token_ttl)?,
            session_ttl: secs("tokens.session_ttl", &t.session_ttl)?,
            code_ttl: secs("tokens.auth_code_ttl", &t.auth_code_ttl)?,
            leeway: secs("tokens.clock_leeway", &t.clock_leeway)?,
            max_failures_per_account: self.login.max_failures_per_account,
            max_failures_per_source: self.login.max_failures_per_source,
            throttle_window: secs("login.throttle_window", &self.login.throttle_window)?,
            ipv6_prefix: match self.login.ipv6_prefix {
                p @ 1..=128 => p,
                p => anyhow::bail!("login.ipv6_prefix = {p}: expected 1 to 128"),
            },
            trusted_proxies: audit::TrustedProxies::parse(&self.listen.trusted_proxies)
                .map_err(|e| anyhow::anyhow!("listen.trusted_proxies: {e}"))?,
        };
        let key_policy = keys::KeyPolicy {
            rotation_period: secs("keys.rotation_period", &self.keys.rotation_period)?,
            publish_ahead: secs("keys.publish_ahead", &self.keys.publish_ahead)?,
            max_token_lifetime: access_ttl.max(id_ttl),
        };
        if key_policy.publish_ahead >= key_policy.rotation_period {
            bail!("keys.publish_ahead must be shorter than keys.rotation_period");
        }
        let kek_file = if self.keys.kek_file.is_empty() {
            default_kek_file(&self.data_dir)?
        } else {
            PathBuf::from(&self.keys.kek_file)
        };
        Ok(Config {
            path: None,
            public_url,
            data_dir: self.data_dir.clone(),
            http,
            http_limits,
            identity,
            key_policy,
            kek_file,
            mail_quota: size("mail.quota", &self.mail.quota)?,
            uploads: self.mail.upload_policy()?,
            audit_retention: secs("audit.retention", &self.audit.retention)?,
            ledger_retention: secs("tokens.ledger_retention", &self.tokens.ledger_retention)?,
            syslog: match self.audit.syslog.trim() {
                "" => None,
                s => Some(crate::forward::SyslogTarget::parse(s)?),
            },
            webhook: match self.alerts.webhook.trim() {
                "" => None,
                url => {
                    if self.alerts.webhook_secret.as_bytes().len() < 16 {
                        bail!(
                            "alerts.webhook_secret must be set (16 characters or more) with alerts.webhook"
                        );
                    }
                    Some((
                        crate::forward::check_webhook(url)?,
                        self.alerts.webhook_secret.clone(),
                    ))
                }
            },
            alert_mail_per_hour: match self.alerts.mail_per_hour {
                0 => bail!("alerts.mail_per_hour must be at least 1"),
                n => n,
            },
            hsm: self.hsm.validate()?,
            signer_tls: self.signer.tls_files()?,
            signer_address: match self.signer.address.trim() {
                "" => None,
                a => {
                    if self.signer.ca_file.is_empty() {
                        bail!(
                            "signer.address needs signer.ca_file, cert_file and key_file (mutual TLS)"
                        );
                    }
                    Some(a.to_owned())
                }
            },
            file: self,
        })
    }
}

impl Listen {
    fn http_limits(&self) -> Result<crate::http_edge::EdgeLimits> {
        // Far beyond any machine's file descriptors, and within what a semaphore counts.
        const MOST: u64 = 1 << 24;
        let max_connections = u32::try_from(self.max_connections)
            .ok()
            .filter(|n| u64::from(*n) <= MOST)
            .and_then(std::num::NonZeroU32::new)
            .with_context(|| format!("listen.max_connections must be between 1 and {MOST}"))?;
        if self.max_connections_per_source > MOST {
            bail!("listen.max_connections_per_source must be at most {MOST} (0: no cap)");
        }
        Ok(crate::http_edge::EdgeLimits {
            header_read_timeout: duration("listen.header_read_timeout", &self.header_read_timeout)?,
            idle_timeout: duration("listen.idle_timeout", &self.idle_timeout)?,
            request_timeout: duration("listen.request_timeout", &self.request_timeout)?,
            push_lifetime: duration("listen.push_lifetime", &self.push_lifetime)?,
            max_connections,
            max_connections_per_source: usize::try_from(self.max_connections_per_source)
                .ok()
                .and_then(std::num::NonZeroUsize::new),
        })
    }
}

impl SignerSection {
    fn tls_files(&self) -> Result<Option<keys::TlsFiles>> {
        let files = [&self.ca_file, &self.cert_file, &self.key_file];
        if files.iter().all(|f| f.is_empty()) {
            return Ok(None);
        }
        if files.iter().any(|f| f.is_empty()) {
            bail!("signer.ca_file, signer.cert_file and signer.key_file go together");
        }
        Ok(Some(keys::TlsFiles {
            ca: PathBuf::from(&self.ca_file),
            cert: PathBuf::from(&self.cert_file),
            key: PathBuf::from(&self.key_file),
        }))
    }
}

impl HsmSection {
    fn validate(&self) -> Result<Option<HsmSettings>> {
        let module = self.module.trim();
        if module.is_empty() {
            if !self.realms.is_empty() {
                bail!("hsm.realms is set but hsm.module is empty");
            }
            return Ok(None);
        }
        if self.realms.is_empty() {
            bail!("hsm.module is set but hsm.realms names no realm (use [\"*\"] for every realm)");
        }
        if self.pin.as_str().is_empty() {
            bail!("hsm.pin (or KEYPOST_HSM_PIN) must be set with hsm.module");
        }
        let realms = if self.realms.iter().any(|r| r == "*") {
            keys::HsmRealms::All
        } else {
            keys::HsmRealms::Only(
                self.realms
                    .iter()
                    .map(|r| {
                        store::RealmId::new(r.trim())
                            .map_err(|e| anyhow::anyhow!("hsm.realms: {r:?}: {e}"))
                    })
                    .collect::<Result<_>>()?,
            )
        };
        Ok(Some(HsmSettings {
            module: PathBuf::from(module),
            token: self.token.clone(),
            pin: self.pin.clone(),
            realms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(size("q", "10GiB").unwrap(), Some(10 << 30));
        assert_eq!(size("q", "500 MB").unwrap(), Some(500_000_000));
        assert_eq!(size("q", "42").unwrap(), Some(42));
        assert_eq!(size("q", "Unlimited").unwrap(), None);
        for bad in ["", "GiB", "10 parsecs", "-1", "99999999999TiB"] {
            assert!(size("q", bad).is_err(), "{bad:?}");
        }
        let c = Config::from_parts(
            None,
            "keypost.toml",
            &env(&[("KEYPOST_MAIL_QUOTA", "1MiB")]),
        )
        .unwrap();
        assert_eq!(c.mail_quota, Some(1 << 20));
    }

    #[test]
    fn upload_policy() {
        let c = Config::from_parts(None, "k", &[]).unwrap();
        assert_eq!(c.uploads, mail::UploadPolicy::default());
        let c = Config::from_parts(
            None,
            "k",
            &env(&[
                ("KEYPOST_MAIL_UPLOAD_TTL", "2h"),
                ("KEYPOST_MAIL_UPLOAD_PENDING", "1GiB"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.uploads,
            mail::UploadPolicy {
                ttl: 7200,
                pending_bytes: 1 << 30
            }
        );
        for (key, bad) in [
            ("KEYPOST_MAIL_UPLOAD_TTL", "59m"),
            ("KEYPOST_MAIL_UPLOAD_PENDING", "1MiB"),
            ("KEYPOST_MAIL_UPLOAD_PENDING", "unlimited"),
        ] {
            assert!(
                Config::from_parts(None, "k", &env(&[(key, bad)])).is_err(),
                "{key}={bad}"
            );
        }
    }

    #[test]
    fn hsm_section() {
        assert!(
            Config::from_parts(None, "k", &[]).unwrap().hsm.is_none(),
            "no HSM unless configured"
        );
        let text = "[hsm]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\nrealms = [\"contoso\"]\n";
        let c = Config::from_parts(
            Some(text),
            "k.toml",
            &env(&[
                ("KEYPOST_HSM_PIN", "1234"),
                ("KEYPOST_HSM_REALMS", "contoso, fabrikam,"),
            ]),
        )
        .unwrap();
        let hsm = c.hsm.unwrap();
        assert_eq!(hsm.token, "keypost");
        assert_eq!(hsm.pin.as_str(), "1234");
        assert_eq!(
            hsm.realms,
            keys::HsmRealms::Only(vec![
                store::RealmId::new("contoso").unwrap(),
                store::RealmId::new("fabrikam").unwrap()
            ]),
            "the environment's comma-separated list wins"
        );
        assert!(
            !format!("{hsm:?}").contains("1234"),
            "the PIN is never printed"
        );
        let all = Config::from_parts(
            Some(text),
            "k.toml",
            &env(&[("KEYPOST_HSM_PIN", "1"), ("KEYPOST_HSM_REALMS", "*")]),
        )
        .unwrap();
        assert_eq!(all.hsm.unwrap().realms, keys::HsmRealms::All);
        for (bad, why) in [
            (
                vec![("KEYPOST_HSM_REALMS", "contoso")],
                "realms without module",
            ),
            (
                vec![("KEYPOST_HSM_MODULE", "/x.so"), ("KEYPOST_HSM_PIN", "1")],
                "module without realms",
            ),
            (
                vec![("KEYPOST_HSM_MODULE", "/x.so"), ("KEYPOST_HSM_REALMS", "c")],
                "no PIN",
            ),
            (
                vec![
                    ("KEYPOST_HSM_MODULE", "/x.so"),
                    ("KEYPOST_HSM_PIN", "1"),
                    ("KEYPOST_HSM_REALMS", "Bad Realm"),
                ],
                "invalid realm id",
            ),
        ] {
            assert!(Config::from_parts(None, "k", &env(&bad)).is_err(), "{why}");
        }
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_parts(None, "keypost.toml", &[]).unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:8080");
        assert_eq!(c.identity.access_ttl, 600);
        assert_eq!(c.data_dir, PathBuf::from("./keypost-data"));
        assert_eq!(c.key_policy.rotation_period, 7 * 86_400);
        assert_eq!(
            c.kek_file,
            PathBuf::from("./keypost-data.kek"),
            "outside the data directory"
        );
        let c = Config::from_parts(
            None,
            "k",
            &env(&[("KEYPOST_DATA_DIR", "/var/lib/keypost/")]),
        )
        .unwrap();
        assert_eq!(c.kek_file, PathBuf::from("/var/lib/keypost.kek"));
    }

    #[test]
    fn file_then_environment() {
        let text = "public_url = \"https://mail.example\"\n[tokens]\naccess_token_ttl = \"5m\"\n";
        let c = Config::from_parts(
            Some(text),
            "k.toml",
            &env(&[
                ("KEYPOST_LISTEN_HTTP", "127.0.0.1:9999"),
                ("KEYPOST_TOKENS_ACCESS_TOKEN_TTL", "2m"),
            ]),
        )
        .unwrap();
        assert_eq!(c.public_url, "https://mail.example");
        assert_eq!(c.identity.access_ttl, 120, "env wins over the file");
        assert_eq!(c.http.port(), 9999);
        let c = Config::from_parts(
            None,
            "k",
            &env(&[("KEYPOST_LOGIN_MAX_FAILURES_PER_ACCOUNT", "3")]),
        )
        .unwrap();
        assert_eq!(c.identity.max_failures_per_account, 3);
    }

    #[test]
    fn listen_limits() {
        let c = Config::from_parts(None, "k", &[]).unwrap();
        let l = c.http_limits;
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        assert_eq!(l.request_timeout, Duration::from_secs(60));
        assert_eq!(l.push_lifetime, Duration::from_secs(3600));
        assert_eq!(l.max_connections.get(), 512);
        assert_eq!(l.max_connections_per_source.map(|n| n.get()), Some(64));
        let c = Config::from_parts(
            Some("[listen]\nheader_read_timeout = \"2s\"\nmax_connections_per_source = 0\n"),
            "k.toml",
            &env(&[
                ("KEYPOST_LISTEN_IDLE_TIMEOUT", "500ms"),
                ("KEYPOST_LISTEN_MAX_CONNECTIONS", "10"),
            ]),
        )
        .unwrap();
        let l = c.http_limits;
        assert_eq!(l.header_read_timeout, Duration::from_secs(2));
        assert_eq!(l.idle_timeout, Duration::from_millis(500));
        assert_eq!(l.max_connections.get(), 10);
        assert_eq!(l.max_connections_per_source, None, "0 is no per-source cap");
        for bad in [
            ("KEYPOST_LISTEN_MAX_CONNECTIONS", "0"),
            ("KEYPOST_LISTEN_MAX_CONNECTIONS", "99999999999"),
            ("KEYPOST_LISTEN_MAX_CONNECTIONS_PER_SOURCE", "99999999999"),
            ("KEYPOST_LISTEN_REQUEST_TIMEOUT", "0s"),
            ("KEYPOST_LISTEN_PUSH_LIFETIME", "soon"),
        ] {
            let err = Config::from_parts(None, "k", &env(&[bad])).unwrap_err();
            let key = bad
                .0
                .trim_start_matches("KEYPOST_LISTEN_")
                .to_ascii_lowercase();
            assert!(format!("{err:#}").contains(&key), "{bad:?}: {err:#}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_parts(Some("[listen]\nhtp = \"x\"\n"), "k.toml", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("htp"), "{err:#}");
        let err = Config::from_parts(Some("colour = 1\n"), "k.toml", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("colour"), "{err:#}");
        let err = Config::from_parts(None, "k", &env(&[("KEYPOST_LISTEN_HTP", "x")])).unwrap_err();
        assert!(format!("{err:#}").contains("KEYPOST_LISTEN_HTP"), "{err:#}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::from_parts(
            Some("[tokens]\naccess_token_ttl = \"ten minutes\"\n"),
            "k.toml",
            &[],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("access_token_ttl"), "{err:#}");
        assert!(Config::from_parts(Some("public_url = \"ftp://x\"\n"), "k.toml", &[]).is_err());
    }
}
