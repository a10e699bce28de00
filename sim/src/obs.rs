//! An OBS/IBS API simulator on a loopback port: the routes incident-gate uses, with the server
//! rules of fixtures/obs/RULES.md (check order, codes, summaries, how reviews move the request
//! state) and error bodies exactly as OBS renders them (fixtures/obs/derived).
//!
//! Authentication is none, HTTP Basic, or IBS's SSH `Signature` scheme (the signature is really
//! verified against the configured public key); a successful login sets a session cookie that
//! later requests may use instead. Tests drive it through the Rust control API; `/_sim/...`
//! routes offer the same for the demo and for non-Rust tests.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use incident_gate::obs::sshsig::{self, now_unix};
use incident_gate::obs::xml::{self, esc, status_body};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use ssh_key::PublicKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

const SESSION_COOKIE: &str = "_session_id";

/// How the simulator authenticates callers.
#[derive(Debug, Clone)]
pub enum SimAuth {
    /// Every caller is `login`.
    None {
        login: String,
    },
    Basic {
        user: String,
        password: String,
    },
    /// IBS: 401 with `WWW-Authenticate: Signature realm=".."`, then an SSH signature by `user`'s
    /// key over `(created): <ts>` with `created` within `max_skew_s` of the server clock.
    Signature {
        user: String,
        public_key: Box<PublicKey>,
        realm: String,
        max_skew_s: u64,
    },
}

impl SimAuth {
    /// Signature auth with a public key in OpenSSH form (`ssh-ed25519 AAAA... comment`).
    pub fn signature(user: &str, openssh_public_key: &str, realm: &str) -> Result<SimAuth, String> {
        let public_key =
            PublicKey::from_openssh(openssh_public_key.trim()).map_err(|e| format!("public key: {e}"))?;
        Ok(SimAuth::Signature {
            user: user.to_string(),
            public_key: Box::new(public_key),
            realm: realm.to_string(),
            max_skew_s: 300,
        })
    }

