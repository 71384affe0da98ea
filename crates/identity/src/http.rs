//! The OAuth 2 / OIDC HTTP surface of every realm. Handlers extract, call the service on a
//! blocking thread (Argon2 and SQLite must not stall the async workers), and map the result.

use std::net::SocketAddr;
use std::sync::Arc;

use audit::Source;
use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, RawQuery, State,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;
use store::RealmId;
use tokens::Audience;
use zeroize::Zeroizing;

use crate::service::{
    AuthRequest, AuthorizeError, AuthorizeParams, Decision, Identity, LogoutOutcome, SCOPES,
};
use crate::{Error, OAuthError, html, now};

/// Largest request body any identity endpoint accepts.
const BODY_LIMIT: usize = 64 * 1024;
/// How long a client may take to send its request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The identity routes, under `/realms/{realm}/...`, plus `/healthz`.
pub fn router(identity: Arc<Identity>) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/realms/{realm}/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/realms/{realm}/jwks", get(jwks))
        .route("/realms/{realm}/key-history", get(key_history))
        .route("/realms/{realm}/audit-checkpoints", get(audit_checkpoints))
        .route("/realms/{realm}/authorize", get(authorize))
        .route("/realms/{realm}/login", post(login))
        .route("/realms/{realm}/token", post(token))
        .route("/realms/{realm}/userinfo", get(userinfo).post(userinfo))
        .route("/realms/{realm}/revoke", post(revoke))
        .route("/realms/{realm}/logout", get(logout_get).post(logout_post))
        .route("/admin/audit", get(crate::admin::audit_log))
        .route("/admin/alerts", get(crate::admin::alerts))
        // Layers run bottom-up on the way in. Bounded bodies everywhere: the largest legitimate
        // request is a login form. A client that trickles its body is cut off. How long a
        // request may take in all is the HTTP edge's one deadline for every route
        // (`listen.request_timeout`), not each router's.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ))
        .with_state(identity);
    guard_panics(routes)
}

/// A handler that panics (a bug) answers RFC 6749's `server_error` (500) instead of dropping
/// the connection unanswered. The panic's message is not repeated here: it may quote request
/// data, and the panic hook has already said where it happened.
fn guard_panics(routes: Router) -> Router {
    routes.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |_: Box<dyn std::any::Any + Send>| {
            tracing::error!("a request handler panicked; answered server_error");
            no_store(OAuthError::server_error().into_response())
        },
    ))
}

type St = State<Arc<Identity>>;

/// Where the request came from, for audit and throttling: the client behind a trusted proxy
/// (`listen.trusted_proxies`), else the peer.
pub(crate) struct ClientSource(pub(crate) Source);

impl FromRequestParts<Arc<Identity>> for ClientSource {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut Parts,
        id: &Arc<Identity>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let header = |name| {
            parts
                .headers
                .get_all(name)
                .into_iter()
                .filter_map(|v| v.to_str().ok())
        };
        let user_agent = header(header::USER_AGENT).next();
        let forwarded = header(header::HeaderName::from_static("x-forwarded-for"));
        let trusted = &id.config().trusted_proxies;
        Ok(ClientSource(Source::of_http(
            peer, forwarded, user_agent, trusted,
        )))
    }
}

pub(crate) async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| OAuthError::from(e).into_response())
}

fn realm_of(id: &Identity, raw: &str) -> Result<RealmId, OAuthError> {
    let realm = RealmId::new(raw).map_err(|_| OAuthError::unknown_realm())?;
    match id.realm(&realm) {
        Ok(Some(_)) => Ok(realm),
        Ok(None) => Err(OAuthError::unknown_realm()),
        Err(e) => Err(e.into()),
    }
}

