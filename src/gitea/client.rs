//! A thin typed client for the Gitea routes the reporter uses (`/api/v1`, fixtures/gitea).
//!
//! Authentication is Gitea's `Authorization: token <token>` header. Lists follow the `Link:
//! <...>; rel="next"` header; routes that only send `X-Total-Count` (Gitea's pull review list does)
//! are paged by `page`/`limit` until that many items arrived. 413, 429 and 503 (as qem-bot retries)
//! and connection failures are retried with backoff before an error is returned. Errors name the
//! route and Gitea's `message`; the token never appears in them, in `Debug` or in the log.

use crate::config::{Config, Secret};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Gitea's `MaxResponseItems` default: asking for more is clamped to it anyway.
pub const PAGE_LIMIT: usize = 50;
/// A list longer than this many pages is a loop (a `Link` pointing back), not a pull request.
const MAX_PAGES: usize = 200;
/// A `Retry-After` longer than this is not waited for inside one delivery; the outbox retries later.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Delay before the first retry; doubled before each further one.
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { retries: 3, base_delay: Duration::from_millis(500) }
    }
}

/// A failed Gitea call. `route` is `METHOD /path` below `/api/v1`; no variant carries the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiteaError {
    /// The client cannot be built (bad URL, token not valid in a header).
    Config(String),
    /// No HTTP answer (refused, reset, timed out) after `attempts` attempts.
    Connection { route: String, detail: String, attempts: u32 },
    /// An error status with Gitea's `message` (or the start of a proxy's body).
    Http { route: String, status: u16, message: String, attempts: u32 },
    /// A success whose body is not what the route returns.
    Malformed { route: String, detail: String },
}

impl GiteaError {
    /// What may pass: connection failures, 5xx, 408, 413 and 429. 4xx answers are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            GiteaError::Connection { .. } => true,
            GiteaError::Http { status, .. } => *status >= 500 || matches!(*status, 408 | 413 | 429),
            GiteaError::Config(_) | GiteaError::Malformed { .. } => false,
        }
    }

    /// Gitea refused our token (401) or what it may do (403: a scope or permission it lacks, a
    /// locked conversation): the operator's to fix, never an answer about the pull request.
    pub fn is_denied(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            GiteaError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for GiteaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tries = |n: u32| if n > 1 { format!(" (after {n} attempts)") } else { String::new() };
        match self {
            GiteaError::Config(why) => write!(f, "Gitea client: {why}"),
            GiteaError::Connection { route, detail, attempts } => {
                write!(f, "cannot reach Gitea for {route}: {detail}{}", tries(*attempts))
            }
            GiteaError::Http { route, status, message, attempts } => {
                write!(f, "Gitea answered {status} to {route}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                f.write_str(&tries(*attempts))
            }
            GiteaError::Malformed { route, detail } => {
                write!(f, "unexpected answer from Gitea to {route}: {detail}")
            }
        }
    }
}

impl std::error::Error for GiteaError {}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    #[serde(default)]
    pub id: i64,
    pub login: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Team {
    #[serde(default)]
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BranchInfo {
    #[serde(default, rename = "ref")]
    pub git_ref: String,
    pub sha: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
    #[serde(default)]
    pub merged: bool,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub html_url: String,
    pub head: BranchInfo,
}

/// A pull request review or review request, as `GET .../pulls/{index}/reviews` lists it. A review
/// request is a review in state `REQUEST_REVIEW` (of a user, or of a team with `user: null`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Review {
    pub id: u64,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub team: Option<Team>,
    /// APPROVED, PENDING, COMMENT, REQUEST_CHANGES, REQUEST_REVIEW.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub commit_id: String,
    #[serde(default)]
    pub stale: bool,
    #[serde(default)]
    pub dismissed: bool,
}

impl Review {
    pub fn by_user(&self, login: &str) -> bool {
        self.user.as_ref().is_some_and(|u| u.login == login)
    }

