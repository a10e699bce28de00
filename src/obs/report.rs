//! The Markdown incident-gate writes to IBS: the request comment, the review message and the
//! status check texts. Pure functions of a `Decision`.
//!
//! OBS renders comments with Redcarpet plus its own pre-processing (`@login` mentions, `sr#1`
//! links), stores at most 65535 characters and refuses NUL. So text from openQA (job names,
//! group names) is escaped with backslashes and HTML entities (Redcarpet passes entities through
//! unchanged), URLs are percent-encoded where a character would end a Markdown link or trigger
//! a mention, and the whole body is kept under a byte budget however many jobs block.

use crate::decision::Decision;
use crate::verdict::Outcome;

/// OBS's limit for a comment body (Rails `length: maximum`, a MySQL TEXT column).
pub const OBS_MAX_BODY: usize = 65_535;
/// What we allow ourselves, in bytes (never fewer than characters), below OBS's limit.
pub const BODY_BUDGET: usize = 60_000;
/// Longest job or group name shown before it is cut (in characters).
const MAX_NAME_CHARS: usize = 200;
const MAX_URL_BYTES: usize = 1_000;

const MARKER_START: &str = "<!-- incident-gate ";
const MARKER_END: &str = " -->";

/// The identity line of our comments: lets the reporter find and replace its own comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub state: String,
    pub rr: Option<u64>,
    pub key: String,
}

pub fn marker_line(decision: &Decision) -> String {
    let v = &decision.verdict;
    let rr = v.request.map_or_else(|| "none".to_string(), |r| r.to_string());
    format!("{MARKER_START}state={} rr={rr} key={}{MARKER_END}", v.result.as_str(), decision.key)
}

/// The marker in a comment's text, wherever it is (OBS may strip or reflow surrounding text).
pub fn parse_marker(text: &str) -> Option<Marker> {
    let start = text.find(MARKER_START)? + MARKER_START.len();
    let end = start + text[start..].find(MARKER_END)?;
    let (mut state, mut rr, mut key) = (None, None, None);
    for pair in text[start..end].split_whitespace() {
        match pair.split_once('=') {
            Some(("state", v)) => state = Some(v.to_string()),
            Some(("rr", v)) => rr = v.parse().ok(),
            Some(("key", v)) => key = Some(v.to_string()),
            _ => {}
        }
    }
    Some(Marker { state: state?, rr, key: key.filter(|k| !k.is_empty())? })
}