/// Form or query parameters. RFC 6749 §3.1: a parameter must not repeat (except RFC 8707's
/// `resource`), and empty values count as absent.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    fn parse(bytes: &[u8]) -> Result<Self, OAuthError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(bytes) {
            if v.is_empty() {
                continue;
            }
            if k != "resource" && out.iter().any(|(ek, _)| ek == &k) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {k:?} repeated"
                )));
            }
            out.push((k.into_owned(), v.into_owned()));
        }
        Ok(Params(out))
    }

    fn form(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(OAuthError::invalid_request(
                "expected application/x-www-form-urlencoded",
            ));
        }
        Self::parse(body)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(ek, _)| ek == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

const AUTHORIZE_FIELDS: [&str; 10] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
];

// The service owns the parameters' type; reading them from a query or form is this layer's.
impl AuthorizeParams {
    fn from(p: &Params) -> Self {
        let g = |k: &str| p.get(k).map(str::to_owned);
        Self {
            client_id: g("client_id"),
            redirect_uri: g("redirect_uri"),
            response_type: g("response_type"),
            scope: g("scope"),
            state: g("state"),
            nonce: g("nonce"),
            code_challenge: g("code_challenge"),
            code_challenge_method: g("code_challenge_method"),
            prompt: g("prompt"),
            max_age: g("max_age"),
            resource: p.all("resource"),
        }
    }

    /// The parameters as hidden form fields, to carry through the login form.
    fn hidden(p: &Params) -> Vec<(String, String)> {
        p.0.iter()
            .filter(|(k, _)| AUTHORIZE_FIELDS.contains(&k.as_str()) || k == "resource")
            .cloned()
            .collect()
    }
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", ser.finish())
}

