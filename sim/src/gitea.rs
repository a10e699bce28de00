//! A Gitea API simulator on a loopback port: the `/api/v1` routes the Gitea reporter and qem-bot
//! use, with Gitea's status codes, error bodies (`{"message", "url"}`), pagination (a `Link`
//! header on the pull request list, `X-Total-Count` on every list, `page`/`limit` clamped to
//! `MAX_RESPONSE_ITEMS`) and bodies shaped like fixtures/gitea.
//!
//! Pull request heads move (`push`), which marks the reviews of other commits stale as Gitea does;
//! review requests of users and teams, stale and dismissed reviews can be set up directly. SUSE's
//! group review bot is emulated: a comment `@<bot>: approved` (or `LGTM`) by a member turns the
//! bot's open review into an APPROVED review of the head commit. Authentication is
//! `Authorization: token <t>` against the configured tokens; reads are public.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone)]
pub struct GiteaSimConfig {
    /// Token → login.
    pub tokens: BTreeMap<String, String>,
    /// The review bot's user (`qam-openqa-review`); `None` turns the review bot emulation off.
    pub review_bot: Option<String>,
    /// The team whose review requests the review bot also answers.
    pub review_team: String,
    /// Logins whose approval comments the review bot acts on.
    pub review_team_members: Vec<String>,
    /// Gitea's `[api] MAX_RESPONSE_ITEMS` and `DEFAULT_PAGING_NUM`.
    pub max_response_items: usize,
    pub default_paging_num: usize,
    /// Loopback port; 0 picks a free one.
    pub port: u16,
    /// Scoped tokens (Gitea 1.19+): token → its scopes (`read:user`, `write:issue`,
    /// `write:repository` …; `write:` includes `read:`). A token not listed may do everything.
    /// A route outside a token's scopes is answered 403 with Gitea's message.
    pub scopes: BTreeMap<String, Vec<String>>,
}

impl GiteaSimConfig {
    /// One token for `login`, who is a member of the QAM team.
    pub fn new(token: &str, login: &str) -> GiteaSimConfig {
        GiteaSimConfig {
            tokens: BTreeMap::from([(token.to_string(), login.to_string())]),
            review_bot: Some("qam-openqa-review".into()),
            review_team: "qam-openqa".into(),
            review_team_members: vec![login.to_string()],
            max_response_items: 50,
            default_paging_num: 30,
            port: 0,
            scopes: BTreeMap::new(),
        }
    }
}

impl Default for GiteaSimConfig {
    fn default() -> Self {
        GiteaSimConfig::new("incident-gate-token", "qam-openqa")
    }
}

/// Who a review (request) is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reviewer {
    User(String),
    Team(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimReview {
    pub id: u64,
    /// Set for a user's review or review request; a team's request has none (`user: null`).
    pub user: Option<String>,
    pub team: Option<String>,
    pub state: String,
    pub body: String,
    pub commit_id: String,
    pub stale: bool,
    pub dismissed: bool,
    pub official: bool,
    pub submitted_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimComment {
    pub id: u64,
    pub user: String,
    pub body: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
struct SimPr {
    id: u64,
    number: u64,
    title: String,
    author: String,
    state: String,
    merged: bool,
    head_sha: String,
    head_ref: String,
    reviews: Vec<SimReview>,
    comments: Vec<u64>,
    files: Vec<(String, String)>,
    created_at: String,
    updated_at: String,
}

/// One request the simulator answered; the token is never recorded, `auth` says `token`, `none`
/// or `-` (refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub auth: String,
    pub status: u16,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    /// (owner/repo) → number → PR.
    repos: BTreeMap<String, BTreeMap<u64, SimPr>>,
    /// Comment id → (repo, number, comment).
    comments: BTreeMap<u64, (String, u64, SimComment)>,
    next_id: u64,
    down: bool,
    failures: Vec<(String, String, u16, usize)>,
    log: Vec<Received>,
}

struct Shared {
    cfg: GiteaSimConfig,
    root_url: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulator; stops when dropped.
pub struct GiteaSim {
    url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for GiteaSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a simulator on 127.0.0.1. Panics only if no loopback port can be bound.
pub async fn start(cfg: GiteaSimConfig) -> GiteaSim {
    match try_start(cfg).await {
        Ok(sim) => sim,
        Err(e) => panic!("Gitea simulator: cannot listen on 127.0.0.1: {e}"),
    }
}

pub async fn try_start(cfg: GiteaSimConfig) -> std::io::Result<GiteaSim> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shared = Arc::new(Shared {
        cfg,
        root_url: format!("{url}/"),
        inner: Mutex::new(Inner { next_id: 9000, ..Inner::default() }),
    });
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = rx.await;
        });
        if let Err(e) = server.await {
            tracing::warn!("Gitea simulator stopped: {e}");
        }
    });
    Ok(GiteaSim { url, shared, shutdown: Some(tx) })
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Inner {
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn pr_mut(&mut self, repo: &str, number: u64) -> Option<&mut SimPr> {
        self.repos.get_mut(repo).and_then(|prs| prs.get_mut(&number))
    }
}