    pub fn login(&self) -> &str {
        match self {
            SimAuth::None { login } => login,
            SimAuth::Basic { user, .. } | SimAuth::Signature { user, .. } => user,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ObsSimConfig {
    pub auth: SimAuth,
    /// Group title → member logins; changing a group's review needs membership.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Logins for which the permission checks are skipped, as OBS does for admins.
    pub admins: Vec<String>,
    /// Whether the caller may post status reports (upstream: maintainers of every target only).
    pub status_reports_allowed: bool,
    /// Loopback port to listen on; 0 picks a free one.
    pub port: u16,
}

impl ObsSimConfig {
    /// The given auth, its login a member of `qam-openqa`.
    pub fn new(auth: SimAuth) -> ObsSimConfig {
        let groups = BTreeMap::from([("qam-openqa".to_string(), vec![auth.login().to_string()])]);
        ObsSimConfig { auth, groups, admins: Vec::new(), status_reports_allowed: true, port: 0 }
    }
}

impl Default for ObsSimConfig {
    fn default() -> Self {
        ObsSimConfig::new(SimAuth::None { login: "incident-gate".into() })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimReview {
    pub state: String,
    #[serde(default)]
    pub by_group: Option<String>,
    #[serde(default)]
    pub by_user: Option<String>,
    #[serde(default)]
    pub who: Option<String>,
    #[serde(default)]
    pub comment: String,
}

impl SimReview {
    /// An open review for a group.
    pub fn group(group: &str) -> SimReview {
        SimReview {
            state: "new".into(),
            by_group: Some(group.into()),
            by_user: None,
            who: None,
            comment: String::new(),
        }
    }

    pub fn user(login: &str) -> SimReview {
        SimReview {
            state: "new".into(),
            by_group: None,
            by_user: Some(login.into()),
            who: None,
            comment: String::new(),
        }
    }

    pub fn with_state(mut self, state: &str) -> SimReview {
        self.state = state.into();
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimComment {
    pub id: u64,
    pub request: u64,
    pub who: String,
    pub when: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimCheck {
    pub name: String,
    pub state: String,
    pub short_description: String,
    pub url: String,
}

/// One request the simulator answered. Credentials are never recorded: `auth` only says how the
/// caller got in (`none`, `basic`, `signature`, `cookie`) or `-` when it did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub auth: String,
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone)]
struct SimRequest {
    state: String,
    who: String,
    when: String,
    superseded_by: Option<u64>,
    state_comment: String,
    action_types: Vec<String>,
    reviews: Vec<SimReview>,
    comment_locked: bool,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<u64, SimRequest>,
    comments: BTreeMap<u64, SimComment>,
    next_comment: u64,
    checks: BTreeMap<u64, Vec<SimCheck>>,
    sessions: HashMap<String, String>,
    down: bool,
    /// (method, path prefix, status, times left): answers to fake before the real route runs.
    failures: Vec<(String, String, u16, usize)>,
    log: Vec<Received>,
}

struct Shared {
    cfg: ObsSimConfig,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // a panicking test thread must not take every later assertion down with it
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulator; stops when dropped.
pub struct ObsSim {
    url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for ObsSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a simulator on 127.0.0.1 with a free port. Panics only if no loopback port can be bound.
pub async fn start(cfg: ObsSimConfig) -> ObsSim {
    match try_start(cfg).await {
        Ok(sim) => sim,
        Err(e) => panic!("OBS simulator: cannot listen on 127.0.0.1: {e}"),
    }
}

pub async fn try_start(cfg: ObsSimConfig) -> std::io::Result<ObsSim> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shared = Arc::new(Shared { cfg, inner: Mutex::new(Inner { next_comment: 1, ..Inner::default() }) });
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = rx.await;
        });
        if let Err(e) = server.await {
            tracing::warn!("OBS simulator stopped: {e}");
        }
    });
    Ok(ObsSim { url, shared, shutdown: Some(tx) })
}

fn timestamp() -> String {
    // humantime gives "2026-11-24T17:03:12Z"; OBS request times carry no zone
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .trim_end_matches('Z')
        .to_string()
}

fn comment_time() -> String {
    format!("{} UTC", timestamp().replace('T', " "))
}

impl ObsSim {
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Creates (or replaces) request `id` in `state` with `reviews` and one action of `action_type`.
    pub fn create_request(&self, id: u64, state: &str, reviews: Vec<SimReview>, action_type: &str) {
        let mut inner = self.shared.lock();
        inner.requests.insert(
            id,
            SimRequest {
                state: state.into(),
                who: "maintenance-bot".into(),
                when: timestamp(),
                superseded_by: None,
                state_comment: String::new(),
                action_types: vec![action_type.into()],
                reviews,
                comment_locked: false,
            },
        );
    }

    /// Moves a request as someone else would (revoke, supersede, accept).
    pub fn set_request_state(&self, id: u64, state: &str, superseded_by: Option<u64>) {
        if let Some(r) = self.shared.lock().requests.get_mut(&id) {
            r.state = state.into();
            r.superseded_by = superseded_by;
            r.when = timestamp();
        }
    }

    /// A review added to a request in review, as `osc review add` (`cmd=addreview`) does.
    pub fn add_review(&self, id: u64, review: SimReview) {
        if let Some(r) = self.shared.lock().requests.get_mut(&id) {
            r.reviews.push(review);
            r.when = timestamp();
        }
    }

    pub fn request_state(&self, id: u64) -> Option<String> {
        self.shared.lock().requests.get(&id).map(|r| r.state.clone())
    }

    pub fn reviews(&self, id: u64) -> Vec<SimReview> {
        self.shared.lock().requests.get(&id).map(|r| r.reviews.clone()).unwrap_or_default()
    }

    pub fn comments(&self, id: u64) -> Vec<SimComment> {
        self.shared.lock().comments.values().filter(|c| c.request == id).cloned().collect()
    }

    /// A comment by someone else (or by us, from an earlier run); returns its id.
    pub fn add_comment(&self, request: u64, who: &str, text: &str) -> u64 {
        let mut inner = self.shared.lock();
        let id = inner.next_comment;
        inner.next_comment += 1;
        inner
            .comments
            .insert(id, SimComment { id, request, who: who.into(), when: comment_time(), text: text.into() });
        id
    }

    /// A comment lock: nobody but admins may comment.
    pub fn lock_comments(&self, id: u64, locked: bool) {
        if let Some(r) = self.shared.lock().requests.get_mut(&id) {
            r.comment_locked = locked;
        }
    }

    pub fn checks(&self, id: u64) -> Vec<SimCheck> {
        self.shared.lock().checks.get(&id).cloned().unwrap_or_default()
    }

    /// While down, every API route answers 503 like a proxy in front of a dead backend.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
    }

    /// The next `times` calls of `method` on a path starting with `path_prefix` answer `status`
    /// (5xx as a proxy's HTML page, others as an OBS error body) instead of being served.
    pub fn fail_next(&self, method: &str, path_prefix: &str, status: u16, times: usize) {
        self.shared.lock().failures.push((method.into(), path_prefix.into(), status, times));
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().log.clone()
    }

    /// How many requests with `method` had a path starting with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .count()
    }

    pub fn clear_received(&self) {
        self.shared.lock().log.clear();
    }

    /// Forgets every session, so the next call must authenticate again.
    pub fn expire_sessions(&self) {
        self.shared.lock().sessions.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn xml_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
    resp
}

fn error(status: StatusCode, code: &str, summary: &str) -> Response {
    let mut resp = xml_response(status, status_body(code, summary));
    if let Ok(v) = HeaderValue::from_str(code) {
        resp.headers_mut().insert("x-opensuse-errorcode", v);
    }
    resp
}

fn ok() -> Response {
    xml_response(StatusCode::OK, status_body("ok", "Ok"))
}

fn json_response<T: Serialize>(value: &T) -> Response {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn proxy_error(status: StatusCode) -> Response {
    let page = format!("<html><body><h1>{status}</h1></body></html>");
    let mut r = (status, page).into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

struct Login {
    user: String,
    how: &'static str,
    set_cookie: Option<String>,
}

fn unauthorized(cfg: &ObsSimConfig, code: &str, summary: &str) -> Response {
    let mut resp = error(StatusCode::UNAUTHORIZED, code, summary);
    let challenge = match &cfg.auth {
        SimAuth::Signature { realm, .. } => {
            format!("Signature realm=\"{realm}\",headers=\"(created)\"")
        }
        _ => "basic realm=\"API login\"".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    resp
}

fn session_from(headers: &HeaderMap) -> Option<String> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == SESSION_COOKIE).then(|| v.to_string())
    })
}

fn new_session(inner: &mut Inner, user: &str) -> String {
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    inner.sessions.insert(id.clone(), user.to_string());
    id
}

fn authenticate(cfg: &ObsSimConfig, inner: &mut Inner, headers: &HeaderMap) -> Result<Login, Box<Response>> {
    if let SimAuth::None { login } = &cfg.auth {
        return Ok(Login { user: login.clone(), how: "none", set_cookie: None });
    }
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if authorization.is_none() {
        if let Some(user) = session_from(headers).and_then(|s| inner.sessions.get(&s).cloned()) {
            return Ok(Login { user, how: "cookie", set_cookie: None });
        }
        return Err(Box::new(unauthorized(
            cfg,
            "anonymous_user",
            "Anonymous user is not allowed here - please login",
        )));
    }
    let value = authorization.unwrap_or_default();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    match &cfg.auth {
        SimAuth::Basic { user, password } if scheme.eq_ignore_ascii_case("basic") => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let (u, p) = decoded.split_once(':').unwrap_or((&decoded, ""));
            if u == user && p == password {
                let session = new_session(inner, user);
                Ok(Login { user: user.clone(), how: "basic", set_cookie: Some(session) })
            } else {
                Err(Box::new(unauthorized(
                    cfg,
                    "authentication_required",
                    &format!("Unknown user '{u}' or invalid password"),
                )))
            }
        }
        SimAuth::Signature { user, public_key, realm, max_skew_s }
            if scheme.eq_ignore_ascii_case("signature") =>
        {
            match sshsig::verify_authorization(value, user, public_key, realm, now_unix(), *max_skew_s) {
                Ok(()) => {
                    let session = new_session(inner, user);
                    Ok(Login { user: user.clone(), how: "signature", set_cookie: Some(session) })
                }
                Err(e) => Err(Box::new(unauthorized(cfg, "authentication_required", &e.to_string()))),
            }
        }
        _ => Err(Box::new(unauthorized(
            cfg,
            "authentication_required",
            &format!("Authentication scheme {scheme} is not accepted here"),
        ))),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: Vec<(String, String)> = Query::try_from_uri(&uri).map(|Query(q)| q).unwrap_or_default();
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let mut inner = shared.lock();
    if let Some(control) = path.strip_prefix("/_sim/") {
        // control calls are not traffic of the system under test: not logged
        return control_route(&mut inner, &method, control, &query, &body_text);
    }
    let injected = inner
        .failures
        .iter_mut()
        .find(|(m, prefix, _, left)| *left > 0 && *m == method.as_str() && path.starts_with(prefix.as_str()))
        .map(|f| {
            f.3 -= 1;
            f.2
        });
    let (resp, how) = if inner.down {
        (proxy_error(StatusCode::SERVICE_UNAVAILABLE), "-")
    } else if let Some(status) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            (proxy_error(status), "-")
        } else {
            (error(status, "injected_failure", "failure injected by the simulator"), "-")
        }
    } else if method == Method::GET && path.starts_with("/status_reports/") {
        // the one route OBS serves without a login
        (status_report_route(&shared.cfg, &mut inner, &method, &path, &body_text), "none")
    } else {
        match authenticate(&shared.cfg, &mut inner, &headers) {
            Err(r) => (*r, "-"),
            Ok(login) => {
                let mut r =
                    api_route(&shared.cfg, &mut inner, &method, &path, &query, &body_text, &login.user);
                if let Some(session) = &login.set_cookie {
                    if let Ok(v) =
                        HeaderValue::from_str(&format!("{SESSION_COOKIE}={session}; path=/; HttpOnly"))
                    {
                        r.headers_mut().insert(SET_COOKIE, v);
                    }
                }
                (r, login.how)
            }
        }
    };
    let raw_query = uri.query().unwrap_or("").to_string();
    inner.log.push(Received {
        method: method.to_string(),
        path,
        query: raw_query,
        auth: how.to_string(),
        status: resp.status().as_u16(),
        body: body_text,
    });
    resp
}