fn see_other(location: &str) -> Response {
    let mut r = Redirect::to(location).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

fn page(status: StatusCode, body: String) -> Response {
    form_page(status, body, None)
}

/// A page whose form, once posted here, redirects to `then` (an application's registered
/// redirect URI, already checked). Chrome and Safari hold the redirect that answers a form to
/// `form-action` as well (w3c/webappsec-csp#8): with `'self'` alone the sign-in would end on
/// a blocked page, so that URI's origin is allowed too — and nothing else.
fn form_page(status: StatusCode, body: String, then: Option<&str>) -> Response {
    let mut r = (status, Html(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Our pages are never framed (clickjacking on the login form) and load nothing foreign.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let targets = match then.and_then(origin_of) {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".into(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action {targets}; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// `scheme://host[:port]` of an http(s) URI, as a CSP source; `None` for anything with a byte a
/// source expression may not carry (nothing then widens the policy).
fn origin_of(uri: &str) -> Option<&str> {
    let scheme_end = uri.find("://")? + 3;
    let scheme = &uri[..scheme_end];
    if scheme != "https://" && scheme != "http://" {
        return None;
    }
    let len = uri[scheme_end..]
        .find(['/', '?', '#'])
        .unwrap_or(uri.len() - scheme_end);
    let origin = &uri[..scheme_end + len];
    let authority = &origin[scheme_end..];
    let plain = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    plain.then_some(origin)
}

fn cookie_name(realm: &RealmId) -> String {
    format!("kp_sid_{realm}")
}

fn session_cookie(headers: &HeaderMap, realm: &RealmId) -> Option<String> {
    cookie(headers, &cookie_name(realm))
}

/// The forms that carry an anti-CSRF value, each under its own cookie (so one open in another
/// tab does not spoil the other).
#[derive(Clone, Copy)]
enum Form {
    SignIn,
    SignOut,
}

fn csrf_cookie_name(realm: &RealmId, form: Form) -> String {
    match form {
        Form::SignIn => format!("kp_csrf_{realm}"),
        Form::SignOut => format!("kp_csrf_out_{realm}"),
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

// ---- discovery and keys ---------------------------------------------------------------------

async fn discovery(State(id): St, Path(realm): Path<String>) -> Response {
    blocking(move || {
        let realm = match realm_of(&id, &realm) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let iss = id.issuer(&realm);
        Json(json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "userinfo_endpoint": format!("{iss}/userinfo"),
            "jwks_uri": format!("{iss}/jwks"),
            "revocation_endpoint": format!("{iss}/revoke"),
            "end_session_endpoint": format!("{iss}/logout"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "password"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": SCOPES,
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "sid", "email", "email_verified", "name", "preferred_username"],
            "authorization_response_iss_parameter_supported": true,
            "access_token_issuer": iss,
        }))
        .into_response()
    })
    .await
}

/// Public key material of one realm, computed by `f`, as JSON that relying parties may cache
/// briefly (so a revoked key leaves their caches quickly).
async fn public_keys<T: serde::Serialize + Send + 'static>(
    id: Arc<Identity>,
    realm: String,
    f: impl FnOnce(&Identity, &RealmId) -> Result<T, keys::Error> + Send + 'static,
) -> Response {
    blocking(move || {
        let realm = match realm_of(&id, &realm) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        match f(&id, &realm) {
            Ok(v) => {
                let mut r = Json(v).into_response();
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=60"),
                );
                r
            }
            Err(e) => OAuthError::from(Error::from(e)).into_response(),
        }
    })
    .await
}

/// Every key the realm ever had, with its life and public key (issue 5: relying parties and
/// auditors can see every key that was ever valid).
async fn key_history(State(id): St, Path(realm): Path<String>) -> Response {
    public_keys(id, realm, |id, realm| {
        let keys = id.custody().history(realm, now())?;
        Ok(serde_json::json!({"realm": realm, "keys": keys}))
    })
    .await
}

/// The realm's signed audit checkpoints, oldest first, a page at a time (`?after=N`, the
/// `next` of the previous page; `&limit=`; `&chain=provider` on `consumers` for the provider's
/// chain, which the consumer realm's audit key signs). Public, like a transparency log's signed
/// tree heads: an auditor or a second site mirrors them, and `keypost audit verify --against`
/// later proves the log still holds every one of them. They say how many records a chain
/// holds and when it grew, nothing of what the records say.
async fn audit_checkpoints(
    State(id): St,
    Path(realm): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    blocking(move || {
        let realm = match realm_of(&id, &realm) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let number = |k: &str| q.get(k).map(|v| v.parse::<u64>());
        let (after, limit) = match (number("after"), number("limit")) {
            (Some(Err(_)), _) | (_, Some(Err(_))) => {
                return OAuthError::invalid_request("after and limit are whole numbers")
                    .into_response();
            }
            (a, l) => (
                a.and_then(Result::ok).unwrap_or(0),
                l.and_then(Result::ok)
                    .unwrap_or(audit::published::PAGE_LIMIT)
                    .clamp(1, audit::published::PAGE_LIMIT),
            ),
        };
        let chain = match q.get("chain").map(String::as_str) {
            None => realm.as_str(),
            Some("provider") if realm.as_str() == "consumers" => "",
            Some(_) => {
                return OAuthError::invalid_request("chain=provider is served by consumers only")
                    .into_response();
            }
        };
        // One more than asked for says whether there is a next page.
        match id.store().checkpoints_after(chain, after, limit + 1) {
            Ok(mut page) => {
                let more = page.len() as u64 > limit;
                page.truncate(limit as usize);
                let mut r =
                    Json(audit::published::page(realm.as_str(), &page, more)).into_response();
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=60"),
                );
                r
            }
            Err(e) => OAuthError::from(Error::from(e)).into_response(),
        }
    })
    .await
}

async fn jwks(State(id): St, Path(realm): Path<String>) -> Response {
    public_keys(id, realm, |id, realm| id.custody().jwks(realm, now())).await
}

// ---- authorization code flow ----------------------------------------------------------------

/// An error for the client, sent back to its (already checked) redirect URI.
fn redirect_error(req: &AuthRequest, error: &'static str, description: &str) -> AuthorizeError {
    AuthorizeError::Redirect {
        redirect_uri: req.redirect_uri.clone(),
        error,
        description: description.to_owned(),
        state: req.state.clone(),
    }
}

fn authorize_error(e: AuthorizeError, iss: &str) -> Response {
    match e {
        AuthorizeError::Page(msg) => page(StatusCode::BAD_REQUEST, html::error(msg)),
        AuthorizeError::Redirect {
            redirect_uri,
            error,
            description,
            state,
        } => {
            let mut pairs = vec![
                ("error", error),
                ("error_description", description.as_str()),
                ("iss", iss),
            ];
            if let Some(s) = &state {
                pairs.push(("state", s));
            }
            see_other(&with_query(&redirect_uri, &pairs))
        }
    }
}

fn code_redirect(id: &Identity, req: &crate::service::AuthRequest, code: &str) -> Response {
    let iss = id.issuer(&req.realm);
    let mut pairs = vec![("code", code), ("iss", iss.as_str())];
    if let Some(s) = &req.state {
        pairs.push(("state", s));
    }
    see_other(&with_query(&req.redirect_uri, &pairs))
}

async fn authorize(
    State(id): St,
    Path(realm): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    blocking(move || {
        let realm = match realm_of(&id, &realm) {
            Ok(r) => r,
            Err(_) => return page(StatusCode::NOT_FOUND, html::error("unknown realm")),
        };
        let params = match Params::parse(q.unwrap_or_default().as_bytes()) {
            Ok(p) => p,
            Err(e) => return page(StatusCode::BAD_REQUEST, html::error(&e.description)),
        };
        let ap = AuthorizeParams::from(&params);
        let iss = id.issuer(&realm);
        let req = match id.check_authorize(&realm, &ap) {
            Ok(r) => r,
            Err(e) => return authorize_error(e, &iss),
        };
        let t = now();
        // OpenID Connect Core §3.1.2.1: `prompt` is a list ("none" alone); `max_age` bounds
        // how long ago the user last entered their password.
        let prompts: Vec<&str> = ap
            .prompt
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|p| !p.is_empty())
            .collect();
        let silent = prompts.contains(&"none");
        let max_age = match ap.max_age.as_deref().map(str::parse::<i64>) {
            None => None,
            Some(Ok(m)) if m >= 0 => Some(m),
            Some(_) => {
                return authorize_error(
                    redirect_error(
                        &req,
                        "invalid_request",
                        "max_age must be a number of seconds",
                    ),
                    &iss,
                );
            }
        };
        if silent && prompts.len() > 1 {
            return authorize_error(
                redirect_error(&req, "invalid_request", "prompt=none stands alone"),
                &iss,
            );
        }
        // Single sign-on: an existing session of this realm skips the form unless the client
        // asked for a fresh sign-in, or one more recent than the session's.
        let session = (!prompts.contains(&"login"))
            .then(|| session_cookie(&headers, &realm).and_then(|c| id.live_session(&realm, &c, t)))
            .flatten()
            .filter(|(s, _)| max_age.is_none_or(|m| t - s.auth_time <= m));
        if let Some((session, _)) = session {
            return match id.issue_code(&req, &session, t) {
                Ok(code) => code_redirect(&id, &req, &code),
                Err(e) => authorize_error(e.into(), &iss),
            };
        }
        if silent {
            // The client asked not to show the user anything: it learns it must.
            return authorize_error(
                redirect_error(&req, "login_required", "the user must sign in"),
                &iss,
            );
        }
        // A fresh anti-CSRF value per form: the POST must carry it both as a field and as a
        // SameSite=Strict cookie, which a cross-site form post (login CSRF) cannot do.
        let csrf = match crate::service::random_b64(32) {
            Ok(c) => c,
            Err(e) => return authorize_error(e.into(), &iss),
        };
        let mut r = login_page(&id, &realm, &params, &csrf, "", None, false, StatusCode::OK);
        set_csrf_cookie(&id, &realm, Form::SignIn, &csrf, &mut r);
        r
    })
    .await
}

/// Sends a form's anti-CSRF value as a SameSite=Strict cookie too: a form posted from another
/// site cannot carry it ([`csrf_ok`]).
fn set_csrf_cookie(id: &Identity, realm: &RealmId, form: Form, csrf: &str, r: &mut Response) {
    let cookie = format!(
        "{}={csrf}; Path=/realms/{realm}; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        csrf_cookie_name(realm, form),
        secure_attr(id)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Whether a posted form carries the anti-CSRF value of its cookie ([`set_csrf_cookie`]).
fn csrf_ok(headers: &HeaderMap, realm: &RealmId, form: Form, params: &Params) -> bool {
    let csrf = params.get("csrf").unwrap_or("");
    cookie(headers, &csrf_cookie_name(realm, form)).is_some_and(|c| {
        !csrf.is_empty() && bool::from(subtle::ConstantTimeEq::ct_eq(c.as_bytes(), csrf.as_bytes()))
    })
}

/// The realm's display name, for pages.
fn realm_name(id: &Identity, realm: &RealmId) -> String {
    id.realm(realm)
        .ok()
        .flatten()
        .map(|r| r.display_name)
        .unwrap_or_else(|| realm.to_string())
}

fn secure_attr(id: &Identity) -> &'static str {
    if id.config().public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

#[allow(clippy::too_many_arguments)] // Everything one rendering of the form shows.
fn login_page(
    id: &Identity,
    realm: &RealmId,
    params: &Params,
    csrf: &str,
    username: &str,
    error: Option<&str>,
    change_password: bool,
    status: StatusCode,
) -> Response {
    let name = realm_name(id, realm);
    let mut hidden = AuthorizeParams::hidden(params);
    hidden.push(("csrf".into(), csrf.into()));
    // Every caller rendered this for an authorization request it checked: the redirect URI
    // is one the client registered.
    let then = params.get("redirect_uri");
    form_page(
        status,
        html::login(
            &name,
            &format!("/realms/{realm}/login"),
            &hidden,
            username,
            error,
            change_password,
        ),
        then,
    )
}

async fn login(
    State(id): St,
    Path(realm): Path<String>,
    ClientSource(src): ClientSource,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    blocking(move || {
        let realm = match realm_of(&id, &realm) {
            Ok(r) => r,
            Err(_) => return page(StatusCode::NOT_FOUND, html::error("unknown realm")),
        };
        let params = match Params::form(&headers, &body) {
            Ok(p) => p,
            Err(e) => return page(StatusCode::BAD_REQUEST, html::error(&e.description)),
        };
        let csrf = params.get("csrf").unwrap_or("");
        if !csrf_ok(&headers, &realm, Form::SignIn, &params) {
            return page(
                StatusCode::BAD_REQUEST,
                html::error("This sign-in form has expired or did not come from this site. Go back to the application and start again."),
            );
        }
        let iss = id.issuer(&realm);
        let req = match id.check_authorize(&realm, &AuthorizeParams::from(&params)) {
            Ok(r) => r,
            Err(e) => return authorize_error(e, &iss),
        };
        let username = params.get("username").unwrap_or("");
        let password = params.get("password").unwrap_or("");
        let t = now();
        // The form asks for a new password when the account's is temporary (and keeps asking
        // until one is accepted).
        let changing = params.get("new_password").is_some();
        let outcome = if changing {
            let new = params.get("new_password").unwrap_or("");
            let confirm = params.get("confirm_password").unwrap_or("");
            id.change_password_at_sign_in(&realm, username, password, new, confirm, &req.client.client_id, &src, t)
        } else {
            id.sign_in(&realm, username, password, &req.client.client_id, &src, t)
        };
        let account = match outcome {
            Ok(a) if a.must_change_password => {
                let msg = "Your password is temporary. Choose a new one to continue.";
                return login_page(&id, &realm, &params, csrf, username, Some(msg), true, StatusCode::OK);
            }
            Ok(a) => a,
            Err(e) => {
                let status = StatusCode::UNAUTHORIZED;
                return login_page(&id, &realm, &params, csrf, username, Some(&e.description), changing, status);
            }
        };
        let result = id
            .new_session(&realm, &account, t)
            .and_then(|(s, cookie)| Ok((id.issue_code(&req, &s, t)?, cookie)));
        match result {
            Ok((code, session_cookie)) => {
                let mut r = code_redirect(&id, &req, &code);
                let secure = secure_attr(&id);
                let cookie = Zeroizing::new(format!(
                    "{}={}; Path=/realms/{realm}; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
                    cookie_name(&realm),
                    session_cookie.value(),
                    id.config().session_ttl
                ));
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(e) => authorize_error(e.into(), &iss),
        }
    })
    .await
}

// ---- token endpoint -------------------------------------------------------------------------

/// Client credentials from HTTP Basic (RFC 6749 §2.3.1: each part form-urlencoded) or the body.
fn client_credentials(
    headers: &HeaderMap,
    p: &Params,
) -> Result<(Option<String>, Option<String>), OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then(|| rest.trim().to_owned())
        });
    match basic {
        Some(b64) => {
            if p.get("client_secret").is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method",
                ));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| OAuthError::invalid_request("malformed Basic credentials"))?;
            let (u, s) = raw
                .split_once(':')
                .ok_or_else(|| OAuthError::invalid_request("malformed Basic credentials"))?;
            let dec = |x: &str| {
                form_urlencoded::parse(format!("x={x}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            let (u, s) = (dec(u), dec(s));
            if let (Some(form_id), Some(u)) = (p.get("client_id"), &u)
                && form_id != u
            {
                return Err(OAuthError::invalid_request(
                    "client_id does not match the credentials",
                ));
            }
            Ok((u, s))
        }
        None => Ok((
            p.get("client_id").map(str::to_owned),
            p.get("client_secret").map(str::to_owned),
        )),
    }
}

/// The client a token or revocation request authenticates as (RFC 6749 §2.3).
fn authenticated_client(
    id: &Identity,
    realm: &RealmId,
    headers: &HeaderMap,
    p: &Params,
) -> Result<store::Client, OAuthError> {
    let (cid, secret) = client_credentials(headers, p)?;
    id.authenticate_client(realm, cid.as_deref(), secret.as_deref())
}

pub(crate) fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// Decides a token request: the realm, the client's authentication and the grant's checks.
/// What it decides to issue is minted by [`Identity::finish`].
fn decide_grant(
    id: &Identity,
    realm: &str,
    headers: &HeaderMap,
    p: &Params,
    src: &Source,
) -> Result<Decision, OAuthError> {
    let realm = realm_of(id, realm)?;
    let grant = p
        .get("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
    if ![
        "authorization_code",
        "refresh_token",
        "client_credentials",
        "password",
    ]
    .contains(&grant)
    {
        return Err(OAuthError::unsupported_grant_type(format!(
            "unsupported grant_type {grant:?}"
        )));
    }
    let client = authenticated_client(id, &realm, headers, p)?;
    let t = now();
    let required = |k: &str| {
        p.get(k)
            .ok_or_else(|| OAuthError::invalid_request(format!("{k} is required")))
    };
    let issue = match grant {
        "authorization_code" => id.grant_code(
            &realm,
            &client,
            required("code")?,
            p.get("redirect_uri"),
            p.get("code_verifier"),
            src,
            t,
        ),
        "refresh_token" => {
            return id.grant_refresh(
                &realm,
                &client,
                required("refresh_token")?,
                p.get("scope"),
                src,
                t,
            );
        }
        "client_credentials" => {
            id.grant_client_credentials(&realm, &client, p.get("scope"), &p.all("resource"), src, t)
        }
        _ => id.grant_password(
            &realm,
            &client,
            required("username")?,
            required("password")?,
            p.get("scope"),
            &p.all("resource"),
            src,
            t,
        ),
    };
    issue.map(|i| Decision::Issue(Box::new(i)))
}

async fn token(
    State(id): St,
    Path(realm): Path<String>,
    ClientSource(src): ClientSource,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match Params::form(&headers, &body) {
        Ok(p) => p,
        Err(e) => return no_store(e.into_response()),
    };
    // client_credentials and refresh_token only read (the realm and the client from memory, a
    // hash comparison; a refresh token's ledger row, its session and its account): microseconds,
    // on readers kept for such lookups (never held by a search), so less than handing them to
    // the blocking pool would cost (measured: +11 % refreshes/s). The other grants may hash a
    // password or wait for a durable write, so they run on a blocking thread, as do a refused
    // refresh token's writes. Minting — the signer process and the ledger write — is awaited
    // either way.
    let decided = if matches!(
        p.get("grant_type"),
        Some("client_credentials" | "refresh_token")
    ) {
        Ok(decide_grant(&id, &realm, &headers, &p, &src))
    } else {
        let id = id.clone();
        tokio::task::spawn_blocking(move || decide_grant(&id, &realm, &headers, &p, &src)).await
    };
    let response = match decided {
        Ok(Ok(Decision::Issue(issue))) => match id.finish(*issue).await {
            Ok(tr) => Json(tr).into_response(),
            Err(e) => e.into_response(),
        },
        Ok(Ok(Decision::RefuseRefresh(refusal))) => {
            id.refuse_refresh(refusal).await.into_response()
        }
        Ok(Err(e)) => e.into_response(),
        Err(e) => OAuthError::from(e).into_response(),
    };
    no_store(response)
}

// ---- resource-side endpoints ----------------------------------------------------------------

/// The `Authorization` header, as the token edge takes it.
pub(crate) fn authorization(headers: &HeaderMap) -> tokens::Presentation<'_> {
    // A header that is not visible ASCII is presented as nothing readable: malformed.
    tokens::Presentation::Authorization(
        headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}")),
    )
}