impl GiteaSim {
    /// Gitea's root URL (`ROOT_URL` without the trailing slash); the API is below `/api/v1`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Creates (or replaces) open pull request `number` of `repo` (`owner/name`) at `head_sha`.
    pub fn create_pr(&self, repo: &str, number: u64, head_sha: &str) {
        let mut inner = self.shared.lock();
        let id = inner.next();
        let t = now();
        let pr = SimPr {
            id,
            number,
            title: format!("Maintenance update {number}"),
            author: "maintainer".into(),
            state: "open".into(),
            merged: false,
            head_sha: head_sha.into(),
            head_ref: format!("pr-{number}"),
            reviews: Vec::new(),
            comments: Vec::new(),
            files: vec![("tree".into(), "changed".into())],
            created_at: t.clone(),
            updated_at: t,
        };
        inner.repos.entry(repo.to_string()).or_default().insert(number, pr);
    }

    /// A push to the PR's branch: the head moves and, as Gitea does, every review of another
    /// commit (review requests carry none) becomes stale.
    pub fn push(&self, repo: &str, number: u64, new_sha: &str) {
        let mut inner = self.shared.lock();
        if let Some(pr) = inner.pr_mut(repo, number) {
            pr.head_sha = new_sha.into();
            pr.updated_at = now();
            for r in &mut pr.reviews {
                r.stale = r.commit_id != new_sha;
            }
        }
    }

    pub fn head(&self, repo: &str, number: u64) -> Option<String> {
        self.shared.lock().pr_mut(repo, number).map(|p| p.head_sha.clone())
    }

    /// `open` or `closed`, merged or not.
    pub fn set_pr_state(&self, repo: &str, number: u64, state: &str, merged: bool) {
        if let Some(pr) = self.shared.lock().pr_mut(repo, number) {
            pr.state = state.into();
            pr.merged = merged;
        }
    }

    /// Requests a review (`REQUEST_REVIEW`, not stale); returns the review's id. As Gitea's
    /// `AddReviewRequest`: nothing changes when the user's latest review is a request already
    /// (stale or not), or when the team has any review (its id is returned).
    pub fn request_review(&self, repo: &str, number: u64, who: Reviewer) -> u64 {
        if let Some(pr) = self.shared.lock().pr_mut(repo, number) {
            let existing = match &who {
                Reviewer::User(u) => pr
                    .reviews
                    .iter()
                    .rev()
                    .find(|r| r.user.as_deref() == Some(u.as_str()))
                    .filter(|r| r.state == "REQUEST_REVIEW"),
                Reviewer::Team(t) => pr.reviews.iter().rev().find(|r| r.team.as_deref() == Some(t.as_str())),
            };
            if let Some(r) = existing {
                return r.id;
            }
        }
        let (user, team) = match who {
            Reviewer::User(u) => (Some(u), None),
            Reviewer::Team(t) => (None, Some(t)),
        };
        self.add_review(
            repo,
            number,
            SimReview {
                id: 0,
                user,
                team,
                state: "REQUEST_REVIEW".into(),
                body: String::new(),
                commit_id: String::new(),
                stale: false,
                dismissed: false,
                official: false,
                submitted_at: now(),
            },
        )
    }

