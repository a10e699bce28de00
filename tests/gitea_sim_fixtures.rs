//! Keeps the Gitea simulator honest: the scenario of fixtures/gitea (PR 124 of products/SLFO with
//! the staging bot's request and a stale QAM request, the staging bot's comment) is rebuilt in the
//! simulator, and every route's body must have the shape of the real one: each field the real
//! answer has, with the same JSON type (a `null` in the real answer admits any type, as Go's nil
//! slices and pointers do), recursively. Fields that only the simulator has are allowed, since the
//! fixtures are trimmed. Status codes and pagination headers follow Gitea's sources.

use incident_gate_sim::gitea::{start, GiteaSim, GiteaSimConfig, Reviewer};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gitea");
const TOKEN: &str = "fixture-token";
const SHA: &str = "2cf58b3a9c32d139470a5f32d5aa64efbd0fa90dda0144b09421709252fcb0ea";

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every difference in shape between the real answer and ours, as `path: why`.
fn shape_diff(real: &Value, ours: &Value, path: &str, out: &mut Vec<String>) {
    match (real, ours) {
        (Value::Null, _) => {}
        (Value::Object(r), Value::Object(o)) => {
            for (k, rv) in r {
                match o.get(k) {
                    Some(ov) => shape_diff(rv, ov, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}: missing")),
                }
            }
        }
        (Value::Array(r), Value::Array(o)) => {
            // each real element against ours of the same pull request (or place, or the first)
            for (i, rv) in r.iter().enumerate() {
                let same = rv.get("number").and_then(|n| o.iter().find(|ov| ov.get("number") == Some(n)));
                if let Some(ov) = same.or_else(|| o.get(i)).or_else(|| o.first()) {
                    shape_diff(rv, ov, &format!("{path}[{i}]"), out);
                }
            }
        }
        (r, o) if kind(r) == kind(o) => {}
        (r, o) => out.push(format!("{path}: {} in Gitea, {} here", kind(r), kind(o))),
    }
}

fn assert_shaped_like(name: &str, ours: &Value) {
    let real = fixture(name);
    assert!(
        ours.as_array().is_some_and(|a| !a.is_empty()),
        "{name}: the simulator answered no items to compare: {ours}"
    );
    let mut diffs = Vec::new();
    shape_diff(&real, ours, "", &mut diffs);
    assert!(diffs.is_empty(), "{name}: {diffs:#?}\nours: {ours:#}");
}

/// PR 124 as the fixtures show it.
async fn scenario() -> GiteaSim {
    let sim = start(GiteaSimConfig::new(TOKEN, "qam-openqa")).await;
    for n in [107, 120, 123, 128, 129, 131] {
        sim.create_pr("products/SLFO", n, SHA);
    }
    sim.create_pr("products/SLFO", 124, SHA);
    // the open review requests pulls.json lists
    sim.request_review("products/SLFO", 128, Reviewer::User("someone".into()));
    sim.request_review("products/SLFO", 120, Reviewer::User("autogits_obs_staging_bot".into()));
    for who in ["a", "b", "c"] {
        sim.request_review("products/SLFO", 107, Reviewer::User(who.into()));
    }
    sim.request_review("products/SLFO", 124, Reviewer::User("autogits_obs_staging_bot".into()));
    let qam = sim.request_review("products/SLFO", 124, Reviewer::User("qam-openqa-review".into()));
    sim.set_review("products/SLFO", 124, qam, "REQUEST_REVIEW", true, false);
    sim.add_comment(
        "products/SLFO",
        124,
        "autogits_obs_staging_bot",
        "Build is started in https://build.suse.de/project/show/SUSE:SLFO:1.1.99:PullRequest:124 .",
    );
    sim
}