fn param<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn api_route(
    cfg: &ObsSimConfig,
    inner: &mut Inner,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: &str,
    login: &str,
) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["request", id]) => match lookup_request(inner, id) {
            Ok((n, r)) => xml_response(StatusCode::OK, render_request(n, r)),
            Err(resp) => *resp,
        },
        (Method::POST, ["request", id]) => match param(query, "cmd") {
            Some("changereviewstate") => change_review_state(cfg, inner, id, query, body, login),
            cmd => {
                // OBS checks the request before the command
                if let Err(resp) = lookup_request(inner, id) {
                    return *resp;
                }
                let cmd = cmd.unwrap_or("");
                error(
                    StatusCode::BAD_REQUEST,
                    "unknown_command",
                    &format!("Unknown command '{cmd}' for path {path}"),
                )
            }
        },
        (Method::GET, ["comments", "request", id]) => list_comments(inner, id),
        (Method::POST, ["comments", "request", id]) => create_comment(cfg, inner, id, body, login),
        (Method::DELETE, ["comment", id]) => delete_comment(cfg, inner, id, login),
        (_, ["status_reports", "requests", _, "reports"]) => {
            status_report_route(cfg, inner, method, path, body)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "Not found"),
    }
}

fn lookup_request<'a>(inner: &'a Inner, id: &str) -> Result<(u64, &'a SimRequest), Box<Response>> {
    let not_found = || {
        Box::new(error(StatusCode::NOT_FOUND, "not_found", &format!("Couldn't find request with id '{id}'")))
    };
    let n: u64 = id.parse().map_err(|_| not_found())?;
    inner.requests.get(&n).map(|r| (n, r)).ok_or_else(not_found)
}

