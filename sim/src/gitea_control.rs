//! For `incident-gate sim --gitea`: the Gitea simulator, and a control listener of its own on another
//! loopback port through which a test outside the process sets up pull requests (the Gitea API has
//! no route to create a pull request at a given head, nor to push). Reads go to the Gitea API.
//!
//! - `PUT /prs/<owner>/<name>/<number>` `{"sha": "…"}`: an open pull request at that head, with the
//!   QAM review requested from the review bot user;
//! - `POST /prs/<owner>/<name>/<number>/push` `{"sha": "…"}`: the head moves (as on Gitea, every
//!   review becomes stale, the review request too);
//! - `POST /prs/<owner>/<name>/<number>/review_request`: the QAM review requested again from the
//!   review bot user (what SUSE's workflow bot does after a push: the stale request removed, a
//!   new one added);
//! - `GET /received`: every API request the simulator answered (tokens never recorded).

use crate::gitea::{GiteaSim, GiteaSimConfig, Reviewer};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::Value;
use std::sync::Arc;

pub const TOKEN: &str = "incident-gate-token";
pub const LOGIN: &str = "qam-openqa";
pub const REVIEW_BOT: &str = "qam-openqa-review";

/// Starts the simulator and its control listener; answers them and the control URL.
pub async fn start() -> Result<(Arc<GiteaSim>, String), String> {
    let sim = Arc::new(
        crate::gitea::try_start(GiteaSimConfig::new(TOKEN, LOGIN))
            .await
            .map_err(|e| format!("Gitea simulator: {e}"))?,
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("Gitea sim control: {e}"))?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| format!("Gitea sim control: {e}"))?);
    let app = Router::new()
        .route("/prs/{owner}/{name}/{number}", put(create_pr))
        .route("/prs/{owner}/{name}/{number}/push", post(push))
        .route("/prs/{owner}/{name}/{number}/review_request", post(review_request))
        .route("/received", get(received))
        .with_state(sim.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("Gitea simulator control stopped: {e}");
        }
    });
    Ok((sim, url))
}

fn sha_of(body: &Value) -> Result<String, (StatusCode, String)> {
    body["sha"].as_str().map(str::to_string).ok_or((StatusCode::BAD_REQUEST, "sha missing".into()))
}

async fn create_pr(
    State(sim): State<Arc<GiteaSim>>,
    Path((owner, name, number)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Result<StatusCode, (StatusCode, String)> {
    let repo = format!("{owner}/{name}");
    sim.create_pr(&repo, number, &sha_of(&body)?);
    sim.request_review(&repo, number, Reviewer::User(REVIEW_BOT.into()));
    Ok(StatusCode::NO_CONTENT)
}

async fn push(
    State(sim): State<Arc<GiteaSim>>,
    Path((owner, name, number)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Result<StatusCode, (StatusCode, String)> {
    let repo = format!("{owner}/{name}");
    if sim.head(&repo, number).is_none() {
        return Err((StatusCode::NOT_FOUND, format!("no pull request {repo}#{number}")));
    }
    sim.push(&repo, number, &sha_of(&body)?);
    Ok(StatusCode::NO_CONTENT)
}

async fn review_request(
    State(sim): State<Arc<GiteaSim>>,
    Path((owner, name, number)): Path<(String, String, u64)>,
) -> Result<StatusCode, (StatusCode, String)> {
    let repo = format!("{owner}/{name}");
    match sim.rerequest_review(&repo, number, Reviewer::User(REVIEW_BOT.into())) {
        0 => Err((StatusCode::NOT_FOUND, format!("no pull request {repo}#{number}"))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

async fn received(State(sim): State<Arc<GiteaSim>>) -> Json<Value> {
    Json(serde_json::to_value(sim.received()).unwrap_or_default())
}
