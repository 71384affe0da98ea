//! What alert mail says: one alert (what was observed, the commands to run next), and the
//! summary of the alerts the hourly cap kept from being mailed one by one.
//!
//! Much of what an alert records was presented by whoever made the request (a token's `kid`,
//! `iss`, `sub`, a client id): attacker-chosen text. It is shown only through [`shown`]
//! (control and formatting characters escaped, length bounded), so it cannot add lines or
//! headers to the mail or make it read other than it is, and put into a suggested command only
//! through [`shell_quote`], so pasting the command runs that command and nothing else.

use mail::Draft;
use serde_json::Value;
use store::{Account, Alert, EmailAddress, RealmId, Severity};

use crate::RULES;

/// The longest a presented value is shown in a mail or a title, in characters.
pub(crate) const SHOWN: usize = 200;
/// Held alerts a summary names one by one; the rest are counted.
const SUMMARY_LINES: usize = 50;
/// Values of one list in the details offered as commands (`--kid`, ...).
const COMMANDS_PER_FIELD: usize = 3;

/// Characters that change how text reads without being seen: C0 and C1 controls and DEL
/// (`char::is_control`), the line and paragraph separators, and the zero-width and
/// bidirectional formatting characters (a right-to-left override makes `'gpj.exe'` read
/// `'exe.jpg'`).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `s` as it may appear in an alert's title or mail: backslashes doubled, hidden characters
/// (see `hidden`) written as `\n`, `\r`, `\t` or `\u{202e}`, and at most `max` characters of
/// it, then `…`. What comes out is one line of visible text.
pub(crate) fn shown(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 2));
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Whether `s` is shown as it is (nothing escaped, nothing cut): only such a value is put
/// into a suggested command, where an escaped form would name something else.
fn faithful(s: &str) -> bool {
    shown(s, SHOWN) == s
}

/// `s` quoted for a POSIX shell (XCU 2.2.2): in single quotes, inside which no character is
/// special, each `'` written as `'\''`. Not double quotes: inside those `$`, `` ` ``, `\` stay
/// special, and an interactive bash expands `!` from its history.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A detail's value for the mail: text through [`shown`], lists one item after another.
fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => shown(s, SHOWN),
        Value::Array(items) => items.iter().map(show_value).collect::<Vec<_>>().join(", "),
        other => shown(&other.to_string(), SHOWN),
    }
}

/// The commands that look into an alert: `keypost investigate` for the source, kids and
/// clients it names (each value shell-quoted, and only if shown as it is), or a search of the
/// tenant's log.
fn next_steps(alert: &Alert, tenant: &str) -> Vec<String> {
    let d = &alert.details;
    let mut steps = Vec::new();
    for (keys, flag) in [
        (&["source_ip"][..], "--ip"),
        (&["kids", "kid"][..], "--kid"),
        (&["client_id"][..], "--client"),
    ] {
        let values: Vec<&str> = keys
            .iter()
            .filter_map(|k| d.get(*k))
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                v => v.as_str().into_iter().collect::<Vec<_>>(),
            })
            .take(COMMANDS_PER_FIELD)
            .collect();
        for v in values {
            if faithful(v) {
                steps.push(format!("keypost investigate {flag}={}", shell_quote(v)));
            } else {
                steps.push(format!(
                    "(a {flag} value holds characters shown escaped above: `keypost alerts show {}` has it exactly)",
                    alert.id
                ));
            }
        }
    }
    if steps.is_empty() {
        steps.push(format!(
            "keypost audit search --realm {}",
            shell_quote(tenant)
        ));
    }
    steps
}

fn tenant_of(realm: Option<&RealmId>) -> &str {
    realm.map_or("(provider)", RealmId::as_str)
}

/// One line of text: a title is built with presented values already [`shown`]; anything
/// hidden that still reached it becomes a space.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if hidden(c) { ' ' } else { c }).collect()
}

fn from(sender_domain: &str) -> Vec<EmailAddress> {
    vec![EmailAddress {
        name: Some("Keypost Security".into()),
        email: format!("security@{sender_domain}"),
    }]
}

fn to(account: &Account) -> Vec<EmailAddress> {
    vec![EmailAddress {
        name: Some(account.display_name.clone()),
        email: account.email.clone(),
    }]
}