fn render_request(id: u64, r: &SimRequest) -> String {
    let mut x = format!("<request id=\"{id}\" creator=\"{}\">\n", esc(&r.who));
    for t in &r.action_types {
        x.push_str(&format!(
            "  <action type=\"{}\">\n    <source project=\"SUSE:Maintenance:{id}\"/>\n    <target project=\"SUSE:SLE-15-SP6:Update\"/>\n  </action>\n",
            esc(t)
        ));
    }
    let superseded = r.superseded_by.map(|s| format!(" superseded_by=\"{s}\"")).unwrap_or_default();
    x.push_str(&format!(
        "  <state name=\"{}\" who=\"{}\" when=\"{}\" created=\"{}\"{superseded}>\n    <comment>{}</comment>\n  </state>\n",
        esc(&r.state),
        esc(&r.who),
        r.when,
        r.when,
        esc(&r.state_comment)
    ));
    for rev in &r.reviews {
        let mut attrs = format!("state=\"{}\" when=\"{}\"", esc(&rev.state), r.when);
        if let Some(who) = &rev.who {
            attrs.push_str(&format!(" who=\"{}\"", esc(who)));
        }
        if let Some(g) = &rev.by_group {
            attrs.push_str(&format!(" by_group=\"{}\"", esc(g)));
        }
        if let Some(u) = &rev.by_user {
            attrs.push_str(&format!(" by_user=\"{}\"", esc(u)));
        }
        if rev.comment.is_empty() {
            x.push_str(&format!("  <review {attrs}/>\n"));
        } else {
            x.push_str(&format!(
                "  <review {attrs}>\n    <comment>{}</comment>\n  </review>\n",
                esc(&rev.comment)
            ));
        }
    }
    x.push_str("  <description>Maintenance release request</description>\n</request>\n");
    x
}

