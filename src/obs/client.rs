//! A thin typed client for the few IBS/OBS routes incident-gate uses (DESIGN section 3).
//!
//! Authentication: HTTP Basic on every request when a password is configured (plain OBS). IBS
//! instead answers 401 with `WWW-Authenticate: Signature realm=".."`; then the request is signed
//! with the SSH key and sent once more, and the session cookie IBS sets is reused by later requests
//! (reqwest's cookie store) until it expires and the next 401 asks for a new signature.

use super::oscrc;
use super::sshsig::{now_unix, signature_realm, SshSigner};
use super::xml::{self, esc, Element};
use crate::config::{redact_url, Config, Secret};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong talking to OBS. Messages carry OBS's own code and summary, never credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObsError {
    /// OBS (or a proxy in front of it) answered with an error status.
    Http { status: u16, code: Option<String>, summary: String },
    /// No answer: DNS, refused connection, TLS, timeout, connection dropped mid-body.
    Connection(String),
    /// An answer we cannot read (not the XML we expect).
    Malformed(String),
    /// Our own credentials are unusable (key file unreadable or encrypted, no user for a key).
    Auth(String),
}

impl ObsError {
    /// Connection problems, 5xx, 408 and 429 pass; everything else will answer the same again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ObsError::Connection(_) => true,
            ObsError::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            ObsError::Malformed(_) | ObsError::Auth(_) => false,
        }
    }

    /// About us, not the request: IBS refused our credentials (401), our permissions (403), or
    /// our key cannot be used. The operator can fix that, so it is retried (slowly) until it passes;
    /// a 403 that was about the request's state shows as such once the request is read again.
    pub fn is_denied(&self) -> bool {
        match self {
            ObsError::Http { status, .. } => *status == 401 || *status == 403,
            ObsError::Auth(_) => true,
            _ => false,
        }
    }

    /// IBS does not know us (401) or our key cannot be used.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, ObsError::Http { status: 401, .. } | ObsError::Auth(_))
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ObsError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ObsError::Http { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for ObsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObsError::Http { status, code, summary } => {
                write!(f, "OBS answered {status}")?;
                if let Some(code) = code {
                    write!(f, " {code}")?;
                }
                if !summary.is_empty() {
                    write!(f, ": {summary}")?;
                }
                Ok(())
            }
            ObsError::Connection(why) => write!(f, "cannot reach OBS: {why}"),
            ObsError::Malformed(why) => write!(f, "unexpected answer from OBS: {why}"),
            ObsError::Auth(why) => write!(f, "OBS credentials: {why}"),
        }
    }
}

impl std::error::Error for ObsError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub state: String,
    pub by_group: Option<String>,
    pub by_user: Option<String>,
    pub by_project: Option<String>,
    pub by_package: Option<String>,
    pub who: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    /// review, new, accepted, declined, revoked, superseded, deleted.
    pub state: String,
    pub superseded_by: Option<u64>,
    pub reviews: Vec<Review>,
    pub action_types: Vec<String>,
}

impl Request {
    /// Only these states let a (non-admin) reviewer change a review.
    pub fn is_in_review(&self) -> bool {
        matches!(self.state.as_str(), "review" | "new")
    }

    /// The open review of `group`, if any.
    pub fn open_review_for_group(&self, group: &str) -> Option<&Review> {
        self.reviews.iter().find(|r| r.state == "new" && r.by_group.as_deref() == Some(group))
    }

    pub fn review_for_group(&self, group: &str) -> Option<&Review> {
        self.reviews.iter().rev().find(|r| r.by_group.as_deref() == Some(group))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObsComment {
    pub id: u64,
    pub who: String,
    pub when: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewDecision {
    Accepted,
    Declined,
    /// Back to `new` (osc's `review reopen`): our earlier accept no longer holds.
    Reopened,
}

impl ReviewDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecision::Accepted => "accepted",
            ReviewDecision::Declined => "declined",
            ReviewDecision::Reopened => "new",
        }
    }
}

/// The states OBS accepts for a status check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    Pending,
    Error,
    Failure,
    Success,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Error => "error",
            CheckState::Failure => "failure",
            CheckState::Success => "success",
        }
    }
}

/// Who we are on OBS. `Debug` never shows the password (see `Secret`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub ssh_key: Option<PathBuf>,
}