/// The mail of one alert to `recipient`.
pub(crate) fn alert(alert: &Alert, recipient: &Account, sender_domain: &str) -> Draft {
    let description = RULES
        .iter()
        .find(|(id, _)| *id == alert.rule)
        .map_or("", |(_, d)| d);
    let tenant = tenant_of(alert.realm.as_ref());
    let mut observed = String::new();
    if let Value::Object(m) = &alert.details {
        for (k, v) in m.iter().filter(|(_, v)| !v.is_null()) {
            observed.push_str(&format!("  {k}: {}\n", show_value(v)));
        }
    }
    let steps: String = next_steps(alert, tenant)
        .iter()
        .map(|s| format!("  {s}\n"))
        .collect();
    let title = one_line(&alert.title);
    let body = format!(
        "{title}\n\nSeverity: {severity}\nRule: {rule}\n  {description}\nTenant: {tenant}\nAlert: {id}\n\n\
         What was observed:\n{observed}\nEvidence: audit records {evidence:?}\n\
         (Values a request presented are shown with control characters escaped, at most \
         {SHOWN} characters each. Repeats are counted on the alert: `keypost alerts show {id}`.)\n\n\
         Next steps:\n{steps}  keypost alerts ack {id}    (then: keypost alerts resolve {id})\n",
        severity = alert.severity,
        rule = alert.rule,
        id = alert.id,
        evidence = alert.evidence,
    );
    Draft {
        from: from(sender_domain),
        to: to(recipient),
        subject: Some(format!(
            "[Keypost] {} alert: {title}",
            alert.severity.as_str().to_uppercase()
        )),
        sent_at: Some(alert.first_seen),
        headers: vec![
            ("X-Keypost-Alert".into(), alert.id.to_string()),
            ("X-Keypost-Rule".into(), alert.rule.clone()),
            ("Auto-Submitted".into(), "auto-generated".into()),
        ],
        text: Some(body),
        ..Default::default()
    }
}

/// The summary mail of the alerts of one tenant (or the provider) that the hourly cap held
/// back, to `recipient`.
pub(crate) fn summary(
    realm: Option<&RealmId>,
    held: &[Alert],
    cap: u32,
    recipient: &Account,
    sender_domain: &str,
    sent_at: i64,
) -> Draft {
    let tenant = tenant_of(realm);
    let n = held.len();
    let mut lines: String = held
        .iter()
        .take(SUMMARY_LINES)
        .map(|a| {
            format!(
                "  #{id} {severity} {rule}: {title}\n",
                id = a.id,
                severity = a.severity,
                rule = a.rule,
                title = one_line(&a.title),
            )
        })
        .collect();
    if n > SUMMARY_LINES {
        lines.push_str(&format!("  ... and {} more\n", n - SUMMARY_LINES));
    }
    let worst = held.iter().map(|a| a.severity).max_by_key(|s| rank(*s));
    let body = format!(
        "Alert mail for {tenant} is capped at {cap} messages an hour, and the cap was reached: \
         these {n} more alerts were raised and stored without a mail of their own \
         (each counts its repeats).\n\n{lines}\n\
         Next steps:\n  keypost alerts list --realm {realm_arg} --status open\n  keypost alerts show ID\n",
        realm_arg = shell_quote(tenant),
    );
    Draft {
        from: from(sender_domain),
        to: to(recipient),
        subject: Some(format!(
            "[Keypost] {n} more {} alerts for {tenant} (mail capped at {cap} an hour)",
            worst.map_or("", |s| s.as_str()).to_uppercase()
        )),
        sent_at: Some(sent_at),
        headers: vec![
            ("X-Keypost-Alert-Summary".into(), n.to_string()),
            ("Auto-Submitted".into(), "auto-generated".into()),
        ],
        text: Some(body),
        ..Default::default()
    }
}

/// Severities in order, low first.
pub(crate) fn rank(s: Severity) -> u8 {
    match s {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_values_are_one_bounded_line() {
        assert_eq!(shown("k1", SHOWN), "k1");
        assert_eq!(shown("a\nb\\n", SHOWN), "a\\nb\\\\n");
        assert_eq!(shown("x\u{202e}gpj", SHOWN), "x\\u{202e}gpj");
        assert_eq!(shown("\u{1b}[2J", SHOWN), "\\u{1b}[2J");
        assert_eq!(shown(&"é".repeat(300), 3), "ééé…");
        assert!(faithful("kid-2026-01"));
        assert!(!faithful("kid\n"));
        assert!(!faithful(&"k".repeat(SHOWN + 1)));
    }

    #[test]
    fn shell_quoting_is_posix_single_quotes() {
        assert_eq!(shell_quote("k1"), "'k1'");
        assert_eq!(shell_quote("y'; rm -rf / #"), "'y'\\''; rm -rf / #'");
        assert_eq!(shell_quote("$(id)`id`!x"), "'$(id)`id`!x'");
        assert_eq!(shell_quote(""), "''");
    }
}