/// RULES.md section 1: the checks in OBS's order, then the review change and the request state.
fn change_review_state(
    cfg: &ObsSimConfig,
    inner: &mut Inner,
    id: &str,
    query: &[(String, String)],
    body: &str,
    login: &str,
) -> Response {
    let n = match lookup_request(inner, id) {
        Ok((n, _)) => n,
        Err(resp) => return *resp,
    };
    let by_user = param(query, "by_user").filter(|s| !s.is_empty());
    let by_group = param(query, "by_group").filter(|s| !s.is_empty());
    let Some(req) = inner.requests.get_mut(&n) else {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("Couldn't find request with id '{id}'"));
    };
    if let Some(g) = by_group {
        let known =
            cfg.groups.contains_key(g) || req.reviews.iter().any(|r| r.by_group.as_deref() == Some(g));
        if !known {
            return error(StatusCode::NOT_FOUND, "not_found", &format!("Couldn't find Group '{g}'"));
        }
    }
    let admin = cfg.admins.iter().any(|a| a == login);
    if !admin {
        if req.state != "review" && req.state != "new" {
            return error(
                StatusCode::FORBIDDEN,
                "review_change_state_no_permission",
                "The request is neither in state review nor new",
            );
        }
        if by_user.is_none() && by_group.is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "review_not_specified",
                "The review must specified via by_user, by_group or by_project(by_package) argument.",
            );
        }
        if let Some(u) = by_user {
            if u != login {
                return error(
                    StatusCode::FORBIDDEN,
                    "review_change_state_no_permission",
                    &format!("review state change is not permitted for {login}"),
                );
            }
        }
        if let Some(g) = by_group {
            let member = cfg.groups.get(g).is_some_and(|m| m.iter().any(|u| u == login));
            if !member {
                return error(
                    StatusCode::FORBIDDEN,
                    "review_change_state_no_permission",
                    &format!("review state change for group {g} is not permitted for {login}"),
                );
            }
        }
    }
    let newstate = param(query, "newstate").unwrap_or("");
    let reopening = newstate == "new" && (req.state == "new" || req.state == "declined");
    if req.state != "review" && !reopening {
        return error(
            StatusCode::NOT_FOUND,
            "request_not_modifiable",
            "request is not in a changeable state (new, review or declined)",
        );
    }
    if by_user.is_none() && by_group.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_review",
            "request review item is not specified via by_user, by_group or by_project",
        );
    }
    if newstate.is_empty() {
        // OBS calls to_sym on nil here
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "undefined method `to_sym' for nil",
        );
    }
    if !["new", "accepted", "declined", "superseded"].contains(&newstate) {
        return error(
            StatusCode::NOT_FOUND,
            "request_not_modifiable",
            &format!("review state must be new, accepted, declined or superseded, was {newstate}"),
        );
    }
    let matches = |r: &SimReview| match (by_user, by_group) {
        (Some(u), _) if r.by_user.is_some() => r.by_user.as_deref() == Some(u),
        (_, Some(g)) if r.by_group.is_some() => r.by_group.as_deref() == Some(g),
        _ => false,
    };
    // the newest matching review not yet accepted, else the newest match
    let index = req
        .reviews
        .iter()
        .rposition(|r| matches(r) && r.state != "accepted")
        .or_else(|| req.reviews.iter().rposition(matches));
    let Some(index) = index else {
        return error(StatusCode::NOT_FOUND, "review_not_found", "Review not found");
    };
    let comment = param(query, "comment").filter(|c| !c.trim().is_empty()).unwrap_or(body).to_string();
    let review = &mut req.reviews[index];
    if review.state == newstate && review.who.as_deref() == Some(login) && review.comment == comment {
        return ok();
    }
    review.state = newstate.to_string();
    review.who = Some(login.to_string());
    review.comment = comment.clone();
    let computed = if newstate == "superseded" {
        req.superseded_by = param(query, "superseded_by").and_then(|s| s.parse().ok());
        "superseded"
    } else if req.reviews.iter().any(|r| r.state == "declined") {
        "declined"
    } else if req.reviews.iter().all(|r| r.state == "accepted") {
        "new"
    } else {
        "review"
    };
    if computed != req.state {
        req.state = computed.to_string();
        req.who = login.to_string();
        req.when = timestamp();
        req.state_comment = if computed == "new" { "All reviewers accepted request".into() } else { comment };
    }
    ok()
}

