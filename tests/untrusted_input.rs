//! Property tests of our parsers of input that others control: openQA's event JSON (in process
//! and on AMQP), OBS's XML and our comment markers on IBS, INI files, `Link` headers, Gitea's
//! bodies and the strings that come through the C ABI. Arbitrary input and real input mutated
//! byte by byte: each parser answers (a value or an error naming what is wrong), never panics,
//! and what it answers stays small whatever it was given. Few cases, so the suite stays fast; a
//! failing case is printed by proptest and kept below as a regression test.

use incident_gate::ffi::{self, ig_status};
use proptest::prelude::*;
use std::ffi::{CStr, CString};

/// An error message is for a log line: it may quote a little of the input, never all of it.
const MESSAGE_MAX: usize = 2048;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Byte-level mutations of a real input: (position, operation, byte), positions taken modulo the
/// current length. Operations: overwrite, insert, delete, truncate, duplicate a slice.
fn mutations() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), 0u8..5, any::<u8>()), 1..8)
}

fn mutate(input: &[u8], ops: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = input.to_vec();
    for &(pos, op, byte) in ops {
        let at = if out.is_empty() { 0 } else { pos % out.len() };
        match op {
            0 if !out.is_empty() => out[at] = byte,
            1 => out.insert(at, byte),
            2 if !out.is_empty() => {
                out.remove(at);
            }
            3 => out.truncate(at),
            _ => {
                let end = (at + 1 + byte as usize).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
        }
    }
    out
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// openQA's recorded AMQP messages: (routing key, body).
fn amqp_messages() -> Vec<(String, Vec<u8>)> {
    String::from_utf8(fixture("openqa/amqp-messages.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let m: serde_json::Value = serde_json::from_str(l).unwrap();
            (m["routing_key"].as_str().unwrap().to_string(), m["body"].to_string().into_bytes())
        })
        .collect()
}

const EVENTS: &[&str] = &[
    "openqa_job_create",
    "openqa_job_done",
    "openqa_job_restart",
    "openqa_jobs_restart",
    "openqa_job_delete",
    "openqa_comment_create",
    "openqa_comment_update",
    "openqa_comment_delete",
    "openqa_iso_create",
    "openqa_job_cancel",
];

/// JSON values of any shape, numbers of any size included.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        "[0-9]{1,25}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("job_id".to_string()),
                    Just("result".to_string()),
                    Just("ids".to_string()),
                    Just("remaining".to_string()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn openqa_event_json_gets_an_event_or_a_named_rejection(
        name in prop::sample::select(EVENTS),
        value in json_value(),
        text in "\\PC{0,64}",
    ) {
        for json in [value.to_string(), text] {
            match incident_gate::events::parse(name, &json) {
                Ok(event) => prop_assert!(event.jobs.len() <= json.len(), "{json}"),
                Err(e) => {
                    prop_assert!(e.message.starts_with(name) || e.message.contains("unknown event"), "{e}");
                    prop_assert!(e.message.len() <= MESSAGE_MAX, "{} bytes", e.message.len());
                }
            }
        }
    }

    #[test]
    fn recorded_amqp_messages_mutated(pick in any::<prop::sample::Index>(), ops in mutations()) {
        let messages = amqp_messages();
        let (key, body) = &messages[pick.index(messages.len())];
        let body = mutate(body, &ops);
        let key_bytes = mutate(key.as_bytes(), &ops[..1]);
        for key in [key.clone(), String::from_utf8_lossy(&key_bytes).into_owned()] {
            match incident_gate::amqp::listen::parse_message(&key, &body) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.is_empty() && e.len() <= MESSAGE_MAX, "{} bytes: {e:.200}", e.len()),
            }
        }
    }

    #[test]
    fn obs_xml_mutated_and_arbitrary(
        pick in 0usize..4,
        ops in mutations(),
        text in "\\PC{0,80}",
    ) {
        let files = [
            "obs/derived/comments-request-115.xml",
            "obs/derived/status-404-review_not_found.xml",
            "obs/derived/check-response-after-post.xml",
            "obs/derived/status-422-invalid_check.xml",
        ];
        let mutated = String::from_utf8_lossy(&mutate(&fixture(files[pick]), &ops)).into_owned();
        for xml in [mutated, text, format!("<a>{}</a>", "<b>".repeat(300))] {
            match incident_gate::obs::xml::parse(&xml) {
                Ok(root) => prop_assert!(!root.name.is_empty()),
                Err(e) => prop_assert!(!e.is_empty() && e.len() <= MESSAGE_MAX, "{e:.200}"),
            }
            if let Some((code, summary)) = incident_gate::obs::xml::parse_status(&xml) {
                prop_assert!(code.len() + summary.len() <= xml.len());
            }
        }
    }

    #[test]
    fn report_markers_mutated_and_arbitrary(ops in mutations(), text in "\\PC{0,80}") {
        let ibs = b"text\n<!-- incident-gate state=failed rr=300001 key=9f2c41d07a5b -->\nmore";
        let gitea = fixture("gitea/our-results-comment-124.md");
        for (bytes, gitea_side) in [(mutate(ibs, &ops), false), (mutate(&gitea, &ops), true)] {
            let body = String::from_utf8_lossy(&bytes).into_owned();
            for body in [body, text.clone()] {
                if gitea_side {
                    if let Some(m) = incident_gate::gitea::report::parse_marker(&body) {
                        prop_assert!(m.key.len() + m.sha.len() + m.state.len() <= body.len());
                    }
                    let _ = incident_gate::gitea::report::is_approval_of(&body, "qam-openqa-review", "2cf58b3a");
                } else if let Some(m) = incident_gate::obs::report::parse_marker(&body) {
                    prop_assert!(m.key.len() + m.state.len() <= body.len());
                }
            }
        }
    }

    #[test]
    fn gitea_bodies_mutated(pick in 0usize..3, ops in mutations()) {
        use incident_gate::gitea::client::{Comment, PullRequest, Review};
        let files = ["gitea/comments-124.json", "gitea/reviews-124.json", "gitea/pulls.json"];
        let body = mutate(&fixture(files[pick]), &ops);
        // what the client decodes them into; an error is serde's, naming line and column
        let errors = [
            serde_json::from_slice::<Vec<Comment>>(&body).err(),
            serde_json::from_slice::<Vec<Review>>(&body).err(),
            serde_json::from_slice::<Vec<PullRequest>>(&body).err(),
        ];
        for e in errors.into_iter().flatten() {
            prop_assert!(e.to_string().len() <= MESSAGE_MAX);
        }
    }

    #[test]
    fn link_headers_of_gitea(value in "[ -~]{0,120}", ops in mutations()) {
        let real = b"<https://src.suse.de/api/v1/repos/products/SLFO/pulls?page=2&limit=50>; rel=\"next\",<https://src.suse.de/api/v1/repos/products/SLFO/pulls?page=9&limit=50>; rel=\"last\"";
        for bytes in [value.into_bytes(), mutate(real, &ops)] {
            let Ok(header) = reqwest::header::HeaderValue::from_bytes(&bytes) else { continue };
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert("link", header);
            // a next page of the same list, none, or an error naming what the header is
            match incident_gate::gitea::client::has_next_page(&headers, "/repos/products/SLFO/pulls", 1) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.starts_with("a Link header") && e.len() <= MESSAGE_MAX, "{e}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn ini_files_get_a_config_or_an_error_naming_the_file_or_key(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("[incident_gate]".to_string()),
                Just("[global]".to_string()),
                "[a-z_]{1,20} ?= ?\\PC{0,30}",
                "\\PC{0,40}",
                Just("openqa_url = http://openqa.local".to_string()),
                Just("quiet_period_s = 99999999999999999999".to_string()),
            ],
            0..12,
        ),
        ops in mutations(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openqa.ini");
        let text = lines.join("\n");
        for bytes in [text.clone().into_bytes(), mutate(text.as_bytes(), &ops)] {
            std::fs::write(&path, &bytes).unwrap();
            match incident_gate::config::Config::ini_section(&path, "incident_gate") {
                Ok(map) => {
                    if let Err(e) = incident_gate::config::Config::from_value(serde_json::Value::Object(map)) {
                        prop_assert!(e.0.starts_with("config"), "{e:?}");
                        prop_assert!(e.0.len() <= MESSAGE_MAX);
                    }
                }
                Err(e) => {
                    prop_assert!(e.0.contains("openqa.ini"), "{e:?}");
                    prop_assert!(e.0.len() <= MESSAGE_MAX + 200);
                }
            }
        }
    }

    /// Configuration, event names and data, submissions: bytes from a C caller, any of them.
    #[test]
    fn c_abi_strings(
        config in proptest::collection::vec(1u8.., 0..120),
        name in proptest::collection::vec(1u8.., 0..24),
        data in proptest::collection::vec(1u8.., 0..120),
        event in prop::sample::select(EVENTS),
        value in json_value(),
    ) {
        let config = CString::new(config).unwrap();
        let mut gate = std::ptr::null_mut();
        let st = unsafe { ffi::ig_gate_new(config.as_ptr(), &mut gate) };
        if st == ig_status::IG_OK {
            unsafe { ffi::ig_gate_free(gate) };
        } else {
            prop_assert!(gate.is_null());
            prop_assert!(!last_error().is_empty() && last_error().len() <= MESSAGE_MAX);
        }
        let state = tempfile::tempdir().unwrap();
        let good = serde_json::json!({
            "openqa_url": "http://127.0.0.1:9", "state_dir": state.path(), "publish_amqp": false,
            "report_obs": false, "queue_capacity": 4, "catchup_max_requests": 0,
        });
        let good = CString::new(good.to_string()).unwrap();
        let mut gate = std::ptr::null_mut();
        prop_assert_eq!(unsafe { ffi::ig_gate_new(good.as_ptr(), &mut gate) }, ig_status::IG_OK);
        let event = CString::new(event).unwrap();
        let value = CString::new(value.to_string()).unwrap();
        let (name, data) = (CString::new(name).unwrap(), CString::new(data).unwrap());
        for (n, d) in [(&name, &data), (&event, &data), (&event, &value)] {
            let st = unsafe { ffi::ig_gate_submit(gate, n.as_ptr(), d.as_ptr()) };
            if st != ig_status::IG_OK {
                prop_assert!(!last_error().is_empty() && last_error().len() <= MESSAGE_MAX, "{st:?}");
            }
        }
        let mut verdict = std::ptr::null_mut();
        let st = unsafe { ffi::ig_gate_evaluate_submission(gate, data.as_ptr(), &mut verdict) };
        prop_assert!(st != ig_status::IG_OK || !verdict.is_null());
        unsafe { ffi::ig_string_free(verdict) };
        unsafe { ffi::ig_gate_free(gate) };
    }
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(ffi::ig_last_error()) }.to_string_lossy().into_owned()
}

#[test]
fn a_megabyte_of_input_is_not_echoed_back() {
    let huge = "9".repeat(1 << 20);
    for json in [
        format!(r#"{{"id":"{huge}","result":"passed"}}"#),
        format!(r#"{{"id":{huge}}}"#),
        format!(r#"{{"ids":["{huge}"]}}"#),
        format!("[{}]", "[".repeat(100_000)),
    ] {
        let e = incident_gate::events::parse("openqa_job_done", &json).expect_err("refused");
        assert!(e.message.len() <= MESSAGE_MAX, "{} bytes: {:.200}", e.message.len(), e.message);
    }
    let xml = format!("<status code=\"{huge}\"><summary>{huge}</summary>");
    let e = incident_gate::obs::xml::parse(&xml).expect_err("unclosed");
    assert!(e.len() <= MESSAGE_MAX, "{} bytes", e.len());
}
