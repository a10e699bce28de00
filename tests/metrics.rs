//! The metrics as monitoring reads them (`ig_gate_metrics`, served by the plugin on
//! /admin/influxdb/incident_gate): valid InfluxDB line protocol, checked by a strict parser of the
//! protocol's rules here, and figures that follow what the gate does.

mod common;

use common::{last_error, CGate, OpenQa};
use incident_gate::ffi::*;
use incident_gate_sim::obs::{ObsSimConfig, SimAuth, SimReview};
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::time::Duration;

/// One line of the protocol: `measurement[,tag=value…] field=value[,field=value…] [timestamp]`.
#[derive(Debug)]
struct Point {
    measurement: String,
    tags: BTreeMap<String, String>,
    fields: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// Reads up to an unescaped byte of `stops`; `\` escapes the next character (in measurements,
/// tag keys and values, field keys: comma, equals sign, space, backslash).
fn token(s: &str, stops: &[char]) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some((_, e @ (',' | '=' | ' ' | '\\'))) => out.push(e),
                other => return Err(format!("bad escape {other:?} in {s:?}")),
            }
        } else if stops.contains(&c) {
            return Ok((out, i));
        } else if c == '\n' {
            return Err("newline inside a line".into());
        } else {
            out.push(c);
        }
    }
    Ok((out, s.len()))
}