fn list_comments(inner: &Inner, id: &str) -> Response {
    let n = match id.parse::<u64>() {
        Ok(n) if inner.requests.contains_key(&n) => n,
        _ => return bs_request_not_found(),
    };
    let mut x = format!("<comments request=\"{n}\">\n");
    for c in inner.comments.values().filter(|c| c.request == n) {
        x.push_str(&format!(
            "  <comment who=\"{}\" when=\"{}\" id=\"{}\">{}</comment>\n",
            esc(&c.who),
            esc(&c.when),
            c.id,
            esc(&c.text)
        ));
    }
    x.push_str("</comments>\n");
    xml_response(StatusCode::OK, x)
}

fn bs_request_not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "Couldn't find BsRequest with [WHERE `bs_requests`.`number` = ?]",
    )
}

fn create_comment(cfg: &ObsSimConfig, inner: &mut Inner, id: &str, body: &str, login: &str) -> Response {
    let n = match id.parse::<u64>() {
        Ok(n) if inner.requests.contains_key(&n) => n,
        _ => return bs_request_not_found(),
    };
    let locked = inner.requests.get(&n).is_some_and(|r| r.comment_locked);
    if locked && !cfg.admins.iter().any(|a| a == login) {
        return error(
            StatusCode::FORBIDDEN,
            "create_comment_not_authorized",
            "Sorry, you are not authorized to create this comment.",
        );
    }
    let mut problems = Vec::new();
    if body.trim().is_empty() {
        problems.push("Body can't be blank".to_string());
    }
    if body.chars().count() > 65_535 {
        problems.push("Body is too long (maximum is 65535 characters)".to_string());
    }
    if body.contains('\0') {
        problems.push("Body must not contain null characters".to_string());
    }
    if !problems.is_empty() {
        return error(StatusCode::BAD_REQUEST, "invalid_record", &problems.join("\\n"));
    }
    let cid = inner.next_comment;
    inner.next_comment += 1;
    inner.comments.insert(
        cid,
        SimComment { id: cid, request: n, who: login.into(), when: comment_time(), text: body.into() },
    );
    ok()
}