    /// Removes a pending review request (Gitea's `RemoveReviewRequest`: the user's latest review,
    /// when it is a request; the team's latest). Whether there was one.
    pub fn remove_review_request(&self, repo: &str, number: u64, who: &Reviewer) -> bool {
        let mut inner = self.shared.lock();
        let Some(pr) = inner.pr_mut(repo, number) else { return false };
        let at = match who {
            Reviewer::User(u) => pr
                .reviews
                .iter()
                .rposition(|r| r.user.as_deref() == Some(u.as_str()))
                .filter(|&i| pr.reviews[i].state == "REQUEST_REVIEW"),
            Reviewer::Team(t) => pr.reviews.iter().rposition(|r| r.team.as_deref() == Some(t.as_str())),
        };
        at.map(|i| pr.reviews.remove(i)).is_some()
    }

    /// What SUSE's workflow bot does once the staging build of a new head is there: the stale
    /// request is removed and the review requested anew (Gitea keeps a stale request otherwise).
    pub fn rerequest_review(&self, repo: &str, number: u64, who: Reviewer) -> u64 {
        self.remove_review_request(repo, number, &who);
        self.request_review(repo, number, who)
    }

    /// Adds a review as given (its id is assigned); returns the id, 0 when there is no such PR.
    pub fn add_review(&self, repo: &str, number: u64, mut review: SimReview) -> u64 {
        let mut inner = self.shared.lock();
        let id = inner.next();
        review.id = id;
        match inner.pr_mut(repo, number) {
            Some(pr) => {
                pr.reviews.push(review);
                id
            }
            None => 0,
        }
    }

    /// Changes a review as someone else would (dismiss it, mark it stale, answer it).
    pub fn set_review(&self, repo: &str, number: u64, id: u64, state: &str, stale: bool, dismissed: bool) {
        if let Some(pr) = self.shared.lock().pr_mut(repo, number) {
            if let Some(r) = pr.reviews.iter_mut().find(|r| r.id == id) {
                r.state = state.into();
                r.stale = stale;
                r.dismissed = dismissed;
            }
        }
    }

    pub fn reviews(&self, repo: &str, number: u64) -> Vec<SimReview> {
        self.shared.lock().pr_mut(repo, number).map(|p| p.reviews.clone()).unwrap_or_default()
    }

    pub fn comments(&self, repo: &str, number: u64) -> Vec<SimComment> {
        let inner = self.shared.lock();
        inner
            .comments
            .values()
            .filter(|(r, n, _)| r == repo && *n == number)
            .map(|(_, _, c)| c.clone())
            .collect()
    }

    /// A comment by anyone (the staging bot, a person, us in an earlier run); returns its id.
    pub fn add_comment(&self, repo: &str, number: u64, login: &str, body: &str) -> u64 {
        let mut inner = self.shared.lock();
        let id = inner.next();
        let t = now();
        let c =
            SimComment { id, user: login.into(), body: body.into(), created_at: t.clone(), updated_at: t };
        inner.comments.insert(id, (repo.to_string(), number, c));
        if let Some(pr) = inner.pr_mut(repo, number) {
            pr.comments.push(id);
        }
        id
    }

    /// While down, every API route answers 503 like a proxy in front of a dead Gitea.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
    }

    /// The next `times` calls of `method` on a path (below `/api/v1`) starting with `path_prefix`
    /// answer `status` instead of being served.
    pub fn fail_next(&self, method: &str, path_prefix: &str, status: u16, times: usize) {
        self.shared.lock().failures.push((method.into(), path_prefix.into(), status, times));
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().log.clone()
    }

    /// How many requests with `method` had a path (below `/api/v1`) starting with `path_prefix`.
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
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut resp = (status, value.to_string()).into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json;charset=utf-8"));
    resp
}

/// Gitea's APIError body.
fn api_error(shared: &Shared, status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({"message": message, "url": format!("{}api/swagger", shared.root_url)}))
}

/// Gitea's 404 for an object that does not exist (APIErrorNotFound).
fn not_found(shared: &Shared, what: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"errors": [what], "message": "The target couldn't be found.", "url": format!("{}api/swagger", shared.root_url)}),
    )
}