impl Credentials {
    /// Ours from the configuration, gaps filled from osc's oscrc for the same API URL.
    pub fn from_config(cfg: &Config) -> Credentials {
        let mut creds = Credentials {
            user: cfg.obs_user.clone().filter(|u| !u.is_empty()),
            password: cfg.obs_password.clone().filter(|p| !p.is_empty()),
            ssh_key: cfg.obs_ssh_key.clone(),
        };
        let complete = creds.user.is_some() && (creds.password.is_some() || creds.ssh_key.is_some());
        if complete {
            return creds;
        }
        match oscrc::lookup(&cfg.obs_url) {
            Ok(Some(osc)) => {
                // a user from oscrc only fits that file's password or key, never ours
                let same_user = creds.user.is_none() || creds.user == osc.user;
                if same_user {
                    tracing::info!(
                        "OBS credentials: using {} for what the configuration lacks",
                        osc.source.display()
                    );
                    creds.user = creds.user.or(osc.user);
                    if creds.password.is_none() && creds.ssh_key.is_none() {
                        creds.password = osc.pass;
                        creds.ssh_key = osc.sshkey;
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("ignoring osc configuration: {e}"),
        }
        creds
    }
}

#[derive(Clone)]
pub struct ObsClient {
    http: reqwest::Client,
    base: String,
    user: Option<String>,
    password: Option<Secret>,
    signer: Option<Arc<SshSigner>>,
}

impl fmt::Debug for ObsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObsClient")
            .field("base", &redact_url(&self.base))
            .field("user", &self.user)
            .field("basic", &self.password.is_some())
            .field("signer", &self.signer)
            .finish()
    }
}

impl ObsClient {
    pub fn from_config(cfg: &Config) -> Result<ObsClient, ObsError> {
        Self::new(&cfg.obs_url, Credentials::from_config(cfg), Duration::from_secs(cfg.http_timeout_s))
    }

    pub fn new(base_url: &str, creds: Credentials, timeout: Duration) -> Result<ObsClient, ObsError> {
        let user = creds.user.filter(|u| !u.is_empty());
        if user.is_none() && (creds.password.is_some() || creds.ssh_key.is_some()) {
            return Err(ObsError::Auth("a password or SSH key is configured but no user (obs_user)".into()));
        }
        // the key is loaded now so that a bad key file shows at startup, not at the first 401
        let signer = match (&creds.ssh_key, &user) {
            (Some(path), Some(user)) => Some(Arc::new(
                SshSigner::from_file(user.clone(), path).map_err(|e| ObsError::Auth(e.to_string()))?,
            )),
            _ => None,
        };
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("incident-gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ObsError::Connection(format!("cannot set up the HTTP client: {e}")))?;
        Ok(ObsClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            user,
            password: creds.password.filter(|p| !p.is_empty()),
            signer,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The login our comments and review changes carry, when we know it.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn request(
        &self,
        method: &Method,
        url: &str,
        query: &[(&str, &str)],
        body: &Option<(String, &'static str)>,
        signature: Option<HeaderValue>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method.clone(), url).query(query);
        match (signature, &self.user, &self.password) {
            (Some(sig), _, _) => rb = rb.header(AUTHORIZATION, sig),
            (None, Some(user), Some(pass)) => rb = rb.basic_auth(user, Some(pass.expose())),
            _ => {}
        }
        if let Some((text, content_type)) = body {
            rb = rb.header(CONTENT_TYPE, *content_type).body(text.clone());
        }
        rb
    }

    /// Sends one call, answering a `Signature` challenge once; returns the body of a 2xx answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<(String, &'static str)>,
    ) -> Result<String, ObsError> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {path}");
        let mut resp = self
            .request(&method, &url, query, &body, None)
            .send()
            .await
            .map_err(|e| connection_error(&what, e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let realm = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(signature_realm);
            if let (Some(realm), Some(signer)) = (realm.as_ref(), self.signer.as_ref()) {
                let value =
                    signer.authorization(realm, now_unix()).map_err(|e| ObsError::Auth(e.to_string()))?;
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    ObsError::Auth("the signature header is not valid HTTP (user name?)".into())
                })?;
                value.set_sensitive(true);
                resp = self
                    .request(&method, &url, query, &body, Some(value))
                    .send()
                    .await
                    .map_err(|e| connection_error(&what, e))?;
            } else if realm.is_some() {
                let text = resp.text().await.unwrap_or_default();
                let mut err = http_error(StatusCode::UNAUTHORIZED, None, &text);
                if let ObsError::Http { summary, .. } = &mut err {
                    summary
                        .push_str(" (the server wants an SSH signature: configure obs_user and obs_ssh_key)");
                }
                return Err(err);
            }
        }
        let status = resp.status();
        let code =
            resp.headers().get("x-opensuse-errorcode").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.text().await.map_err(|e| connection_error(&what, e))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(http_error(status, code, &text))
        }
    }

