//! Audit records for other systems: JSON Lines as stored, or shaped as OCSF events (Open
//! Cybersecurity Schema Framework 1.1) for SIEMs that speak it.

use serde_json::{Value, json};
use store::AuditRecord;

/// OCSF class and activity of an operation: sign-ins and token checks are Authentication
/// (3002), admin changes are Entity Management (3004), everything else (mail reads and
/// changes, key events, alerts) API Activity (6003).
fn class(operation: &str) -> (u32, u32, u32, &'static str) {
    match operation {
        "SignInSucceeded" | "SignInFailed" | "SignInThrottled" => (3, 3002, 1, "Logon"),
        "SessionEnded" | "SessionsRevoked" => (3, 3002, 2, "Logoff"),
        "TokenIssued" => (3, 3002, 3, "Authentication Ticket"),
        "TokenRejected" | "RefreshTokenReused" | "AuthCodeReused" => (3, 3002, 99, "Other"),
        "TokenRevoked" => (3, 3002, 2, "Logoff"),
        "AccountCreated" | "TenantCreated" | "ClientCreated" => (3, 3004, 1, "Create"),
        "AccountDisabled" | "PasswordChanged" | "SettingsChanged" => (3, 3004, 3, "Update"),
        "MailItemsAccessed" | "MailboxQueried" => (6, 6003, 2, "Read"),
        "MailItemsUpdated" | "MailImported" | "MailDelivered" | "MailSent" => {
            (6, 6003, 3, "Update")
        }
        "KeyCreated" | "KeyImported" => (6, 6003, 1, "Create"),
        "KeyRevoked" => (6, 6003, 4, "Delete"),
        "SigningRefused" => (6, 6003, 99, "Other"),
        _ => (6, 6003, 99, "Other"),
    }
}

/// One record as an OCSF event.
pub fn ocsf(r: &AuditRecord) -> Value {
    let (category, class_uid, activity, activity_name) = class(&r.operation);
    let success = r.result == "success";
    let severity = match (r.operation.as_str(), success) {
        ("TokenRejected", _) if r.details.get("critical") == Some(&Value::Bool(true)) => 5,
        ("AlertRaised", _) => match r.details.get("severity").and_then(Value::as_str) {
            Some("critical") => 5,
            Some("high") => 4,
            Some("medium") => 3,
            _ => 2,
        },
        (_, false) => 3,
        _ => 1,
    };
    json!({
        "time": r.time * 1000,
        "category_uid": category,
        "class_uid": class_uid,
        "activity_id": activity,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity,
        "severity_id": severity,
        "status_id": if success { 1 } else { 2 },
        "status": if success { "Success" } else { "Failure" },
        "message": r.operation,
        "actor": {"user": {"name": r.actor}, "app_name": r.client_id},
        "user": {"name": r.target},
        "src_endpoint": {"ip": r.source_ip},
        "http_request": {"user_agent": r.user_agent},
        "api": {"operation": r.details.get("operation").cloned().unwrap_or_else(|| json!(r.operation))},
        "metadata": {
            "version": "1.1.0",
            "uid": r.id.to_string(),
            "log_name": "keypost-audit",
            "tenant_uid": r.realm,
            "product": {"name": "Keypost", "vendor_name": "Keypost"},
        },
        "unmapped": {"jti": r.jti, "kid": r.kid, "details": r.details},
    })
}

/// RFC 5424 `PARAM-VALUE` escaping: `"`, `\` and `]` take a backslash.
fn sd_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

/// One record as an RFC 5424 syslog message (facility log audit), the record's JSON as MSG.
/// Severity: critical for a refusal that suggests a stolen key or a critical alert, warning
/// for other failures, informational otherwise.
pub fn syslog(r: &AuditRecord, hostname: &str) -> String {
    const FACILITY_LOG_AUDIT: u32 = 13;
    let critical = r.details.get("critical") == Some(&Value::Bool(true))
        || r.details.get("severity").and_then(Value::as_str) == Some("critical");
    let severity = if critical {
        2
    } else if r.result != "success" {
        4
    } else {
        6
    };
    let time = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.time.max(0) as u64),
    );
    let realm = r.realm.as_ref().map_or("", |x| x.as_str());
    format!(
        "<{}>1 {time} {} keypost - {} [keypost@32473 id=\"{}\" realm=\"{}\" result=\"{}\"] {}",
        FACILITY_LOG_AUDIT * 8 + severity,
        if hostname.is_empty() { "-" } else { hostname },
        r.operation,
        r.id,
        sd_value(realm),
        sd_value(&r.result),
        serde_json::to_string(r).unwrap_or_default(),
    )
}