fn proxy_error(status: StatusCode) -> Response {
    let page = format!("<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>");
    let mut r = (status, page).into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

enum Auth {
    Anonymous,
    User(String),
    Refused,
}

fn authenticate(cfg: &GiteaSimConfig, headers: &HeaderMap) -> Auth {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Auth::Anonymous;
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !(scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")) {
        return Auth::Refused;
    }
    match cfg.tokens.get(token.trim()) {
        Some(login) => Auth::User(login.clone()),
        None => Auth::Refused,
    }
}

/// The scope a scoped token lacks for a route (Gitea groups `/user` under `user`, a repository's
/// issues and comments under `issue`, the rest of `/repos` under `repository`).
fn missing_scope(cfg: &GiteaSimConfig, headers: &HeaderMap, method: &Method, path: &str) -> Option<String> {
    let token = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?.1.trim();
    let scopes = cfg.scopes.get(token)?;
    let category = if path == "/user" || path.starts_with("/user/") {
        "user"
    } else if path.split('/').nth(4) == Some("issues") {
        "issue"
    } else {
        "repository"
    };
    let level = if method == Method::GET { "read" } else { "write" };
    let has = |s: &str| scopes.iter().any(|x| x == s || x == "all");
    let ok = has(&format!("write:{category}")) || (level == "read" && has(&format!("read:{category}")));
    (!ok).then(|| format!("{level}:{category}"))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let full_path = uri.path().to_string();
    let query: Vec<(String, String)> = Query::try_from_uri(&uri).map(|Query(q)| q).unwrap_or_default();
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let path = full_path.strip_prefix("/api/v1").unwrap_or(&full_path).to_string();
    let mut inner = shared.lock();
    let injected = inner
        .failures
        .iter_mut()
        .find(|(m, prefix, _, left)| *left > 0 && *m == method.as_str() && path.starts_with(prefix.as_str()))
        .map(|f| {
            f.3 -= 1;
            f.2
        });
    let auth = authenticate(&shared.cfg, &headers);
    let how = match &auth {
        Auth::Anonymous => "none",
        Auth::User(_) => "token",
        Auth::Refused => "-",
    };
    let resp = if inner.down {
        proxy_error(StatusCode::SERVICE_UNAVAILABLE)
    } else if let Some(status) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            proxy_error(status)
        } else {
            api_error(&shared, status, "failure injected by the simulator")
        }
    } else if !full_path.starts_with("/api/v1/") {
        not_found(&shared, "not an API route")
    } else {
        match auth {
            // Gitea's answer to a token it does not know (models/user ErrUserNotExist)
            Auth::Refused => {
                api_error(&shared, StatusCode::UNAUTHORIZED, "user does not exist [uid: 0, name: , keyid: 0]")
            }
            Auth::Anonymous if method != Method::GET || path == "/user" => {
                api_error(&shared, StatusCode::UNAUTHORIZED, "token is required")
            }
            Auth::Anonymous => route(&shared, &mut inner, &method, &path, &query, &body_text, None),
            Auth::User(login) => match missing_scope(&shared.cfg, &headers, &method, &path) {
                // Gitea's tokenRequiresScopes answer
                Some(scope) => api_error(
                    &shared,
                    StatusCode::FORBIDDEN,
                    &format!("token does not have at least one of required scope(s): [{scope}]"),
                ),
                None => route(&shared, &mut inner, &method, &path, &query, &body_text, Some(&login)),
            },
        }
    };
    inner.log.push(Received {
        method: method.to_string(),
        path,
        query: uri.query().unwrap_or("").to_string(),
        auth: how.to_string(),
        status: resp.status().as_u16(),
        body: body_text,
    });
    resp
}