fn delete_comment(cfg: &ObsSimConfig, inner: &mut Inner, id: &str, login: &str) -> Response {
    let not_found =
        || error(StatusCode::NOT_FOUND, "not_found", &format!("Couldn't find Comment with 'id'={id}"));
    let Ok(n) = id.parse::<u64>() else {
        return not_found();
    };
    let Some(c) = inner.comments.get(&n) else {
        return not_found();
    };
    if c.who != login && !cfg.admins.iter().any(|a| a == login) {
        return error(
            StatusCode::FORBIDDEN,
            "delete_comment_not_authorized",
            "Sorry, you are not authorized to delete this comment.",
        );
    }
    inner.comments.remove(&n);
    ok()
}

fn render_check(c: &SimCheck) -> String {
    format!(
        "<check name=\"{}\" required=\"false\">\n  <state>{}</state>\n  <short_description>{}</short_description>\n  <url>{}</url>\n</check>\n",
        esc(&c.name),
        esc(&c.state),
        esc(&c.short_description),
        esc(&c.url)
    )
}

/// RULES.md section 3.
fn status_report_route(
    cfg: &ObsSimConfig,
    inner: &mut Inner,
    method: &Method,
    path: &str,
    body: &str,
) -> Response {
    let number = path.trim_matches('/').split('/').nth(2).unwrap_or("");
    let submit = number
        .parse::<u64>()
        .ok()
        .filter(|n| inner.requests.get(n).is_some_and(|r| r.action_types.iter().any(|t| t == "submit")));
    let Some(n) = submit else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("Submit request with number '{number}' not found."),
        );
    };
    if *method == Method::GET {
        let Some(checks) = inner.checks.get(&n) else {
            return error(StatusCode::NOT_FOUND, "not_found", "Status report not found.");
        };
        let mut x = "<status_report>\n".to_string();
        for c in checks {
            x.push_str(&render_check(c));
        }
        x.push_str("</status_report>\n");
        return xml_response(StatusCode::OK, x);
    }
    if *method != Method::POST {
        return error(StatusCode::NOT_FOUND, "not_found", "Not found");
    }
    let parsed = xml::parse(body).ok();
    let field = |k: &str| parsed.as_ref().and_then(|el| el.field(k)).map(|v| v.trim().to_string());
    let (name, state, short, url) = (field("name"), field("state"), field("short_description"), field("url"));
    if name.is_none() && state.is_none() && short.is_none() && url.is_none() {
        return error(StatusCode::NOT_FOUND, "empty_body", "Request body is empty!");
    }
    if !cfg.status_reports_allowed {
        return error(
            StatusCode::FORBIDDEN,
            "update_status/report_not_authorized",
            "Sorry, you are not authorized to update this status/report.",
        );
    }
    let mut problems = Vec::new();
    let name = name.filter(|n| !n.is_empty());
    if name.is_none() {
        problems.push("Name can't be blank".to_string());
    }
    match state.as_deref() {
        None | Some("") => problems.push("State can't be blank".to_string()),
        Some("pending" | "error" | "failure" | "success") => {}
        Some(other) => problems.push(format!(
            "State State '{other}' is not a valid. Valid states are: pending, error, failure, success"
        )),
    }
    if !problems.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_check",
            &format!("Could not save check: {}", problems.join(" and ")),
        );
    }
    let checks = inner.checks.entry(n).or_default();
    let name = name.unwrap_or_default();
    let index = match checks.iter().position(|c| c.name == name) {
        Some(i) => i,
        None => {
            checks.push(SimCheck {
                name: name.clone(),
                state: String::new(),
                short_description: String::new(),
                url: String::new(),
            });
            checks.len() - 1
        }
    };
    let check = &mut checks[index];
    // fields not posted keep their value
    if let Some(s) = state {
        check.state = s;
    }
    if let Some(s) = short {
        check.short_description = s;
    }
    if let Some(u) = url {
        check.url = u;
    }
    xml_response(StatusCode::OK, render_check(check))
}