/// Text from openQA made inert for Markdown and OBS's mention/link pre-processing, on one line.
pub fn escape_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // entities rather than `\|`: Redcarpet splits table cells before it sees escapes
            '|' => out.push_str("&#124;"),
            '@' => out.push_str("&#64;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '#' | '~' | '!' | '^' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A URL safe inside `[text](url)`: characters that end the link, break the table or start a
/// mention are percent-encoded; everything else stays as openQA wrote it.
pub fn escape_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            ' ' | '(' | ')' | '<' | '>' | '"' | '\'' | '|' | '[' | ']' | '`' | '\\' | '@' | '*' | '_'
            | '~' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The blocking jobs' rows under the table head already in `table`, as many as fit in `budget`
/// bytes, then how many more (IBS and Gitea comments alike).
pub fn push_blocking_rows(
    table: &mut String,
    blocking: &[crate::verdict::BlockingJob],
    openqa: &str,
    budget: usize,
) {
    let mut shown = 0;
    for job in blocking {
        let url = link(&job.url)
            .unwrap_or_else(|| escape_url(&format!("{}/tests/{}", openqa.trim_end_matches('/'), job.id)));
        let row = format!(
            "| [{}]({url}) | {} | {} | {} |\n",
            job.id,
            escape_markdown(&cut(&job.name, MAX_NAME_CHARS)),
            escape_markdown(&cut(&job.result, 40)),
            escape_markdown(&cut(&job.group, MAX_NAME_CHARS)),
        );
        if table.len() + row.len() > budget {
            break;
        }
        table.push_str(&row);
        shown += 1;
    }
    let hidden = blocking.len() - shown;
    if hidden > 0 {
        table.push_str(&format!("\n... and {hidden} more blocking jobs, see openQA.\n"));
    }
    if !table.is_empty() {
        table.push('\n');
    }
}

/// A link target we are willing to show: http(s) and not absurdly long.
pub fn link(url: &str) -> Option<String> {
    (url.len() <= MAX_URL_BYTES && (url.starts_with("http://") || url.starts_with("https://")))
        .then(|| escape_url(url))
}

pub fn cut(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// Where a reader sees every openQA job of the incident. Incident jobs carry
/// `BUILD=:<incident>:<package>`, and the verdict does not keep the package, so this is openQA's
/// job search for `:<incident>:` rather than a `/tests/overview?build=` page of one package.
pub fn overview_url(openqa: &str, incident: u64) -> String {
    format!("{}/tests?match=:{incident}:", openqa.trim_end_matches('/'))
}

fn counts_line(decision: &Decision) -> String {
    let j = &decision.verdict.jobs;
    let mut parts = vec![format!("{} passed", j.passed)];
    if j.softfailed > 0 {
        parts.push(format!("{} softfailed", j.softfailed));
    }
    if j.accepted > 0 {
        parts.push(format!("{} failed but acceptable for this incident", j.accepted));
    }
    if j.failed > 0 {
        parts.push(format!("{} failed", j.failed));
    }
    let noun = if j.total == 1 { "job" } else { "jobs" };
    format!("{} relevant openQA {noun}: {}.", j.total, parts.join(", "))
}

fn request_label(decision: &Decision) -> String {
    let v = &decision.verdict;
    match (&v.rrid, v.request) {
        (Some(rrid), _) => format!("release request {}", escape_markdown(rrid)),
        (None, Some(r)) => format!("release request {r}"),
        (None, None) => "no release request known".to_string(),
    }
}

/// One line saying what openQA concluded (status output, review messages, check descriptions).
pub fn summary_line(decision: &Decision) -> String {
    let v = &decision.verdict;
    let j = &v.jobs;
    match v.result {
        Outcome::Passed => format!("openQA: all {} relevant jobs of incident {} passed", j.total, v.incident),
        Outcome::Failed => {
            format!("openQA: {} of {} relevant jobs of incident {} failed", j.failed, j.total, v.incident)
        }
        Outcome::NoJobs => format!("openQA: no jobs found for incident {}", v.incident),
        Outcome::Pending => {
            format!("openQA: {} of {} jobs of incident {} still running", j.pending, j.total, v.incident)
        }
    }
}

/// Entries of "still expected" shown in a comment; the rest is counted.
const MAX_WAITS_SHOWN: usize = 20;

/// The request comment: marker, verdict, counts, blocking jobs (as many as fit), overview link.
pub fn render_comment(decision: &Decision) -> String {
    let v = &decision.verdict;
    let mut head = String::new();
    head.push_str(&marker_line(decision));
    head.push('\n');
    let verdict = match v.result {
        Outcome::Passed => "passed",
        Outcome::Failed => "failed",
        Outcome::NoJobs => "has no openQA jobs",
        Outcome::Pending => "is still being tested",
    };
    head.push_str(&format!(
        "**openQA: incident {} {verdict}** ({})\n\n",
        v.incident,
        request_label(decision)
    ));
    if v.result == Outcome::NoJobs {
        head.push_str("openQA has no relevant jobs for this incident, so it cannot vouch for it.\n\n");
    } else {
        head.push_str(&counts_line(decision));
        head.push_str("\n\n");
    }
    if !v.complete {
        // a failure is reported at once, but it is not the end: say what is still expected
        head.push_str("Testing is not finished yet; still expected:\n\n");
        for w in v.waiting.iter().take(MAX_WAITS_SHOWN) {
            let since =
                w.since.as_deref().map(|s| format!(" (since {})", escape_markdown(s))).unwrap_or_default();
            head.push_str(&format!("- {}{since}\n", escape_markdown(&cut(&w.what, MAX_NAME_CHARS))));
        }
        if v.waiting.len() > MAX_WAITS_SHOWN {
            head.push_str(&format!("- ... and {} more\n", v.waiting.len() - MAX_WAITS_SHOWN));
        }
        head.push('\n');
    }

    let mut tail = String::new();
    if v.result == Outcome::Failed && !decision.contacts.is_empty() {
        tail.push_str("Whom to contact for the blocking jobs:\n\n");
        for (group, lines) in decision.contacts.iter().take(20) {
            tail.push_str(&format!(
                "- {}: {}\n",
                escape_markdown(&cut(group, MAX_NAME_CHARS)),
                escape_markdown(&cut(&lines.join("; "), 300))
            ));
        }
        tail.push('\n');
    }
    let page = escape_url(&crate::decision::page_url(&decision.openqa, v.submission()));
    tail.push_str(&format!("[Why: incident {} explained on openQA]({page})\n\n", v.incident));
    let overview = escape_url(&overview_url(&decision.openqa, v.incident));
    tail.push_str(&format!("[All openQA jobs of incident {}]({overview})\n\n", v.incident));
    tail.push_str(&format!("Decided by incident-gate at {}.\n", escape_markdown(&decision.decided_at)));

    let mut table = String::new();
    if !v.blocking.is_empty() {
        table.push_str("| Job | Name | Result | Group |\n|---|---|---|---|\n");
    }
    // room for the "and N more" line, however many digits N has
    let reserve = 120;
    let budget = BODY_BUDGET.saturating_sub(head.len() + tail.len() + reserve);
    push_blocking_rows(&mut table, &v.blocking, &decision.openqa, budget);
    let mut body = head + &table + &tail;
    // the budget holds by construction; this guards against a future edit breaking it
    if body.len() >= OBS_MAX_BODY {
        body = cut(&body, BODY_BUDGET / 4);
    }
    body.replace('\0', "")
}

/// The review message: the whole report when declining (the reasons must travel with the
/// decline), one line with the overview link when accepting.
pub fn review_message(decision: &Decision) -> String {
    match decision.verdict.result {
        Outcome::Passed => format!(
            "{}. Details: {}",
            summary_line(decision),
            crate::decision::page_url(&decision.openqa, decision.verdict.submission())
        ),
        _ => render_comment(decision),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{BlockingJob, Counts, Verdict};

    fn decision(result: Outcome, blocking: Vec<BlockingJob>) -> Decision {
        let failed = blocking.len() as u64;
        let verdict = Verdict {
            incident: 12345,
            kind: Default::default(),
            sha: None,
            repo: None,
            request: Some(300001),
            rrid: Some("SUSE:Maintenance:12345:300001".into()),
            result,
            jobs: Counts { total: 40 + failed, passed: 39, softfailed: 1, failed, accepted: 0, pending: 0 },
            blocking,
            job_ids: vec![1, 2, 3],
            notes: vec![],
            complete: true,
            waiting: vec![],
        };
        let mut d = Decision::new(verdict, "https://openqa.example.com/");
        d.decided_at = "2026-11-24T17:03:12Z".into();
        d
    }

    fn job(id: u64, name: &str) -> BlockingJob {
        BlockingJob {
            id,
            name: name.into(),
            result: "failed".into(),
            group: "Maintenance: SLE 15 SP6 Incidents".into(),
            url: format!("https://openqa.example.com/tests/{id}"),
        }
    }

    #[test]
    fn escaping_keeps_tables_and_mentions_inert() {
        assert_eq!(escape_markdown("a|b"), "a&#124;b");
        assert_eq!(
            escape_markdown("x@64bit *y* _z_ `c` [l](u) <b>&"),
            "x&#64;64bit \\*y\\* \\_z\\_ \\`c\\` \\[l\\]\\(u\\) &lt;b&gt;&amp;"
        );
        assert_eq!(escape_markdown("line\nbreak\0nul"), "line breaknul");
        assert_eq!(escape_url("https://o/t?a=b c&d=(e)|@"), "https://o/t?a=b%20c&d=%28e%29%7C%40");
        assert_eq!(escape_url("https://o/tests/4711#step/x/1"), "https://o/tests/4711#step/x/1");
    }

    #[test]
    fn failed_comment_lists_blocking_jobs_with_links() {
        let d = decision(
            Outcome::Failed,
            vec![job(
                4711,
                "sle-15-SP6-Server-DVD-Incidents-x86_64-Build:12345:openssl-mau|extratests@64bit",
            )],
        );
        let body = render_comment(&d);
        assert!(
            body.starts_with(&format!("<!-- incident-gate state=failed rr=300001 key={} -->\n", d.key)),
            "{body}"
        );
        assert!(body.contains("| [4711](https://openqa.example.com/tests/4711) | sle-15-SP6-Server-DVD-Incidents-x86\\_64-Build:12345:openssl-mau&#124;extratests&#64;64bit | failed | Maintenance: SLE 15 SP6 Incidents |"), "{body}");
        assert!(body.contains("41 relevant openQA jobs: 39 passed, 1 softfailed, 1 failed."), "{body}");
        assert!(
            body.contains(
                "[All openQA jobs of incident 12345](https://openqa.example.com/tests?match=:12345:)"
            ),
            "{body}"
        );
        // every table row has exactly five pipes: no cell spilled
        for line in body.lines().filter(|l| l.starts_with("| [")) {
            assert_eq!(line.matches('|').count(), 5, "{line}");
        }
    }

    #[test]
    fn comments_link_the_incident_page_and_name_whom_to_contact() {
        let mut d = decision(Outcome::Failed, vec![job(4711, "mau-extratests")]);
        d.contacts
            .insert("Maintenance: SLE 15 SP6 Incidents".into(), vec!["@qam-sle, jane@example.com".into()]);
        let body = render_comment(&d);
        assert!(
            body.contains(
                "[Why: incident 12345 explained on openQA](https://openqa.example.com/incident%5Fgate/12345)"
            ),
            "{body}"
        );
        assert!(body.contains("Whom to contact for the blocking jobs:"), "{body}");
        assert!(
            body.contains("- Maintenance: SLE 15 SP6 Incidents: &#64;qam-sle, jane&#64;example.com"),
            "{body}"
        );
        let passed = review_message(&decision(Outcome::Passed, vec![]));
        assert!(passed.ends_with("Details: https://openqa.example.com/incident_gate/12345"), "{passed}");
        assert_eq!(d.event_json()["page"], "https://openqa.example.com/incident_gate/12345");
    }

    #[test]
    fn passed_and_no_jobs() {
        let d = decision(Outcome::Passed, vec![]);
        let body = render_comment(&d);
        assert!(body.contains("**openQA: incident 12345 passed**") && !body.contains("| Job |"), "{body}");
        assert!(review_message(&d)
            .starts_with("openQA: all 40 relevant jobs of incident 12345 passed. Details: https://"));
        let d = decision(Outcome::NoJobs, vec![]);
        assert!(render_comment(&d).contains("has no openQA jobs"));
    }

    #[test]
    fn ten_thousand_blocking_jobs_stay_under_the_limit() {
        let jobs: Vec<BlockingJob> =
            (0..10_000).map(|i| job(100_000 + i, &format!("{}|{}", "n@me".repeat(60), i))).collect();
        let d = decision(Outcome::Failed, jobs);
        let body = render_comment(&d);
        assert!(body.len() < OBS_MAX_BODY && body.chars().count() < OBS_MAX_BODY, "{}", body.len());
        let shown = body.lines().filter(|l| l.starts_with("| [")).count();
        assert!(shown > 10, "{shown}");
        assert!(body.contains(&format!("... and {} more blocking jobs", 10_000 - shown)), "{body}");
        assert!(body.contains("[All openQA jobs of incident 12345]"));
        assert!(body.starts_with(&format!("<!-- incident-gate state=failed rr=300001 key={} -->\n", d.key)));
        // one absurd name cannot blow the budget either
        let d = decision(Outcome::Failed, vec![job(1, &"|".repeat(1_000_000))]);
        assert!(render_comment(&d).len() < OBS_MAX_BODY);
    }

    #[test]
    fn markers_parse() {
        let d = decision(Outcome::Failed, vec![]);
        // the format comments already on IBS carry: written and read as these literal bytes
        assert_eq!(marker_line(&d), format!("<!-- incident-gate state=failed rr=300001 key={} -->", d.key));
        let m = parse_marker(
            "text before\n<!-- incident-gate state=failed rr=300001 key=9f2c41d07a5b -->\nafter",
        );
        let key = "9f2c41d07a5b".to_string();
        assert_eq!(m, Some(Marker { state: "failed".into(), rr: Some(300001), key }));
        assert_eq!(parse_marker("<!-- incident-gate state=passed rr=none key=k -->").unwrap().rr, None);
        assert_eq!(parse_marker("<!-- incident-gate state=passed rr=1 -->"), None);
        assert_eq!(parse_marker("<!-- ReviewBot state=done -->"), None);
        assert_eq!(parse_marker("<!-- incident-gate state=passed key=k"), None);
    }
}