async fn get(sim: &GiteaSim, route: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1{route}", sim.url()))
        .header("Authorization", format!("token {TOKEN}"))
        .send()
        .await
        .expect("simulator answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test]
async fn bodies_have_the_shape_of_the_real_gitea() {
    let sim = scenario().await;
    for (name, route) in [
        ("pulls.json", "/repos/products/SLFO/pulls?state=open"),
        ("reviews-124.json", "/repos/products/SLFO/pulls/124/reviews"),
        ("comments-124.json", "/repos/products/SLFO/issues/124/comments"),
        ("files-124.json", "/repos/products/SLFO/pulls/124/files"),
    ] {
        let (status, headers, body) = get(&sim, route).await;
        assert_eq!(status, 200, "{route}");
        assert!(headers.get("x-total-count").is_some(), "{route}: X-Total-Count");
        assert_shaped_like(name, &body);
    }
    // the single pull request is an element of the list
    let (status, _, pr) = get(&sim, "/repos/products/SLFO/pulls/124").await;
    assert_eq!(status, 200);
    assert_shaped_like("pulls.json", &Value::Array(vec![pr.clone()]));
    assert_eq!(pr["head"]["sha"], SHA);
    // the staging bot's request is open, so it is listed; the stale QAM request as in the fixture
    assert_eq!(pr["requested_reviewers"][0]["login"], "autogits_obs_staging_bot");
    let (_, _, reviews) = get(&sim, "/repos/products/SLFO/pulls/124/reviews").await;
    let qam = reviews.as_array().unwrap().iter().find(|r| r["user"]["login"] == "qam-openqa-review").unwrap();
    assert_eq!(
        (qam["state"].as_str(), qam["stale"].as_bool(), qam["commit_id"].as_str()),
        (Some("REQUEST_REVIEW"), Some(true), Some(""))
    );
}

#[tokio::test]
async fn pagination_and_errors_follow_gitea() {
    let mut cfg = GiteaSimConfig::new(TOKEN, "qam-openqa");
    cfg.max_response_items = 3;
    let sim = start(cfg).await;
    for n in 1..=7 {
        sim.create_pr("products/SLFO", n, SHA);
    }
    // genAPILinks: next and last from the first page, with ROOT_URL and the query sorted
    let (_, headers, body) = get(&sim, "/repos/products/SLFO/pulls?state=open&limit=50").await;
    assert_eq!(body.as_array().unwrap().len(), 3, "limit is clamped to MAX_RESPONSE_ITEMS");
    assert_eq!(headers["x-total-count"], "7");
    let base = format!("{}/api/v1/repos/products/SLFO/pulls", sim.url());
    assert_eq!(
        headers["link"].to_str().unwrap(),
        format!("<{base}?limit=50&page=2&state=open>; rel=\"next\",<{base}?limit=50&page=3&state=open>; rel=\"last\"")
    );
    let (_, headers, body) = get(&sim, "/repos/products/SLFO/pulls?state=open&limit=50&page=3").await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert!(!headers["link"].to_str().unwrap().contains("rel=\"next\""));
    // newest first, as Gitea sorts by default
    let (_, _, first) = get(&sim, "/repos/products/SLFO/pulls?state=open").await;
    assert_eq!(first[0]["number"], 7);

    // the review list pages too, but Gitea sends no Link there
    for i in 0..5 {
        sim.request_review("products/SLFO", 1, Reviewer::User(format!("r{i}")));
    }
    let (_, headers, body) = get(&sim, "/repos/products/SLFO/pulls/1/reviews?page=2").await;
    assert_eq!((body.as_array().unwrap().len(), headers.get("link").is_none()), (2, true));
    assert_eq!(headers["x-total-count"], "5");

    // errors: {"message", "url"}, 404 for what does not exist
    let (status, _, body) = get(&sim, "/repos/products/SLFO/pulls/999").await;
    assert_eq!((status, body["message"].as_str()), (404, Some("The target couldn't be found.")));
    assert!(body["url"].as_str().unwrap().ends_with("/api/swagger"));
    let c = reqwest::Client::new();
    let resp = c
        .post(format!("{}/api/v1/repos/products/SLFO/issues/1/comments", sim.url()))
        .json(&serde_json::json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["message"], "token is required");
    let resp = c
        .post(format!("{}/api/v1/repos/products/SLFO/issues/1/comments", sim.url()))
        .header("Authorization", format!("token {TOKEN}"))
        .json(&serde_json::json!({"body": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    // creating a comment is 201 with the comment; editing someone else's is 403
    let resp = c
        .post(format!("{}/api/v1/repos/products/SLFO/issues/1/comments", sim.url()))
        .header("Authorization", format!("token {TOKEN}"))
        .json(&serde_json::json!({"body": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_shaped_like("comments-124.json", &Value::Array(vec![resp.json::<Value>().await.unwrap()]));
    let theirs = sim.add_comment("products/SLFO", 1, "someone", "theirs");
    let resp = c
        .patch(format!("{}/api/v1/repos/products/SLFO/issues/comments/{theirs}", sim.url()))
        .header("Authorization", format!("token {TOKEN}"))
        .json(&serde_json::json!({"body": "mine now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}