fn param<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn route(
    shared: &Shared,
    inner: &mut Inner,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: &str,
    login: Option<&str>,
) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["user"]) => json_response(StatusCode::OK, &user_json(login.unwrap_or(""))),
        (Method::GET, ["repos", o, r, "pulls"]) => {
            list_pulls(shared, inner, &format!("{o}/{r}"), path, query)
        }
        (Method::GET, ["repos", o, r, "pulls", n]) => {
            with_pr(shared, inner, o, r, n, |pr| json_response(StatusCode::OK, &pr_json(shared, o, r, pr)))
        }
        (Method::GET, ["repos", o, r, "pulls", n, "reviews"]) => with_pr(shared, inner, o, r, n, |pr| {
            let items: Vec<Value> =
                pr.reviews.iter().map(|rv| review_json(shared, o, r, pr.number, rv)).collect();
            // Gitea's ListPullReviews pages but sends only X-Total-Count, no Link
            paged(shared, items, query, path, false)
        }),
        (Method::POST, ["repos", o, r, "pulls", n, "reviews"]) => {
            create_review(shared, inner, o, r, n, body, login.unwrap_or(""))
        }
        (Method::GET, ["repos", o, r, "pulls", n, "files"]) => with_pr(shared, inner, o, r, n, |pr| {
            let items: Vec<Value> =
                pr.files.iter().map(|(f, s)| file_json(shared, o, r, &pr.head_sha, f, s)).collect();
            paged(shared, items, query, path, true)
        }),
        (Method::GET, ["repos", o, r, "issues", n, "comments"]) => {
            let repo = format!("{o}/{r}");
            let Some(number) = n.parse::<u64>().ok().filter(|n| inner.pr_mut(&repo, *n).is_some()) else {
                return not_found(shared, &format!("issue does not exist [id: 0, repo_id: 0, index: {n}]"));
            };
            let items: Vec<Value> = inner
                .comments
                .values()
                .filter(|(rp, nb, _)| *rp == repo && *nb == number)
                .map(|(_, _, c)| comment_json(shared, o, r, number, c))
                .collect();
            // ListIssueComments takes no page/limit: everything, with X-Total-Count
            let total = items.len();
            let mut resp = json_response(StatusCode::OK, &Value::Array(items));
            resp.headers_mut().insert("x-total-count", HeaderValue::from(total));
            resp
        }
        (Method::POST, ["repos", o, r, "issues", n, "comments"]) => {
            create_comment(shared, inner, o, r, n, body, login.unwrap_or(""))
        }
        (Method::GET, ["repos", o, r, "issues", "comments", id]) => {
            match comment_of(inner, &format!("{o}/{r}"), id) {
                Some((number, c)) => json_response(StatusCode::OK, &comment_json(shared, o, r, number, &c)),
                None => not_found(shared, &format!("comment does not exist [id: {id}]")),
            }
        }
        (Method::PATCH, ["repos", o, r, "issues", "comments", id]) => {
            edit_comment(shared, inner, o, r, id, body, login.unwrap_or(""))
        }
        (Method::DELETE, ["repos", o, r, "issues", "comments", id]) => {
            let repo = format!("{o}/{r}");
            let Some((_, c)) = comment_of(inner, &repo, id) else {
                return not_found(shared, &format!("comment does not exist [id: {id}]"));
            };
            if Some(c.user.as_str()) != login {
                return StatusCode::FORBIDDEN.into_response();
            }
            inner.comments.remove(&c.id);
            if let Some(pr) = inner
                .repos
                .get_mut(&repo)
                .and_then(|prs| prs.values_mut().find(|p| p.comments.contains(&c.id)))
            {
                pr.comments.retain(|x| *x != c.id);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => not_found(shared, "no such API route"),
    }
}

fn with_pr(
    shared: &Shared,
    inner: &mut Inner,
    o: &str,
    r: &str,
    n: &str,
    f: impl FnOnce(&SimPr) -> Response,
) -> Response {
    let repo = format!("{o}/{r}");
    if !inner.repos.contains_key(&repo) {
        return not_found(
            shared,
            &format!("repository does not exist [id: 0, uid: 0, owner_name: {o}, name: {r}]"),
        );
    }
    match n.parse::<u64>().ok().and_then(|n| inner.pr_mut(&repo, n)) {
        Some(pr) => f(pr),
        None => not_found(shared, &format!("pull request does not exist [id: 0, issue_id: 0, head_repo_id: 0, base_repo_id: 0, head_branch: , base_branch: ] (index {n})")),
    }
}

fn comment_of(inner: &Inner, repo: &str, id: &str) -> Option<(u64, SimComment)> {
    let id = id.parse::<u64>().ok()?;
    inner.comments.get(&id).filter(|(r, _, _)| r == repo).map(|(_, n, c)| (*n, c.clone()))
}

