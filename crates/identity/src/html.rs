//! The server-rendered pages: the login form, the error page, the signed-out page. Plain HTML,
//! no scripts, so there is nothing for a page script to steal.

/// Escapes text for HTML element content and double-quoted attributes. Hand-written because
/// it is five replacements; every dynamic value on these pages goes through it.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0 .2rem}}input[type=email],input[type=password],input[type=text]{{width:100%;padding:.5rem;box-sizing:border-box}}
button{{margin-top:1rem;padding:.5rem 1.5rem}}.error{{color:#b00020}}</style></head>
<body>{body}</body></html>"#,
        title = esc(title)
    )
}

/// Hidden inputs posting `hidden` back as is.
fn hidden_fields(hidden: &[(String, String)]) -> String {
    let mut fields = String::new();
    for (k, v) in hidden {
        fields.push_str(&format!(
            r#"<input type="hidden" name="{}" value="{}">"#,
            esc(k),
            esc(v)
        ));
        fields.push('\n');
    }
    fields
}

/// The sign-in form. `hidden` are the authorization request's parameters, posted back as is.
/// With `change_password` it also asks for a new password: a temporary password must be
/// replaced before the sign-in completes.
pub(crate) fn login(
    realm_name: &str,
    action: &str,
    hidden: &[(String, String)],
    username: &str,
    error: Option<&str>,
    change_password: bool,
) -> String {
    let fields = hidden_fields(hidden);
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, esc(e)))
        .unwrap_or_default();
    let (heading, password_label, extra, button) = if change_password {
        (
            "Choose a new password",
            "Current (temporary) password",
            r#"<label for="new_password">New password (at least 8 characters)</label><input id="new_password" name="new_password" type="password" autocomplete="new-password" required minlength="8">
<label for="confirm_password">New password again</label><input id="confirm_password" name="confirm_password" type="password" autocomplete="new-password" required minlength="8">
"#,
            "Change password and sign in",
        )
    } else {
        ("Sign in", "Password", "", "Sign in")
    };
    page(
        &format!("Sign in to {realm_name}"),
        &format!(
            r#"<h1>{heading}</h1><p>to <strong>{realm}</strong></p>{error}
<form method="post" action="{action}">
{fields}<label for="username">Email</label><input id="username" name="username" type="email" autocomplete="username" required value="{user}">
<label for="password">{password_label}</label><input id="password" name="password" type="password" autocomplete="current-password" required>
{extra}<button type="submit">{button}</button>
</form>"#,
            realm = esc(realm_name),
            action = esc(action),
            user = esc(username),
        ),
    )
}

/// An error page, for requests we cannot redirect back (unknown client or redirect URI).
pub(crate) fn error(message: &str) -> String {
    page(
        "Sign-in error",
        &format!(
            r#"<h1>Sign-in error</h1><p class="error">{}</p>"#,
            esc(message)
        ),
    )
}

/// Asks before a sign-out nothing else shows the user wants (a link from anywhere, an ID
/// token presented without this browser's session). `hidden` are posted back as is.
pub(crate) fn confirm_sign_out(
    realm_name: &str,
    action: &str,
    hidden: &[(String, String)],
) -> String {
    let fields = hidden_fields(hidden);
    page(
        "Sign out?",
        &format!(
            r#"<h1>Sign out?</h1><p>Sign out of <strong>{realm}</strong> in this browser? Every application you signed in to with it loses its session.</p>
<form method="post" action="{action}">
{fields}<button type="submit">Sign out</button>
</form>"#,
            realm = esc(realm_name),
            action = esc(action),
        ),
    )
}

/// Shown after sign-out when there is nowhere to redirect to.
pub(crate) fn signed_out() -> String {
    page(
        "Signed out",
        "<h1>Signed out</h1><p>You are signed out. You can close this window.</p>",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            super::esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let page = super::login(
            "R",
            "/x",
            &[("state".into(), "\"><script>alert(1)</script>".into())],
            "",
            None,
            false,
        );
        assert!(!page.contains("<script>alert"));
    }
}