    pub async fn get_request(&self, id: u64) -> Result<Request, ObsError> {
        let body = self.call(Method::GET, &format!("/request/{id}"), &[], None).await?;
        parse_request(&body).map_err(ObsError::Malformed)
    }

    /// Accepts or declines the review of `group`; `message` becomes the review comment.
    pub async fn change_review(
        &self,
        id: u64,
        newstate: ReviewDecision,
        group: &str,
        message: &str,
    ) -> Result<(), ObsError> {
        let query = [("cmd", "changereviewstate"), ("newstate", newstate.as_str()), ("by_group", group)];
        // the body, not the `comment` parameter: messages can be long, and OBS takes the body
        // whenever the parameter is blank
        let body = Some((message.to_string(), "text/plain; charset=utf-8"));
        self.call(Method::POST, &format!("/request/{id}"), &query, body).await.map(drop)
    }

    pub async fn comments(&self, id: u64) -> Result<Vec<ObsComment>, ObsError> {
        let body = self.call(Method::GET, &format!("/comments/request/{id}"), &[], None).await?;
        parse_comments(&body).map_err(ObsError::Malformed)
    }

    /// OBS answers a plain `ok` without the new comment's id: list again to learn it.
    pub async fn post_comment(&self, id: u64, markdown: &str) -> Result<(), ObsError> {
        let body = Some((markdown.to_string(), "text/plain; charset=utf-8"));
        self.call(Method::POST, &format!("/comments/request/{id}"), &[], body).await.map(drop)
    }

    pub async fn delete_comment(&self, comment_id: u64) -> Result<(), ObsError> {
        self.call(Method::DELETE, &format!("/comment/{comment_id}"), &[], None).await.map(drop)
    }

    pub async fn post_status_report(
        &self,
        id: u64,
        name: &str,
        state: CheckState,
        short_description: &str,
        url: &str,
    ) -> Result<(), ObsError> {
        let body = format!(
            "<check name=\"{}\">\n  <state>{}</state>\n  <short_description>{}</short_description>\n  <url>{}</url>\n</check>\n",
            esc(name),
            state.as_str(),
            esc(short_description),
            esc(url)
        );
        let path = format!("/status_reports/requests/{id}/reports");
        self.call(Method::POST, &path, &[], Some((body, "application/xml"))).await.map(drop)
    }
}

fn connection_error(what: &str, e: reqwest::Error) -> ObsError {
    let e = e.without_url();
    let mut msg = if e.is_timeout() { format!("{what}: timed out") } else { format!("{what}: {e}") };
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    ObsError::Connection(msg)
}

/// An error answer as OBS renders it (`<status code><summary>`), or whatever a proxy sent.
pub fn http_error(status: StatusCode, header_code: Option<String>, body: &str) -> ObsError {
    let (code, summary) = match xml::parse_status(body) {
        Some((code, summary)) => (header_code.or(Some(code).filter(|c| !c.is_empty())), summary),
        None => (header_code, status.canonical_reason().unwrap_or("").to_string()),
    };
    ObsError::Http { status: status.as_u16(), code, summary }
}

fn parse_u64(el: &Element, attr: &str) -> Result<u64, String> {
    let raw = el.attr(attr).ok_or_else(|| format!("<{}> has no {attr}", el.name))?;
    raw.trim().parse().map_err(|_| format!("<{}> {attr}={raw:?} is not a number", el.name))
}

pub fn parse_request(body: &str) -> Result<Request, String> {
    let root = xml::parse(body)?;
    if root.name != "request" {
        return Err(format!("expected <request>, got <{}>", root.name));
    }
    let state = root.child("state").ok_or("<request> has no <state>")?;
    let opt = |el: &Element, k: &str| el.attr(k).map(str::to_string);
    Ok(Request {
        id: parse_u64(&root, "id")?,
        state: state.attr("name").ok_or("<state> has no name")?.to_string(),
        superseded_by: state.attr("superseded_by").and_then(|s| s.parse().ok()),
        reviews: root
            .children_named("review")
            .map(|r| Review {
                state: r.attr("state").unwrap_or("").to_string(),
                by_group: opt(r, "by_group"),
                by_user: opt(r, "by_user"),
                by_project: opt(r, "by_project"),
                by_package: opt(r, "by_package"),
                who: opt(r, "who"),
                comment: r.child("comment").map(|c| c.text.clone()),
            })
            .collect(),
        action_types: root.children_named("action").filter_map(|a| opt(a, "type")).collect(),
    })
}