/// `page`/`limit` as Gitea reads them (GetListOptions, ToCorrectPageSize), with `X-Total-Count`
/// and, where the route sets it, Gitea's `Link` header (genAPILinks: next, last, first, prev).
fn paged(shared: &Shared, items: Vec<Value>, query: &[(String, String)], path: &str, link: bool) -> Response {
    let cfg = &shared.cfg;
    let limit = match param(query, "limit").and_then(|l| l.parse::<usize>().ok()) {
        Some(0) | None => cfg.default_paging_num,
        Some(l) => l,
    }
    .clamp(1, cfg.max_response_items.max(1));
    let page = param(query, "page").and_then(|p| p.parse::<usize>().ok()).filter(|p| *p > 0).unwrap_or(1);
    let total = items.len();
    let shown: Vec<Value> = items.into_iter().skip((page - 1) * limit).take(limit).collect();
    let mut resp = json_response(StatusCode::OK, &Value::Array(shown));
    resp.headers_mut().insert("x-total-count", HeaderValue::from(total));
    if link {
        let pages = total.div_ceil(limit).max(1);
        let url = |p: usize| {
            let mut q: BTreeMap<String, String> = query.iter().cloned().collect();
            q.insert("page".into(), p.to_string());
            let qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}api/v1{path}?{}", shared.root_url, qs.join("&"))
        };
        let mut links = Vec::new();
        if page < pages {
            links.push(format!("<{}>; rel=\"next\"", url(page + 1)));
            links.push(format!("<{}>; rel=\"last\"", url(pages)));
        }
        if page > 1 {
            links.push(format!("<{}>; rel=\"first\"", url(1)));
            links.push(format!("<{}>; rel=\"prev\"", url(page - 1)));
        }
        if !links.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&links.join(",")) {
                resp.headers_mut().insert("link", v);
            }
        }
    }
    resp
}

fn list_pulls(
    shared: &Shared,
    inner: &mut Inner,
    repo: &str,
    path: &str,
    query: &[(String, String)],
) -> Response {
    let Some(prs) = inner.repos.get(repo) else {
        return not_found(shared, "repository does not exist");
    };
    let (o, r) = repo.split_once('/').unwrap_or((repo, ""));
    let state = param(query, "state").unwrap_or("open");
    // Gitea lists the newest first
    let items: Vec<Value> = prs
        .values()
        .rev()
        .filter(|pr| state == "all" || pr.state == state)
        .map(|pr| pr_json(shared, o, r, pr))
        .collect();
    paged(shared, items, query, path, true)
}

fn user_json(login: &str) -> Value {
    // stable ids: Gitea shows the same user with the same id everywhere
    let id = login.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) % 100_000;
    json!({
        "id": id, "login": login, "login_name": "", "source_id": 0, "full_name": "", "email": format!("{login}@noreply.src.suse.de"),
        "avatar_url": format!("https://src.suse.de/avatars/{id}"), "html_url": format!("https://src.suse.de/{login}"),
        "language": "", "is_admin": false, "last_login": "0001-01-01T00:00:00Z", "created": "2024-01-01T00:00:00Z",
        "restricted": false, "active": true, "prohibit_login": false, "location": "", "website": "", "description": "",
        "visibility": "public", "followers_count": 0, "following_count": 0, "starred_repos_count": 0,
        "username": login, "organization": null,
    })
}

fn team_json(name: &str) -> Value {
    json!({"id": 1, "name": name, "description": "", "organization": null, "includes_all_repositories": false,
           "permission": "read", "units": [], "units_map": {}, "can_create_org_repo": false})
}

fn repo_json(o: &str, r: &str) -> Value {
    json!({"id": 14799, "owner": user_json(o), "name": r, "full_name": format!("{o}/{r}"),
           "description": "Import of SLFO standard sources. This time in a SHA256 git repository.",
           "private": false, "fork": false, "html_url": format!("https://src.suse.de/{o}/{r}"), "default_branch": "main"})
}

fn pr_json(shared: &Shared, o: &str, r: &str, pr: &SimPr) -> Value {
    let web = format!("{}{o}/{r}/pulls/{}", shared.root_url, pr.number);
    let open_requests = |team: bool| -> Value {
        let list: Vec<Value> = pr
            .reviews
            .iter()
            .filter(|rv| rv.state == "REQUEST_REVIEW" && !rv.dismissed)
            .filter_map(|rv| {
                if team {
                    rv.team.as_deref().map(team_json)
                } else {
                    rv.user.as_deref().map(user_json)
                }
            })
            .collect();
        // Go's nil slice: no request is `null`, not `[]`
        if list.is_empty() {
            Value::Null
        } else {
            Value::Array(list)
        }
    };
    let branch = |label: &str, git_ref: &str, sha: &str| json!({"label": label, "ref": git_ref, "sha": sha, "repo_id": 14799, "repo": repo_json(o, r)});
    json!({
        "id": pr.id, "url": web, "number": pr.number, "user": user_json(&pr.author), "title": pr.title, "body": "",
        "labels": [], "milestone": null, "assignee": null, "assignees": null,
        "requested_reviewers": open_requests(false), "requested_reviewers_teams": open_requests(true),
        "state": pr.state, "draft": false, "is_locked": false, "comments": pr.comments.len(),
        "html_url": web, "diff_url": format!("{web}.diff"), "patch_url": format!("{web}.patch"),
        "mergeable": true, "merged": pr.merged, "merged_at": null, "merge_commit_sha": null, "merged_by": null,
        "allow_maintainer_edit": false,
        "base": branch("main", "main", "0000000000000000000000000000000000000000000000000000000000000000"),
        "head": branch(&pr.head_ref, &pr.head_ref, &pr.head_sha),
        "merge_base": "0000000000000000000000000000000000000000000000000000000000000000",
        "due_date": null, "created_at": pr.created_at, "updated_at": pr.updated_at, "closed_at": null, "pin_order": 0,
    })
}