#[derive(Deserialize)]
struct ControlRequest {
    state: String,
    #[serde(default)]
    reviews: Vec<SimReview>,
    #[serde(default = "default_action")]
    action_type: String,
}

fn default_action() -> String {
    "maintenance_release".into()
}

/// `/_sim/...`: PUT requests/<id> (JSON {state, reviews, action_type}), GET requests/<id>,
/// POST down?on=1|0, GET log, DELETE log, POST sessions/expire.
fn control_route(
    inner: &mut Inner,
    method: &Method,
    route: &str,
    query: &[(String, String)],
    body: &str,
) -> Response {
    let segments: Vec<&str> = route.trim_matches('/').split('/').collect();
    let bad = |why: String| (StatusCode::BAD_REQUEST, why).into_response();
    match (method.clone(), segments.as_slice()) {
        (Method::PUT, ["requests", id]) => {
            let Ok(n) = id.parse::<u64>() else {
                return bad(format!("bad request id {id}"));
            };
            let spec: ControlRequest = match serde_json::from_str(body) {
                Ok(s) => s,
                Err(e) => return bad(format!("bad JSON: {e}")),
            };
            inner.requests.insert(
                n,
                SimRequest {
                    state: spec.state,
                    who: "maintenance-bot".into(),
                    when: timestamp(),
                    superseded_by: None,
                    state_comment: String::new(),
                    action_types: vec![spec.action_type],
                    reviews: spec.reviews,
                    comment_locked: false,
                },
            );
            json_response(&serde_json::json!({"ok": true}))
        }
        (Method::GET, ["requests", id]) => {
            let Some(r) = id.parse::<u64>().ok().and_then(|n| inner.requests.get(&n).map(|r| (n, r))) else {
                return (StatusCode::NOT_FOUND, "no such request").into_response();
            };
            let comments: Vec<&SimComment> = inner.comments.values().filter(|c| c.request == r.0).collect();
            json_response(&serde_json::json!({
                "id": r.0, "state": r.1.state, "reviews": r.1.reviews, "comments": comments,
                "checks": inner.checks.get(&r.0),
            }))
        }
        (Method::POST, ["down"]) => {
            inner.down = param(query, "on").is_none_or(|v| v != "0");
            json_response(&serde_json::json!({"down": inner.down}))
        }
        (Method::GET, ["log"]) => json_response(&inner.log),
        (Method::DELETE, ["log"]) => {
            inner.log.clear();
            json_response(&serde_json::json!({"ok": true}))
        }
        (Method::POST, ["sessions", "expire"]) => {
            inner.sessions.clear();
            json_response(&serde_json::json!({"ok": true}))
        }
        _ => (StatusCode::NOT_FOUND, "unknown simulator control route").into_response(),
    }
}