    pub fn by_team(&self, name: &str) -> bool {
        self.team.as_ref().is_some_and(|t| t.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Comment {
    pub id: u64,
    #[serde(default)]
    pub body: String,
    /// Gitea shows a deleted poster as `null`.
    #[serde(default)]
    pub user: Option<User>,
}

impl Comment {
    pub fn author(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.login.as_str())
    }
}

/// The review events the API accepts when submitting a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewEvent {
    Approved,
    RequestChanges,
    Comment,
}

impl ReviewEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewEvent::Approved => "APPROVED",
            ReviewEvent::RequestChanges => "REQUEST_CHANGES",
            ReviewEvent::Comment => "COMMENT",
        }
    }
}

struct Inner {
    http: reqwest::Client,
    /// `https://host/prefix/api/v1`, no trailing slash.
    api: String,
    token: Option<Secret>,
    retry: RetryPolicy,
    /// `gitea_user`: who we are, without asking.
    user: Option<String>,
    /// The answer of `GET /user`, asked at most once: None when the token may not read it.
    asked: tokio::sync::OnceCell<Option<String>>,
    /// The author Gitea gave a comment we posted.
    learned: std::sync::Mutex<Option<String>>,
}

#[derive(Clone)]
pub struct GiteaClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for GiteaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GiteaClient")
            .field("api", &self.inner.api)
            .field("token", &self.inner.token)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    attempts: u32,
}

impl GiteaClient {
    pub fn from_config(cfg: &Config) -> Result<GiteaClient, GiteaError> {
        let client =
            Self::new(&cfg.gitea_url, cfg.gitea_token.clone(), Duration::from_secs(cfg.http_timeout_s))?;
        Ok(client.with_user(&cfg.gitea_user))
    }