fn review_json(shared: &Shared, o: &str, r: &str, number: u64, rv: &SimReview) -> Value {
    let pull = format!("{}{o}/{r}/pulls/{number}", shared.root_url);
    json!({
        "id": rv.id,
        "user": rv.user.as_deref().map(user_json),
        "team": rv.team.as_deref().map(team_json),
        "state": rv.state, "body": rv.body, "commit_id": rv.commit_id,
        "stale": rv.stale, "official": rv.official, "dismissed": rv.dismissed, "comments_count": 0,
        "submitted_at": rv.submitted_at, "updated_at": rv.submitted_at,
        "html_url": format!("{pull}#issuecomment-{}", rv.id), "pull_request_url": pull,
    })
}

fn comment_json(shared: &Shared, o: &str, r: &str, number: u64, c: &SimComment) -> Value {
    let pull = format!("{}{o}/{r}/pulls/{number}", shared.root_url);
    json!({
        "id": c.id, "html_url": format!("{pull}#issuecomment-{}", c.id), "pull_request_url": pull, "issue_url": "",
        "user": user_json(&c.user), "original_author": "", "original_author_id": 0, "body": c.body, "assets": [],
        "created_at": c.created_at, "updated_at": c.updated_at,
    })
}

fn file_json(shared: &Shared, o: &str, r: &str, sha: &str, file: &str, status: &str) -> Value {
    let web = format!("{}{o}/{r}", shared.root_url);
    json!({
        "filename": file, "status": status, "additions": 1, "deletions": 1, "changes": 2,
        "html_url": format!("{web}/src/commit/{sha}/{file}"),
        "contents_url": format!("{}api/v1/repos/{o}/{r}/contents/{file}?ref={sha}", shared.root_url),
        "raw_url": format!("{web}/raw/commit/{sha}/{file}"),
    })
}

/// The `body` of a JSON request, or Gitea's 422 for a missing one (binding "Required").
fn required_body(shared: &Shared, body: &str) -> Result<String, Box<Response>> {
    let parsed: Option<String> = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("body").and_then(Value::as_str).map(str::to_string));
    match parsed {
        Some(b) if !b.is_empty() => Ok(b),
        _ => Err(Box::new(api_error(shared, StatusCode::UNPROCESSABLE_ENTITY, "[Body]: Required"))),
    }
}

fn create_comment(
    shared: &Shared,
    inner: &mut Inner,
    o: &str,
    r: &str,
    n: &str,
    body: &str,
    login: &str,
) -> Response {
    let repo = format!("{o}/{r}");
    let Some(number) = n.parse::<u64>().ok().filter(|n| inner.pr_mut(&repo, *n).is_some()) else {
        return not_found(shared, &format!("issue does not exist [id: 0, repo_id: 0, index: {n}]"));
    };
    let text = match required_body(shared, body) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let id = inner.next();
    let t = now();
    let c = SimComment { id, user: login.into(), body: text.clone(), created_at: t.clone(), updated_at: t };
    inner.comments.insert(id, (repo.clone(), number, c.clone()));
    if let Some(pr) = inner.pr_mut(&repo, number) {
        pr.comments.push(id);
    }
    review_bot(&shared.cfg, inner, &repo, number, login, &text);
    json_response(StatusCode::CREATED, &comment_json(shared, o, r, number, &c))
}

