//! The texts incident-gate writes on a Gitea pull request: the approval comment that SUSE's
//! review bot turns into the QAM review, and the results comment (identified by a marker line,
//! edited in place). Pure functions of a `PrReport`.
//!
//! Gitea renders Markdown with `@login` mentions and `#123` references, so text from openQA is made
//! inert the same way as for IBS (backslashes and HTML entities, see obs::report).

use super::reporter::PrReport;
use crate::obs::report::{escape_markdown, link, push_blocking_rows, BODY_BUDGET};
use crate::verdict::Outcome;

const MARKER_START: &str = "<!-- incident-gate-gitea ";
const MARKER_END: &str = " -->";

/// The identity line of our results comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub state: String,
    pub pr: u64,
    pub sha: String,
    pub key: String,
}

pub fn marker_line(r: &PrReport) -> String {
    format!(
        "{MARKER_START}state={} pr={} sha={} key={}{MARKER_END}",
        r.result.as_str(),
        r.number,
        token(&r.tested_sha),
        token(&r.key)
    )
}

/// Marker values are single words: anything else would make the line unparseable.
fn token(s: &str) -> String {
    let t: String = s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
    if t.is_empty() {
        "none".into()
    } else {
        t
    }
}

/// Whether `text` is a comment that begins with our marker line, as our results comments do.
pub fn begins_with_marker(text: &str) -> bool {
    text.trim_start().starts_with(MARKER_START)
}

/// The marker in a comment, wherever it is.
pub fn parse_marker(text: &str) -> Option<Marker> {
    let start = text.find(MARKER_START)? + MARKER_START.len();
    let end = start + text[start..].find(MARKER_END)?;
    let (mut state, mut pr, mut sha, mut key) = (None, None, None, None);
    for pair in text[start..end].split_whitespace() {
        match pair.split_once('=') {
            Some(("state", v)) => state = Some(v.to_string()),
            Some(("pr", v)) => pr = v.parse().ok(),
            Some(("sha", v)) => sha = Some(v.to_string()),
            Some(("key", v)) => key = Some(v.to_string()),
            _ => {}
        }
    }
    Some(Marker { state: state?, pr: pr?, sha: sha?, key: key? })
}

/// The first line SUSE's review bot acts on, and the line naming the commit it approves.
pub fn approval_identifiers(bot: &str, sha: &str) -> (String, String) {
    (format!("@{bot}: approved"), format!("Tested commit: {sha}"))
}

/// Whether `body` is an approval of `sha` for `bot` (as qem-bot checks it: both lines present).
pub fn is_approval_of(body: &str, bot: &str, sha: &str) -> bool {
    let (command, commit) = approval_identifiers(bot, sha);
    body.lines().any(|l| l.trim() == command) && body.lines().any(|l| l.trim() == commit)
}

fn label(r: &PrReport) -> String {
    format!("{}/{}#{}", escape_markdown(&r.owner), escape_markdown(&r.repo), r.number)
}

pub fn summary_line(r: &PrReport) -> String {
    let j = &r.jobs;
    let pr = format!("pull request {}/{}#{}", r.owner, r.repo, r.number);
    match r.result {
        Outcome::Passed => format!("openQA: all {} relevant jobs of {pr} passed", j.total),
        Outcome::Failed => format!("openQA: {} of {} relevant jobs of {pr} failed", j.failed, j.total),
        Outcome::NoJobs => format!("openQA: no jobs found for {pr}"),
        Outcome::Pending => format!("openQA: {} of {} jobs of {pr} still running", j.pending, j.total),
    }
}

/// `@bot: approved`, one line of summary with the link, `Tested commit: <sha>`.
pub fn approval_comment(bot: &str, r: &PrReport) -> String {
    let (command, commit) = approval_identifiers(bot, &r.tested_sha);
    let mut message = escape_markdown(&summary_line(r));
    if let Some(url) = link(&r.page_url) {
        message.push_str(&format!(". Details: {url}"));
    }
    format!("{command}\n{message}\n{commit}")
}

/// Builds linked one by one in the results comment; the page of the pull request has them all.
const MAX_BUILD_LINKS: usize = 10;