    /// `base_url` is Gitea's root URL (`https://src.suse.de`); `/api/v1` is added here.
    pub fn new(base_url: &str, token: Option<Secret>, timeout: Duration) -> Result<GiteaClient, GiteaError> {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/api/v1").unwrap_or(base);
        if reqwest::Url::parse(base).is_err()
            || !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(GiteaError::Config("gitea_url must be an http:// or https:// URL".into()));
        }
        let token = token.filter(|t| !t.is_empty());
        if let Some(t) = &token {
            // checked now, so a token with a newline fails at startup instead of at the first report
            if HeaderValue::from_str(&format!("token {}", t.expose())).is_err() {
                return Err(GiteaError::Config("gitea_token is not valid in an HTTP header".into()));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("incident-gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GiteaError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(GiteaClient {
            inner: Arc::new(Inner {
                http,
                api: format!("{base}/api/v1"),
                token,
                retry: RetryPolicy::default(),
                user: None,
                asked: tokio::sync::OnceCell::new(),
                learned: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The same client with another retry policy (tests use shorter delays).
    pub fn with_retry(self, retry: RetryPolicy) -> GiteaClient {
        self.rebuilt(retry, self.inner.user.clone())
    }

    /// The same client knowing the login its token belongs to (`gitea_user`; empty: not known).
    pub fn with_user(self, login: &str) -> GiteaClient {
        let login = login.trim();
        self.rebuilt(self.inner.retry, (!login.is_empty()).then(|| login.to_string()))
    }

    fn rebuilt(&self, retry: RetryPolicy, user: Option<String>) -> GiteaClient {
        let inner = &self.inner;
        GiteaClient {
            inner: Arc::new(Inner {
                http: inner.http.clone(),
                api: inner.api.clone(),
                token: inner.token.clone(),
                retry,
                user,
                asked: tokio::sync::OnceCell::new(),
                learned: std::sync::Mutex::new(None),
            }),
        }
    }

    pub fn api_url(&self) -> &str {
        &self.inner.api
    }

    /// The login the token belongs to: `gitea_user` when configured, else the author of a
    /// comment this client posted, else `GET /user` (asked once per client). None when none of
    /// these tells: a scoped token without `read:user` is answered 403 there, although it may
    /// comment; the reporter then knows its comments by their marker line.
    pub async fn me(&self) -> Result<Option<String>, GiteaError> {
        if let Some(user) = &self.inner.user {
            return Ok(Some(user.clone()));
        }
        if let Some(user) = self.learned() {
            return Ok(Some(user));
        }
        let asked = self
            .inner
            .asked
            .get_or_try_init(|| async {
                match self.get_json::<User>("/user").await {
                    Ok(user) => Ok(Some(user.login)),
                    Err(e) if e.status() == Some(403) => {
                        tracing::warn!(
                            "{e}: our Gitea comments are recognised by their marker line; set gitea_user to the token's login (or give the token read:user)"
                        );
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(asked.clone())
    }

    fn learned(&self) -> Option<String> {
        self.inner.learned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn pull(&self, owner: &str, repo: &str, index: u64) -> Result<PullRequest, GiteaError> {
        self.get_json(&format!("/repos/{}/{}/pulls/{index}", seg(owner), seg(repo))).await
    }

    /// Open pull requests of a repository, every page.
    pub async fn open_pulls(&self, owner: &str, repo: &str) -> Result<Vec<PullRequest>, GiteaError> {
        self.get_list(&format!("/repos/{}/{}/pulls", seg(owner), seg(repo)), &[("state", "open")]).await
    }

    pub async fn reviews(&self, owner: &str, repo: &str, index: u64) -> Result<Vec<Review>, GiteaError> {
        self.get_list(&format!("/repos/{}/{}/pulls/{index}/reviews", seg(owner), seg(repo)), &[]).await
    }

    pub async fn comments(&self, owner: &str, repo: &str, index: u64) -> Result<Vec<Comment>, GiteaError> {
        self.get_list(&format!("/repos/{}/{}/issues/{index}/comments", seg(owner), seg(repo)), &[]).await
    }

    pub async fn post_comment(
        &self,
        owner: &str,
        repo: &str,
        index: u64,
        body: &str,
    ) -> Result<Comment, GiteaError> {
        let path = format!("/repos/{}/{}/issues/{index}/comments", seg(owner), seg(repo));
        let comment: Comment =
            self.send_json(Method::POST, &path, &serde_json::json!({ "body": body })).await?;
        if let Some(login) = comment.author() {
            *self.inner.learned.lock().unwrap_or_else(|p| p.into_inner()) = Some(login.to_string());
        }
        Ok(comment)
    }

    pub async fn edit_comment(&self, owner: &str, repo: &str, id: u64, body: &str) -> Result<(), GiteaError> {
        let path = format!("/repos/{}/{}/issues/comments/{id}", seg(owner), seg(repo));
        let route = format!("PATCH {path}");
        let reply = self.call(Method::PATCH, &path, &[], Some(&serde_json::json!({ "body": body }))).await?;
        // 204: Gitea's answer for a comment type without content; nothing was changed
        if reply.status == 204 {
            return Err(GiteaError::Http {
                route,
                status: 204,
                message: "comment has no content to edit".into(),
                attempts: reply.attempts,
            });
        }
        Ok(())
    }

    pub async fn delete_comment(&self, owner: &str, repo: &str, id: u64) -> Result<(), GiteaError> {
        let path = format!("/repos/{}/{}/issues/comments/{id}", seg(owner), seg(repo));
        self.call(Method::DELETE, &path, &[], None).await.map(drop)
    }

    /// Submits a native review (only used for "request changes" when configured).
    pub async fn submit_review(
        &self,
        owner: &str,
        repo: &str,
        index: u64,
        event: ReviewEvent,
        body: &str,
        commit_id: &str,
    ) -> Result<Review, GiteaError> {
        let path = format!("/repos/{}/{}/pulls/{index}/reviews", seg(owner), seg(repo));
        let payload = serde_json::json!({"event": event.as_str(), "body": body, "commit_id": commit_id, "comments": []});
        self.send_json(Method::POST, &path, &payload).await
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, GiteaError> {
        let reply = self.call(Method::GET, path, &[], None).await?;
        decode(&format!("GET {path}"), &reply.body)
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        payload: &serde_json::Value,
    ) -> Result<T, GiteaError> {
        let route = format!("{method} {path}");
        let reply = self.call(method, path, &[], Some(payload)).await?;
        decode(&route, &reply.body)
    }

    /// Every item of a list route: `Link: rel="next"` while Gitea sends it, else pages of
    /// `PAGE_LIMIT` until `X-Total-Count` items arrived.
    async fn get_list<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, GiteaError> {
        let route = format!("GET {path}");
        let limit = PAGE_LIMIT.to_string();
        let mut items: Vec<T> = Vec::new();
        for page in 1..=MAX_PAGES {
            let page_text = page.to_string();
            let mut q = query.to_vec();
            q.push(("limit", &limit));
            q.push(("page", &page_text));
            let reply = self.call(Method::GET, path, &q, None).await?;
            let batch: Vec<T> = decode(&route, &reply.body)?;
            let got = batch.len();
            items.extend(batch);
            match has_next_page(&reply.headers, path, page) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(detail) => return Err(GiteaError::Malformed { route, detail }),
            }
            let total = reply
                .headers
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            match total {
                Some(total) if got > 0 && items.len() < total => continue,
                _ => return Ok(items),
            }
        }
        Err(GiteaError::Malformed { route, detail: format!("more than {MAX_PAGES} pages") })
    }

    /// One call with retries; a 2xx answer is returned, anything else becomes an error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        payload: Option<&serde_json::Value>,
    ) -> Result<Reply, GiteaError> {
        let route = format!("{method} {path}");
        let retry = self.inner.retry;
        // A POST whose connection broke after sending may have been carried out: sending it again
        // could post a second approval. It is only repeated when it surely never arrived.
        let idempotent = method != Method::POST;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt > retry.retries;
            let delay = retry.base_delay.saturating_mul(1 << (attempt - 1).min(16));
            match self.send_once(&method, path, query, payload).await {
                Ok(reply) if (200..300).contains(&reply.status) => {
                    return Ok(Reply { attempts: attempt, ..reply })
                }
                Ok(reply) => {
                    let err = GiteaError::Http {
                        route: route.clone(),
                        status: reply.status,
                        message: self.scrub(&error_message(reply.status, &reply.body)),
                        attempts: attempt,
                    };
                    // the statuses qem-bot retries: the server refused before doing anything
                    if last || !matches!(reply.status, 413 | 429 | 503) {
                        return Err(err);
                    }
                    let wait = retry_after(&reply.headers).map_or(delay, |d| d.min(MAX_RETRY_AFTER));
                    tracing::debug!(error = %err, delay_ms = wait.as_millis() as u64, "Gitea busy, retrying");
                    tokio::time::sleep(wait).await;
                }
                Err((detail, connected)) => {
                    let err = GiteaError::Connection {
                        route: route.clone(),
                        detail: self.scrub(&detail),
                        attempts: attempt,
                    };
                    if last || (connected && !idempotent) {
                        return Err(err);
                    }
                    tracing::debug!(error = %err, delay_ms = delay.as_millis() as u64, "Gitea unreachable, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One HTTP exchange. An error says whether a connection had been made (the request may have
    /// been received).
    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, &str)],
        payload: Option<&serde_json::Value>,
    ) -> Result<Reply, (String, bool)> {
        let url = format!("{}{path}", self.inner.api);
        let mut rb =
            self.inner.http.request(method.clone(), url).query(query).header("Accept", "application/json");
        if let Some(token) = &self.inner.token {
            let mut value = HeaderValue::from_str(&format!("token {}", token.expose()))
                .map_err(|_| ("gitea_token is not valid in an HTTP header".to_string(), false))?;
            value.set_sensitive(true);
            rb = rb.header(AUTHORIZATION, value);
        }
        if let Some(p) = payload {
            rb = rb.header(CONTENT_TYPE, "application/json").body(p.to_string());
        }
        let resp = rb.send().await.map_err(|e| {
            let connected = !e.is_connect();
            (describe(e), connected)
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| (describe(e), true))?;
        Ok(Reply { status, headers, body: body.to_vec(), attempts: 1 })
    }

    /// Gitea does not echo tokens, but a proxy's error page might: never pass one on.
    fn scrub(&self, text: &str) -> String {
        match &self.inner.token {
            Some(t) if t.expose().len() >= 4 => text.replace(t.expose(), "<redacted>"),
            _ => text.to_string(),
        }
    }
}

/// Path segments from configuration or openQA settings: no `/`, `?` or `#` may change the route.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Whether Gitea links a next page after `page` of the list read of `route` (a path below
/// `/api/v1`). The next page is then asked with our own query and `page + 1`, never with the link's
/// query (which could skip, repeat or change the list), nor on the link's host: Gitea writes its
/// own `ROOT_URL` there, which need not be the URL we were configured with (a proxy). A next link
/// that is not the following page of the same list is an error, not the end of the list: taking it
/// as the end would make a cut read look whole.
pub fn has_next_page(headers: &HeaderMap, route: &str, page: usize) -> Result<bool, String> {
    for value in headers.get_all("link").iter() {
        let value = value.to_str().map_err(|_| "a Link header that is not ASCII".to_string())?;
        for part in value.split(',') {
            let Some((target, params)) = part.split_once(';') else { continue };
            let is_next = params.split(';').any(|p| {
                let p = p.trim();
                // parameter names and relation types are case-insensitive (RFC 8288)
                p.get(..4).is_some_and(|k| k.eq_ignore_ascii_case("rel="))
                    && p[4..].trim_matches('"').split_whitespace().any(|r| r.eq_ignore_ascii_case("next"))
            });
            if !is_next {
                continue;
            }
            // the target itself is not quoted: a URL may carry credentials
            let unusable = || format!("a Link header whose rel=\"next\" is not page {} of {route}", page + 1);
            let target =
                target.trim().strip_prefix('<').and_then(|t| t.strip_suffix('>')).ok_or_else(unusable)?;
            let url = reqwest::Url::parse(target).map_err(|_| unusable())?;
            let path = url.path();
            let at = path.find("/api/v1/").ok_or_else(unusable)?;
            let linked_page = url.query_pairs().find(|(k, _)| k == "page").map(|(_, v)| v.into_owned());
            if &path[at + "/api/v1".len()..] != route || linked_page != Some((page + 1).to_string()) {
                return Err(unusable());
            }
            return Ok(true);
        }
    }
    Ok(false)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn decode<T: DeserializeOwned>(route: &str, body: &[u8]) -> Result<T, GiteaError> {
    serde_json::from_slice(body).map_err(|e| GiteaError::Malformed {
        route: route.to_string(),
        detail: format!("{e} (body starts with {:?})", snippet(body)),
    })
}

/// Gitea's `{"message": ..., "url": ...}` error text; for anything else (a proxy's HTML page) the
/// status's reason, which says more than the start of the markup.
fn error_message(status: u16, body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(serde_json::Value::String(m)) = map.get("message") {
            return m.trim().chars().take(300).collect();
        }
    }
    match reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()) {
        Some(reason) => reason.to_string(),
        None => snippet(body),
    }
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(80)]).trim().to_string()
}

fn describe(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if timeout && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("link", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_next_link_is_only_the_following_page_of_the_same_list() {
        let pulls = "/repos/products/SLFO/pulls";
        // as Gitea writes it: ROOT_URL, then next, last (genAPILinks)
        let h = link(
            "<https://src.suse.de/api/v1/repos/products/SLFO/pulls?limit=50&page=2&state=open>; rel=\"next\",<https://src.suse.de/api/v1/repos/products/SLFO/pulls?limit=50&page=3&state=open>; rel=\"last\"",
        );
        assert_eq!(has_next_page(&h, pulls, 1), Ok(true));
        // a ROOT_URL with a path of its own, behind a proxy of another name; rel in capitals
        let h =
            link("<http://gitea.internal:3000/git/api/v1/repos/products/SLFO/pulls?page=2>; REL=\"NEXT\"");
        assert_eq!(has_next_page(&h, pulls, 1), Ok(true));
        let last_only = link("<https://src.suse.de/api/v1/x?page=1>; rel=\"first\",<https://src.suse.de/api/v1/x?page=1>; rel=\"prev\"");
        assert_eq!(has_next_page(&last_only, "/x", 2), Ok(false));
        assert_eq!(has_next_page(&HeaderMap::new(), pulls, 1), Ok(false));
        // a next link that cannot be followed is no end of the list: outside the API, another
        // list, the API's path twice, no URL at all, a page skipped or repeated, no page
        for bad in [
            "<https://evil.example/steal?page=2>; rel=\"next\"",
            "<https://src.suse.de/api/v1/repos/products/SLFO/issues?page=2>; rel=\"next\"",
            "<https://src.suse.de/api/v1/https://src.suse.de/api/v1/repos/products/SLFO/pulls?page=2>; rel=\"next\"",
            "https://src.suse.de/api/v1/repos/products/SLFO/pulls?page=2; rel=\"next\"",
            "<https://src.suse.de/api/v1/repos/products/SLFO/pulls?page=3>; rel=\"next\"",
            "<https://src.suse.de/api/v1/repos/products/SLFO/pulls?page=1>; rel=\"next\"",
            "<https://src.suse.de/api/v1/repos/products/SLFO/pulls?limit=50>; rel=\"next\"",
        ] {
            let e = has_next_page(&link(bad), pulls, 1).unwrap_err();
            assert_eq!(e, "a Link header whose rel=\"next\" is not page 2 of /repos/products/SLFO/pulls", "{bad}");
        }
    }

    #[test]
    fn errors_and_retryability() {
        let e = GiteaError::Http {
            route: "GET /repos/products/SLFO/pulls/9".into(),
            status: 404,
            message: "The target couldn't be found.".into(),
            attempts: 1,
        };
        assert_eq!(
            e.to_string(),
            "Gitea answered 404 to GET /repos/products/SLFO/pulls/9: The target couldn't be found."
        );
        assert!(!e.is_retryable());
        for s in [413, 429, 500, 503] {
            let e = GiteaError::Http { route: String::new(), status: s, message: String::new(), attempts: 4 };
            assert!(e.is_retryable(), "{s}");
        }
        let body = br#"{"message":"token is required","url":"https://src.suse.de/api/swagger"}"#;
        assert_eq!(error_message(401, body), "token is required");
        assert_eq!(error_message(502, b"<html><h1>502 Bad Gateway</h1></html>"), "Bad Gateway");
        // a 403 without a body (editIssueComment's ctx.Status)
        assert_eq!(error_message(403, b""), "Forbidden");
        assert_eq!(seg("products"), "products");
        assert_eq!(seg("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn debug_hides_the_token() {
        let c =
            GiteaClient::new("https://src.suse.de/", Some(Secret::new("S3CRET-tok")), Duration::from_secs(1))
                .unwrap();
        assert_eq!(c.api_url(), "https://src.suse.de/api/v1");
        assert!(!format!("{c:?}").contains("S3CRET"));
        assert!(GiteaClient::new("src.suse.de", None, Duration::from_secs(1)).is_err());
        let e =
            GiteaClient::new("https://x.example", Some(Secret::new("bad\ntoken")), Duration::from_secs(1))
                .unwrap_err();
        assert!(!e.to_string().contains("bad\ntoken"));
    }
}