async fn userinfo(
    State(id): St,
    Path(realm): Path<String>,
    ClientSource(src): ClientSource,
    headers: HeaderMap,
) -> Response {
    blocking(move || {
        let result = (|| {
            let realm = realm_of(&id, &realm)?;
            let access = tokens::Access {
                resource: tokens::Resource::Realm(&realm),
                audience: Audience::Userinfo,
                scope: Some("openid"),
                source: &src,
                now: now(),
            };
            let p = id.authenticate(authorization(&headers), &access, realm.as_str())?;
            id.userinfo(&p)
        })();
        no_store(match result {
            Ok(v) => Json(v).into_response(),
            Err(e) => e.into_response(),
        })
    })
    .await
}

async fn revoke(
    State(id): St,
    Path(realm): Path<String>,
    ClientSource(src): ClientSource,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    blocking(move || {
        let result = (|| {
            let realm = realm_of(&id, &realm)?;
            let p = Params::form(&headers, &body)?;
            let client = authenticated_client(&id, &realm, &headers, &p)?;
            let token = p
                .get("token")
                .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
            id.revoke(&realm, &client, token, &src, now())
        })();
        match result {
            Ok(()) => no_store(StatusCode::OK.into_response()),
            Err(e) => e.into_response(),
        }
    })
    .await
}