/// openQA's overview of one build. openQA matches `build` exactly: a pull request's jobs are in
/// builds `:git:<pr>:<package>` (or `:<project>:<pr>:<package>`), never in `:git:<pr>`.
pub fn overview_url(openqa: &str, build: &str) -> String {
    let mut query = String::with_capacity(build.len());
    for b in build.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                query.push(b as char)
            }
            _ => query.push_str(&format!("%{b:02X}")),
        }
    }
    format!("{}/tests/overview?build={query}", openqa.trim_end_matches('/'))
}

/// The 12 characters people quote a commit by.
fn short(sha: &str) -> String {
    escape_markdown(&sha.chars().take(12).collect::<String>())
}

/// The results comment. `head` is the PR's head when it is no longer the commit that was tested.
pub fn results_comment(r: &PrReport, head: Option<&str>) -> String {
    let mut text = marker_line(r);
    text.push('\n');
    let verdict = match r.result {
        Outcome::Passed => "passed",
        Outcome::Failed => "failed",
        Outcome::NoJobs => "has no openQA jobs",
        Outcome::Pending => "is still being tested",
    };
    text.push_str(&format!("**openQA: {} {verdict}** (commit `{}`)\n\n", label(r), short(&r.tested_sha)));
    if let Some(head) = head {
        text.push_str(&format!(
            "These results are for an older commit, `{}`: the pull request's head is now `{}`, so it is not approved on them. The new commit needs its own openQA results.\n\n",
            short(&r.tested_sha),
            short(head)
        ));
    }
    if r.result == Outcome::NoJobs {
        text.push_str("openQA has no relevant jobs for this pull request, so it cannot vouch for it.\n\n");
    } else {
        let j = &r.jobs;
        let mut parts = vec![format!("{} passed", j.passed)];
        if j.softfailed > 0 {
            parts.push(format!("{} softfailed", j.softfailed));
        }
        if j.accepted > 0 {
            parts.push(format!("{} failed but acceptable", j.accepted));
        }
        if j.failed > 0 {
            parts.push(format!("{} failed", j.failed));
        }
        let noun = if j.total == 1 { "job" } else { "jobs" };
        text.push_str(&format!("{} relevant openQA {noun}: {}.\n\n", j.total, parts.join(", ")));
    }
    let mut tail = String::new();
    if let Some(url) = link(&r.page_url) {
        tail.push_str(&format!("[This pull request in openQA: every job, the verdict explained]({url})\n\n"));
    }
    let overviews: Vec<String> = r
        .builds
        .iter()
        .take(MAX_BUILD_LINKS)
        .filter_map(|b| {
            let url = link(&overview_url(&r.openqa, b))?;
            Some(format!("[{}]({url})", escape_markdown(b)))
        })
        .collect();
    if !overviews.is_empty() {
        let more = r.builds.len().saturating_sub(MAX_BUILD_LINKS);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        tail.push_str(&format!("openQA overview per build: {}{more}\n\n", overviews.join(" · ")));
    }
    tail.push_str(&format!("Decided by incident-gate at {}.\n", escape_markdown(&r.decided_at)));

    let mut table = String::new();
    if !r.blocking.is_empty() {
        table.push_str("| Job | Name | Result | Group |\n|---|---|---|---|\n");
    }
    let budget = BODY_BUDGET.saturating_sub(text.len() + tail.len() + 120);
    push_blocking_rows(&mut table, &r.blocking, &r.openqa, budget);
    (text + &table + &tail).replace('\0', "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{BlockingJob, Counts};

    fn report(result: Outcome) -> PrReport {
        PrReport {
            owner: "products".into(),
            repo: "SLFO".into(),
            number: 124,
            tested_sha: "2cf58b3a9c32d139470a5f32d5aa64efbd0fa90dda0144b09421709252fcb0ea".into(),
            result,
            complete: true,
            jobs: Counts { total: 3, passed: 2, softfailed: 0, failed: 1, accepted: 0, pending: 0 },
            blocking: vec![BlockingJob {
                id: 4711,
                name: "sle-16.0-x86_64-Build:git:124:openssl-mau|x@64bit".into(),
                result: "failed".into(),
                group: "SLFO PRs".into(),
                url: "https://openqa.example.com/tests/4711".into(),
            }],
            openqa: "https://openqa.example.com".into(),
            builds: vec![":git:124:openssl".into(), ":SUSE:SLFO:1.1.99:PullRequest:124:kernel+x".into()],
            page_url: "https://openqa.example.com/incident_gate/git:124".into(),
            key: "k1".into(),
            decided_at: "2026-11-24T17:03:12Z".into(),
        }
    }

    #[test]
    fn approval_comment_has_the_lines_the_review_bot_reads() {
        let r = report(Outcome::Passed);
        let body = approval_comment("qam-openqa-review", &r);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], "@qam-openqa-review: approved");
        assert_eq!(lines[2], format!("Tested commit: {}", r.tested_sha));
        assert!(
            lines[1].contains("all 3 relevant jobs")
                && lines[1].ends_with("Details: https://openqa.example.com/incident%5Fgate/git:124"),
            "{body}"
        );
        assert!(is_approval_of(&body, "qam-openqa-review", &r.tested_sha));
        assert!(!is_approval_of(&body, "qam-openqa-review", "0000"));
    }

    #[test]
    fn results_comment_has_marker_table_and_older_commit_note() {
        let r = report(Outcome::Failed);
        let body = results_comment(&r, None);
        let marker =
            format!("<!-- incident-gate-gitea state=failed pr=124 sha={} key=k1 -->\n", r.tested_sha);
        assert!(body.starts_with(&marker), "{body}");
        // a comment of ours as Gitea holds it (written by an earlier run), not one made here
        let held = include_str!("../../tests/fixtures/gitea/our-results-comment-124.md");
        let sha = "2cf58b3a9c32d139470a5f32d5aa64efbd0fa90dda0144b09421709252fcb0ea".to_string();
        assert_eq!(
            parse_marker(held),
            Some(Marker { state: "failed".into(), pr: 124, sha, key: "key-failed-1".into() })
        );
        assert!(body.contains("| [4711](https://openqa.example.com/tests/4711) | sle-16.0-x86\\_64-Build:git:124:openssl-mau&#124;x&#64;64bit | failed | SLFO PRs |"), "{body}");
        assert!(!body.contains("older commit"));
        let body = results_comment(&r, Some("ffff0000ffff0000"));
        assert!(
            body.contains("results are for an older commit, `2cf58b3a9c32`")
                && body.contains("now `ffff0000ffff`"),
            "{body}"
        );
        assert_eq!(parse_marker("<!-- incident-gate-gitea state=failed pr=x sha=a key=k -->"), None);
        assert!(begins_with_marker(&body) && !begins_with_marker(&format!("> {body}")));
    }

    #[test]
    fn results_comment_links_the_pull_request_page_and_each_build_not_a_build_that_matches_nothing() {
        let body = results_comment(&report(Outcome::Failed), None);
        assert!(!body.contains("build=:git:124)") && !body.contains("build=:git:124 "), "{body}");
        assert!(
            body.contains("[This pull request in openQA: every job, the verdict explained](https://openqa.example.com/incident%5Fgate/git:124)"),
            "{body}"
        );
        // openQA's overview matches `build` exactly: one link per build of the verdict's jobs
        assert!(
            body.contains(
                "[:git:124:openssl](https://openqa.example.com/tests/overview?build=:git:124:openssl)"
            ),
            "{body}"
        );
        assert!(
            body.contains("(https://openqa.example.com/tests/overview?build=:SUSE:SLFO:1.1.99:PullRequest:124:kernel%2Bx)"),
            "a '+' would be read as a space: {body}"
        );
        assert_eq!(
            overview_url("https://o.example/", "a b&c#d"),
            "https://o.example/tests/overview?build=a%20b%26c%23d"
        );
        let mut many = report(Outcome::Passed);
        many.builds = (0..15).map(|i| format!(":git:124:p{i}")).collect();
        let body = results_comment(&many, None);
        assert_eq!(body.matches("/tests/overview?build=").count(), MAX_BUILD_LINKS, "{body}");
        assert!(body.contains(" and 5 more"), "{body}");
        assert_eq!(parse_marker("<!-- incident-gate state=failed rr=1 key=k -->"), None);
    }
}
