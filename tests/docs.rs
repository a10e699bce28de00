//! The configuration reference lists every key with the default the code uses.

use incident_gate::config::Config;

#[test]
fn configuration_reference_lists_every_key_with_its_default() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    for (key, value) in defaults.as_object().unwrap() {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
        let shown = match value {
            serde_json::Value::Null => "–".to_string(),
            serde_json::Value::String(s) => format!("`{s}`"),
            serde_json::Value::Array(items) => {
                let items: Vec<&str> = items.iter().filter_map(|i| i.as_str()).collect();
                format!("`{}`", items.join(", "))
            }
            other => format!("`{other}`"),
        };
        let cell = row.split('|').nth(2).unwrap().trim();
        // the AMQP URL default is shown in full in the docs (guest/guest is no secret)
        if key == "amqp_url" {
            assert_eq!(cell, format!("`{}`", Config::default().amqp_url.expose()));
        } else {
            assert_eq!(cell, shown, "default of `{key}` in docs/configuration.md");
        }
    }
}

/// Both kinds of `incident.done` bodies match docs/incident-done.schema.json (version 2), and an
/// IBS body keeps every version 1 field.
#[test]
fn incident_done_bodies_of_both_kinds_match_the_schema() {
    use incident_gate::decision::Decision;
    use incident_gate::incident::Kind;
    use incident_gate::verdict::{Counts, Outcome, Verdict};
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/incident-done.schema.json"))
            .unwrap();
    let schema = jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap();
    let verdict = |kind: Kind| Verdict {
        incident: 124,
        kind,
        sha: (kind == Kind::Gitea).then(|| "2cf58b3a9c32".to_string()),
        repo: (kind == Kind::Gitea).then(|| "products/SLFO".to_string()),
        request: (kind == Kind::Ibs).then_some(300124),
        rrid: (kind == Kind::Ibs).then(|| "SUSE:Maintenance:124:300124".to_string()),
        result: Outcome::Passed,
        jobs: Counts { total: 1, passed: 1, ..Counts::default() },
        blocking: vec![],
        job_ids: vec![1],
        notes: vec![],
        complete: true,
        waiting: vec![],
    };
    let ibs = Decision::new(verdict(Kind::Ibs), "https://openqa.example.com").event_json();
    let pr = Decision::new(verdict(Kind::Gitea), "https://openqa.example.com").event_json();
    for body in [&ibs, &pr] {
        let errors: Vec<String> =
            schema.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path)).collect();
        assert!(errors.is_empty(), "{errors:?}\n{body}");
    }
    assert_eq!((ibs["kind"].as_str(), pr["kind"].as_str()), (Some("ibs"), Some("gitea")));
    assert_eq!(pr["gitea"], serde_json::json!({"repo": "products/SLFO", "pr": 124, "sha": "2cf58b3a9c32"}));
    assert!(ibs.get("gitea").is_none());
    assert_ne!(ibs["event_id"], pr["event_id"], "same number, different submissions");
    for v1 in
        ["incident", "request", "rrid", "result", "openqa", "jobs", "blocking", "decided_at", "event_id"]
    {
        assert!(ibs.get(v1).is_some(), "{v1}");
    }
    let mut wrong = pr.clone();
    wrong["kind"] = "obs".into();
    assert!(!schema.is_valid(&wrong), "the schema can fail");
}