/// SUSE's group review bot: `@<bot>: approved` / `LGTM` from a team member approves the bot's
/// open review for the head commit.
fn review_bot(cfg: &GiteaSimConfig, inner: &mut Inner, repo: &str, number: u64, login: &str, text: &str) {
    let Some(bot) = &cfg.review_bot else { return };
    if !cfg.review_team_members.iter().any(|m| m == login) {
        return;
    }
    let mention = format!("@{bot}");
    let approves = text.lines().any(|l| {
        l.trim_start().strip_prefix(&mention).is_some_and(|rest| {
            let rest = rest.trim_start();
            rest.strip_prefix(':').is_some_and(|v| {
                let v = v.trim().to_ascii_lowercase();
                v.starts_with("lgtm") || v.starts_with("approved") || v.starts_with("approve")
            })
        })
    });
    if !approves {
        return;
    }
    let team = cfg.review_team.clone();
    let Some(pr) = inner.pr_mut(repo, number) else { return };
    let head = pr.head_sha.clone();
    let open = pr.reviews.iter_mut().find(|rv| {
        (rv.user.as_deref() == Some(bot.as_str()) || rv.team.as_deref() == Some(team.as_str()))
            && matches!(rv.state.as_str(), "REQUEST_REVIEW" | "PENDING")
            && !rv.stale
            && !rv.dismissed
    });
    if let Some(rv) = open {
        rv.user = Some(bot.clone());
        rv.team = None;
        rv.state = "APPROVED".into();
        rv.commit_id = head;
        rv.body = "Approved by the review bot".into();
        rv.submitted_at = now();
    }
}

fn edit_comment(
    shared: &Shared,
    inner: &mut Inner,
    o: &str,
    r: &str,
    id: &str,
    body: &str,
    login: &str,
) -> Response {
    let repo = format!("{o}/{r}");
    let Some((number, c)) = comment_of(inner, &repo, id) else {
        return not_found(shared, &format!("comment does not exist [id: {id}]"));
    };
    // editIssueComment: the poster, or someone with write access (nobody here)
    if c.user != login {
        return StatusCode::FORBIDDEN.into_response();
    }
    let text = match required_body(shared, body) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let Some((_, _, stored)) = inner.comments.get_mut(&c.id) else {
        return not_found(shared, "comment does not exist");
    };
    if stored.body != text {
        stored.body = text;
        stored.updated_at = now();
    }
    let updated = stored.clone();
    json_response(StatusCode::OK, &comment_json(shared, o, r, number, &updated))
}

fn create_review(
    shared: &Shared,
    inner: &mut Inner,
    o: &str,
    r: &str,
    n: &str,
    body: &str,
    login: &str,
) -> Response {
    let repo = format!("{o}/{r}");
    let Some(number) = n.parse::<u64>().ok().filter(|n| inner.pr_mut(&repo, *n).is_some()) else {
        return not_found(shared, "GetPullRequestByIndex");
    };
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let event = v.get("event").and_then(Value::as_str).unwrap_or("");
    let text = v.get("body").and_then(Value::as_str).unwrap_or("").to_string();
    let state = match event {
        "APPROVED" => "APPROVED",
        "REQUEST_CHANGES" => "REQUEST_CHANGES",
        "COMMENT" => "COMMENT",
        _ => "PENDING",
    };
    // preparePullReviewType: these need a body
    if matches!(state, "REQUEST_CHANGES" | "COMMENT") && text.trim().is_empty() {
        return api_error(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("review event {event} requires a body"),
        );
    }
    let id = inner.next();
    let Some(pr) = inner.pr_mut(&repo, number) else {
        return not_found(shared, "GetPullRequestByIndex");
    };
    if pr.author == login && matches!(state, "APPROVED" | "REQUEST_CHANGES") {
        let verb = if state == "APPROVED" { "approve" } else { "reject" };
        return api_error(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{verb} your own pull is not allowed"),
        );
    }
    let commit = v
        .get("commit_id")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .unwrap_or(&pr.head_sha)
        .to_string();
    let review = SimReview {
        id,
        user: Some(login.to_string()),
        team: None,
        stale: commit != pr.head_sha,
        state: state.into(),
        body: text,
        commit_id: commit,
        dismissed: false,
        official: false,
        submitted_at: now(),
    };
    pr.reviews.push(review.clone());
    let number = pr.number;
    json_response(StatusCode::OK, &review_json(shared, o, r, number, &review))
}