pub fn parse_comments(body: &str) -> Result<Vec<ObsComment>, String> {
    let root = xml::parse(body)?;
    if root.name != "comments" {
        return Err(format!("expected <comments>, got <{}>", root.name));
    }
    root.children_named("comment")
        .map(|c| {
            Ok(ObsComment {
                id: parse_u64(c, "id")?,
                who: c.attr("who").unwrap_or("").to_string(),
                when: c.attr("when").unwrap_or("").to_string(),
                text: c.text.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/obs");

    fn fixture(path: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{path}")).expect("fixture")
    }

    #[test]
    fn parses_the_docs_request_example() {
        let r = parse_request(&fixture("docs-api/request.xml")).unwrap();
        assert_eq!(r.id, 12);
        assert_eq!(r.state, "superseded");
        assert_eq!(r.superseded_by, Some(111));
        assert_eq!(r.reviews.len(), 2);
        assert_eq!(r.reviews[0].comment.as_deref(), Some("Looks great!"));
        assert!(r.open_review_for_group("suse_review_group").is_some());
        assert!(r.open_review_for_group("qam-openqa").is_none());
        assert!(r.action_types.contains(&"maintenance_release".to_string()));
        assert!(!r.is_in_review());
    }

    #[test]
    fn parses_comments_and_errors() {
        let c = parse_comments(&fixture("derived/comments-request-115.xml")).unwrap();
        assert_eq!(
            c,
            vec![ObsComment {
                id: 1,
                who: "Iggy".into(),
                when: "2021-10-15 13:28:22 UTC".into(),
                text: "This is a pretty cool comment!".into()
            }]
        );
        let e = http_error(
            StatusCode::FORBIDDEN,
            None,
            &fixture("derived/status-403-review_change_state_no_permission-group.xml"),
        );
        assert_eq!(e.code(), Some("review_change_state_no_permission"));
        assert_eq!(e.to_string(), "OBS answered 403 review_change_state_no_permission: review state change for group qam-openqa is not permitted for someuser");
        assert!(!e.is_retryable());
        let e = http_error(StatusCode::BAD_GATEWAY, None, "<html><body>proxy</body></html>");
        assert_eq!(e.to_string(), "OBS answered 502: Bad Gateway");
        assert!(e.is_retryable());
        assert!(http_error(StatusCode::TOO_MANY_REQUESTS, None, "").is_retryable());
        assert!(ObsError::Connection("x".into()).is_retryable());
        assert!(parse_request("<status code=\"x\"/>").is_err());
    }

    #[test]
    fn oscrc_fills_only_what_the_config_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let rc = dir.path().join("oscrc");
        std::fs::write(&rc, "[https://api.example.org/]\nuser = alice\npass = from-oscrc\n").unwrap();
        // the only test in this binary that reads OSC_CONFIG
        std::env::set_var("OSC_CONFIG", &rc);
        let mut cfg = Config { obs_url: "https://api.example.org".into(), ..Config::default() };
        let c = Credentials::from_config(&cfg);
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.password.as_ref().map(|p| p.expose()), Some("from-oscrc"));
        // our own user with our own key: oscrc is not even read for them
        cfg.obs_user = Some("bot".into());
        cfg.obs_ssh_key = Some("/keys/bot".into());
        let c = Credentials::from_config(&cfg);
        assert_eq!((c.user.as_deref(), c.password.is_none()), (Some("bot"), true));
        // another user than oscrc's: its password is not borrowed
        cfg.obs_ssh_key = None;
        assert!(Credentials::from_config(&cfg).password.is_none());
        std::env::remove_var("OSC_CONFIG");
    }

    #[test]
    fn credentials_need_a_user() {
        let creds = Credentials { user: None, password: Some(Secret::new("pw")), ssh_key: None };
        let e = ObsClient::new("http://127.0.0.1:1", creds, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ObsError::Auth(_)) && !e.to_string().contains("pw"));
        let creds =
            Credentials { user: Some("bot".into()), password: Some(Secret::new("pw-S3CRET")), ssh_key: None };
        let c = ObsClient::new("http://127.0.0.1:1/", creds, Duration::from_secs(1)).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:1");
        assert!(!format!("{c:?}").contains("S3CRET"));
    }
}