fn field_value(v: &str) -> Result<Value, String> {
    if let Some(int) = v.strip_suffix('i') {
        let ok = !int.is_empty() && int.trim_start_matches('-').chars().all(|c| c.is_ascii_digit());
        return if ok {
            int.parse().map(Value::Int).map_err(|e| e.to_string())
        } else {
            Err(format!("bad integer {v:?}"))
        };
    }
    if let Some(s) = v.strip_prefix('"') {
        let s = s.strip_suffix('"').ok_or(format!("unterminated string {v:?}"))?;
        return Ok(Value::Str(s.replace("\\\"", "\"").replace("\\\\", "\\")));
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    let numeric = !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
    match v.parse::<f64>() {
        Ok(f) if numeric && f.is_finite() => Ok(Value::Float(f)),
        _ => Err(format!("bad field value {v:?}")),
    }
}

fn parse_line(line: &str) -> Result<Point, String> {
    let (measurement, mut i) = token(line, &[',', ' '])?;
    if measurement.is_empty() || measurement.starts_with('_') {
        return Err(format!("bad measurement in {line:?}"));
    }
    let mut tags = BTreeMap::new();
    while line[i..].starts_with(',') {
        let (key, n) = token(&line[i + 1..], &['=', ',', ' '])?;
        i += 1 + n;
        if !line[i..].starts_with('=') || key.is_empty() {
            return Err(format!("tag without value in {line:?}"));
        }
        let (value, n) = token(&line[i + 1..], &[',', ' ', '='])?;
        i += 1 + n;
        if value.is_empty() || line[i..].starts_with('=') {
            return Err(format!("bad tag value of {key} in {line:?}"));
        }
        if tags.insert(key.clone(), value).is_some() {
            return Err(format!("tag {key} twice in {line:?}"));
        }
    }
    if !line[i..].starts_with(' ') {
        return Err(format!("no fields in {line:?}"));
    }
    let rest = &line[i + 1..];
    let (fields_text, timestamp) = match rest.find(' ') {
        Some(sp) => (&rest[..sp], Some(&rest[sp + 1..])),
        None => (rest, None),
    };
    if let Some(ts) = timestamp {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    let mut fields = BTreeMap::new();
    for pair in fields_text.split(',') {
        let (key, n) = token(pair, &['='])?;
        if key.is_empty() || n >= pair.len() {
            return Err(format!("bad field {pair:?} in {line:?}"));
        }
        if fields.insert(key.clone(), field_value(&pair[n + 1..])?).is_some() {
            return Err(format!("field {key} twice in {line:?}"));
        }
    }
    if fields.is_empty() {
        return Err(format!("no fields in {line:?}"));
    }
    Ok(Point { measurement, tags, fields })
}

fn parse(text: &str) -> Vec<Point> {
    assert!(text.ends_with('\n'), "the last line ends with a newline: {text:?}");
    text.lines().map(|l| parse_line(l).unwrap_or_else(|e| panic!("{e}\n{text}"))).collect()
}

#[test]
fn the_parser_refuses_what_the_protocol_refuses() {
    for bad in [
        "m",
        "m f=1i extra junk",
        "m,t f=1i",
        "m,t=a b f=1i",
        "m f=",
        "m f=1x",
        "m f=1i,f=2i",
        "m f=\"open",
        "m f=i",
        "m,t=a,t=b f=1i",
        "m\\x f=1i",
    ] {
        assert!(parse_line(bad).is_err(), "accepted {bad:?}");
    }
    let p = parse_line(r#"m\ 1,url=http://x\,y\=z\ w,k=v a=1i,b=2.5,c=t,d="s" 1700000000000000000"#).unwrap();
    assert_eq!(p.measurement, "m 1");
    assert_eq!(p.tags["url"], "http://x,y=z w");
    assert_eq!(p.fields["a"], Value::Int(1));
    assert_eq!(p.fields["b"], Value::Float(2.5));
    assert_eq!(p.fields["c"], Value::Bool(true));
    assert_eq!(p.fields["d"], Value::Str("s".into()));
}

fn metrics(gate: &CGate) -> String {
    let mut out = std::ptr::null_mut();
    let status = unsafe { ig_gate_metrics(gate.raw(), &mut out) };
    assert_eq!(status, ig_status::IG_OK, "{}", last_error());
    let text = unsafe { CStr::from_ptr(out) }.to_str().unwrap().to_owned();
    unsafe { ig_string_free(out) };
    text
}

/// The integer field of the line with exactly these tags (besides `url`).
fn int(points: &[Point], tags: &[(&str, &str)], field: &str) -> Option<i64> {
    let p = points.iter().find(|p| {
        p.tags.len() == tags.len() + 1
            && tags.iter().all(|(k, v)| p.tags.get(*k).map(String::as_str) == Some(v))
    })?;
    match p.fields.get(field)? {
        Value::Int(v) => Some(*v),
        other => panic!("{field} is not an integer: {other:?}"),
    }
}

on_both_stores!(metrics_are_line_protocol_and_follow_decisions_and_refused_credentials);

async fn metrics_are_line_protocol_and_follow_decisions_and_refused_credentials(store: &common::TestStore) {
    let qa = OpenQa::start().await;
    let auth = SimAuth::Basic { user: "qam-bot".into(), password: "the-right-one".into() };
    let obs = incident_gate_sim::obs::start(ObsSimConfig::new(auth)).await;
    obs.create_request(300_901, "review", vec![SimReview::group("qam-openqa")], "maintenance_release");
    let state = tempfile::tempdir().unwrap();
    let mut cfg = store.gate_config(&qa.url(), state.path());
    cfg["openqa_url"] = qa.url().replace("http://", "http://user:secret-pw@").into();
    cfg["report_obs"] = true.into();
    cfg["obs_url"] = obs.url().into();
    cfg["obs_user"] = "qam-bot".into();
    cfg["obs_password"] = "a-wrong-one".into();
    let gate = CGate::new(&cfg);

    let before = metrics(&gate);
    assert!(!before.contains("secret-pw"), "{before}");
    let points = parse(&before);
    assert!(points.iter().all(|p| p.measurement == "incident_gate" && p.tags["url"] == qa.url()), "{before}");
    assert_eq!(int(&points, &[("kind", "ibs"), ("result", "passed")], "decisions"), Some(0), "{before}");
    assert_eq!(int(&points, &[("sink", "ibs")], "backlog"), Some(0), "{before}");
    assert_eq!(int(&points, &[], "evaluations"), Some(0), "{before}");
    assert_eq!(int(&points, &[], "latency_window"), Some(0), "{before}");

    let jobs: Vec<u64> = (0..3).map(|i| qa.incident_job(90_901, 300_901, &format!("t{i}"))).collect();
    for job in &jobs {
        qa.sim.set_done(*job, "passed");
        gate.job_done(*job, "passed");
    }
    gate.flushed();
    // IBS refuses the password: the report waits, counted as refused credentials
    let after = common::eventually(Duration::from_secs(30), || {
        let text = metrics(&gate);
        let points = parse(&text);
        (int(&points, &[("sink", "ibs")], "credentials_refused") == Some(1)).then_some((text, points))
    })
    .await;
    let (text, points) = after.unwrap_or_else(|| panic!("no refused credentials in {}", metrics(&gate)));
    assert_eq!(int(&points, &[("kind", "ibs"), ("result", "passed")], "decisions"), Some(1), "{text}");
    assert_eq!(int(&points, &[("kind", "gitea"), ("result", "passed")], "decisions"), Some(0), "{text}");
    assert_eq!(int(&points, &[("sink", "ibs")], "backlog"), Some(1), "{text}");
    assert_eq!(int(&points, &[("sink", "amqp")], "backlog"), Some(0), "{text}");
    assert!(int(&points, &[], "evaluations").unwrap() >= 1, "{text}");
    assert_eq!(int(&points, &[], "waiting"), Some(0), "{text}");
    assert_eq!(int(&points, &[], "latency_window"), Some(1), "the decision knows its last job's end: {text}");
    assert!(int(&points, &[], "latency_median_s").unwrap() >= 0, "{text}");
    assert!(int(&points, &[], "latency_p99_s").is_some(), "{text}");
    assert_eq!(int(&points, &[], "openqa_refusals"), Some(0), "{text}");

    // openQA refuses a job of another incident (403): its evaluation is given up, and counted
    let (_, other) = qa.finished_incident(90_902, 2, "passed").await;
    qa.sim.refuse_job(other[1], 403, "Job is not visible to you");
    gate.job_done(other[0], "passed");
    gate.flushed();
    let refused = common::eventually(Duration::from_secs(30), || {
        let text = metrics(&gate);
        (int(&parse(&text), &[], "openqa_refusals") >= Some(1)).then_some(())
    })
    .await;
    assert!(refused.is_some(), "no openQA refusal counted: {}", metrics(&gate));
}