async fn logout_get(
    State(id): St,
    Path(realm): Path<String>,
    ClientSource(src): ClientSource,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = q.unwrap_or_default().into_bytes();
    blocking(move || logout(&id, &realm, &src, &headers, Params::parse(&q))).await
}

async fn logout_post(
    State(id): St,
    Path(realm): Path<String>,
    ClientSource(src): ClientSource,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    blocking(move || logout(&id, &realm, &src, &headers, Params::form(&headers, &body))).await
}

fn logout(
    id: &Identity,
    realm: &str,
    src: &Source,
    headers: &HeaderMap,
    params: Result<Params, OAuthError>,
) -> Response {
    let Ok(realm) = realm_of(id, realm) else {
        return page(StatusCode::NOT_FOUND, html::error("unknown realm"));
    };
    let p = match params {
        Ok(p) => p,
        Err(e) => return page(StatusCode::BAD_REQUEST, html::error(&e.description)),
    };
    let cookie = session_cookie(headers, &realm);
    // Our own confirmation form, posted back with its anti-CSRF value.
    let confirmed = p.get("confirm") == Some("yes") && csrf_ok(headers, &realm, Form::SignOut, &p);
    let logout = match id.logout(
        &realm,
        cookie.as_deref(),
        p.get("id_token_hint"),
        confirmed,
        src,
        now(),
    ) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    // Redirect only to a URI registered for the client the ID token names (or client_id says).
    let client = logout
        .client
        .or_else(|| p.get("client_id").and_then(|c| id.client(&realm, c)));
    let target = p.get("post_logout_redirect_uri").filter(|u| {
        client
            .as_ref()
            .is_some_and(|c| c.redirect_uris.iter().any(|r| r == u))
    });
    if logout.outcome == LogoutOutcome::AskFirst {
        // Asked again with the same destination; the hint is not repeated (the form asks the
        // user, not the token).
        let mut hidden = vec![("confirm".to_owned(), "yes".to_owned())];
        if let (Some(u), Some(c)) = (target, &client) {
            hidden.push(("post_logout_redirect_uri".into(), u.to_owned()));
            hidden.push(("client_id".into(), c.client_id.to_string()));
            hidden.extend(p.get("state").map(|s| ("state".to_owned(), s.to_owned())));
        }
        let Ok(csrf) = crate::service::random_b64(32) else {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                html::error("try again later"),
            );
        };
        hidden.push(("csrf".into(), csrf.clone()));
        let action = format!("{}/logout", id.issuer(&realm));
        let name = realm_name(id, &realm);
        let mut r = form_page(
            StatusCode::OK,
            html::confirm_sign_out(&name, &action, &hidden),
            target,
        );
        set_csrf_cookie(id, &realm, Form::SignOut, &csrf, &mut r);
        return r;
    }
    let mut r = match target {
        Some(u) => {
            let mut pairs = vec![];
            if let Some(s) = p.get("state") {
                pairs.push(("state", s));
            }
            see_other(&if pairs.is_empty() {
                u.to_owned()
            } else {
                with_query(u, &pairs)
            })
        }
        None => page(StatusCode::OK, html::signed_out()),
    };
    let clear = format!(
        "{}=; Path=/realms/{realm}; HttpOnly; SameSite=Lax; Max-Age=0",
        cookie_name(&realm)
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    /// The origin a form page lets its redirect reach: scheme, host and port, nothing a CSP
    /// source could be bent with.
    #[test]
    fn only_a_plain_origin_widens_form_action() {
        assert_eq!(
            origin_of("https://app.example/cb?x=1"),
            Some("https://app.example")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8123/cb"),
            Some("http://127.0.0.1:8123")
        );
        assert_eq!(origin_of("http://[::1]:9/cb"), Some("http://[::1]:9"));
        assert_eq!(
            origin_of("https://app.example"),
            Some("https://app.example")
        );
        for bad in [
            "https://a.example;script-src *",
            "https://a.example 'unsafe-inline'/cb",
            "javascript://x",
            "https:///cb",
            "app.example/cb",
        ] {
            assert_eq!(origin_of(bad), None, "{bad}");
        }
        let r = form_page(
            StatusCode::OK,
            String::new(),
            Some("https://app.example/cb"),
        );
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.contains("form-action 'self' https://app.example;"),
            "{csp}"
        );
    }

    /// A bug that panics in a handler still gets the client an answer in OAuth's form.
    #[tokio::test]
    async fn a_panicking_handler_answers_server_error() {
        async fn bug() -> StatusCode {
            panic!("a bug")
        }
        let routes = Router::new().route("/p", get(bug));
        let request = Request::get("/p").body(Body::empty()).unwrap();
        let r = guard_panics(routes).oneshot(request).await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "server_error");
    }
}
