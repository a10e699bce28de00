//! The figures monitoring reads, in InfluxDB line protocol as openQA serves its own
//! (`/admin/influxdb/jobs`: measurement, `url` tag, integer fields, no timestamp; telegraf stamps
//! them). Rendered from one store read (`Store::metrics_read`): nothing asks openQA, IBS or Gitea,
//! and every process of a state directory answers the same. docs/monitoring.md names each field.

use crate::incident::Kind;
use crate::store::{MetricsRead, Sink};
use crate::verdict::Outcome;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

pub const MEASUREMENT: &str = "incident_gate";
/// Decisions the latency is taken over, newest first.
pub const LATENCY_WINDOW: usize = 100;

/// The lines for `read`, taken at `now`, with `url` (openQA's base URL, without credentials) as
/// the `url` tag. Every kind × result and every sink has a line even at zero, so that a panel
/// or an alert has a series from the start.
pub fn render(url: &str, read: &MetricsRead, now: SystemTime) -> String {
    let now_s = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let prefix = format!("{MEASUREMENT},url={}", escape_tag(url));
    let mut out = String::new();
    for kind in [Kind::Ibs, Kind::Gitea] {
        for result in [Outcome::Passed, Outcome::Failed, Outcome::NoJobs] {
            let count: u64 = read
                .decisions
                .iter()
                .filter(|d| d.kind == kind && d.result == result.as_str())
                .map(|d| d.count)
                .sum();
            let _ = writeln!(
                out,
                "{prefix},kind={},result={} decisions={count}i",
                kind.as_str(),
                result.as_str()
            );
        }
    }
    for sink in [Sink::Amqp, Sink::Obs, Sink::Gitea] {
        let s = read.sinks.iter().find(|s| s.sink == sink);
        let queued = s.map_or(0, |s| s.queued);
        let refused = s.map_or(0, |s| s.credentials_refused);
        let oldest = s.and_then(|s| s.oldest_decided_at.as_deref()).and_then(unix_s);
        let _ = writeln!(
            out,
            "{prefix},sink={} backlog={queued}i,oldest_undelivered_s={}i,credentials_refused={refused}i",
            sink_name(sink),
            oldest.map_or(0, |t| (now_s - t).max(0)),
        );
    }
    let oldest_wait = read.oldest_waiting_since_ms.map_or(0, |ms| (now_s - ms.div_euclid(1000)).max(0));
    let _ = write!(
        out,
        "{prefix} evaluations={}i,waiting={}i,oldest_wait_s={oldest_wait}i,openqa_refusals={}i,catchup_lag={}i",
        read.evaluations,
        read.waiting,
        read.openqa_refused,
        read.newest_seen.saturating_sub(read.watermark),
    );
    let mut latencies: Vec<i64> = read
        .recent
        .iter()
        .filter_map(|(decided, ended)| Some(unix_s(decided)? - unix_s(ended.as_deref()?)?))
        .map(|s| s.max(0))
        .collect();
    latencies.sort_unstable();
    let _ = write!(out, ",latency_window={}i", latencies.len());
    if let (Some(median), Some(p99)) = (percentile(&latencies, 50), percentile(&latencies, 99)) {
        let _ = write!(out, ",latency_median_s={median}i,latency_p99_s={p99}i");
    }
    out.push('\n');
    out
}

/// The sinks as monitoring names them: the services, not our modules.
fn sink_name(sink: Sink) -> &'static str {
    match sink {
        Sink::Amqp => "amqp",
        Sink::Obs => "ibs",
        Sink::Gitea => "gitea",
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn unix_s(rfc3339: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// A tag value: commas, equals signs and spaces are escaped, as the line protocol requires.
fn escape_tag(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            ',' | '=' | ' ' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DecisionCount, SinkRead};
    use std::time::Duration;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn lines_carry_every_series_with_ages_and_percentiles() {
        let mut recent = vec![("2026-12-07T10:00:30Z".to_string(), Some("2026-12-07T10:00:00Z".to_string()))];
        for i in 0..98 {
            recent.push((
                format!("2026-12-07T09:{:02}:10Z", i % 60),
                Some(format!("2026-12-07T09:{:02}:00Z", i % 60)),
            ));
        }
        recent.push(("2026-12-07T08:00:00Z".to_string(), None)); // recorded before last_job_end
        let read = MetricsRead {
            decisions: vec![
                DecisionCount { kind: Kind::Ibs, result: "passed".into(), count: 7 },
                DecisionCount { kind: Kind::Gitea, result: "failed".into(), count: 2 },
            ],
            evaluations: 40,
            openqa_refused: 3,
            waiting: 2,
            oldest_waiting_since_ms: Some(1_796_639_400_500), // 2026-12-07T10:30:00.5Z
            sinks: vec![SinkRead {
                sink: Sink::Obs,
                queued: 4,
                oldest_decided_at: Some("2026-12-07T10:50:00Z".into()),
                credentials_refused: 4,
            }],
            newest_seen: 5000,
            watermark: 4900,
            recent,
        };
        let text = render("http://openqa.example, x=1", &read, at("2026-12-07T11:00:00Z"));
        let lines: Vec<&str> = text.lines().collect();
        let p = r"incident_gate,url=http://openqa.example\,\ x\=1";
        assert_eq!(lines.len(), 6 + 3 + 1, "{text}");
        assert_eq!(lines[0], format!("{p},kind=ibs,result=passed decisions=7i"));
        assert_eq!(lines[1], format!("{p},kind=ibs,result=failed decisions=0i"));
        assert_eq!(lines[4], format!("{p},kind=gitea,result=failed decisions=2i"));
        assert_eq!(
            lines[6],
            format!("{p},sink=amqp backlog=0i,oldest_undelivered_s=0i,credentials_refused=0i")
        );
        assert_eq!(
            lines[7],
            format!("{p},sink=ibs backlog=4i,oldest_undelivered_s=600i,credentials_refused=4i")
        );
        assert_eq!(
            lines[9],
            format!(
                "{p} evaluations=40i,waiting=2i,oldest_wait_s=1800i,openqa_refusals=3i,catchup_lag=100i,\
                 latency_window=99i,latency_median_s=10i,latency_p99_s=30i"
            )
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn percentiles_are_nearest_rank_and_absent_without_data() {
        let v: Vec<i64> = (1..=200).collect();
        assert_eq!(percentile(&v, 50), Some(100));
        assert_eq!(percentile(&v, 99), Some(198));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
        let text = render("u", &MetricsRead::default(), UNIX_EPOCH + Duration::from_secs(1));
        let last = text.lines().last().unwrap();
        assert!(last.ends_with(",latency_window=0i"), "{last}");
    }
}
