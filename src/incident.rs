//! Which submissions (IBS incidents, Gitea pull requests) an openQA job tests, from its settings
//! alone.
//!
//! A submission is identified by kind and number: Gitea jobs also carry `INCIDENT_ID=<pr>`, which
//! can equal an IBS incident number. Aggregate `*_TEST_ISSUES` lists hold plain numbers; they are
//! IBS incident numbers and apply to IBS incidents only (a Gitea pull request is judged on its
//! own jobs).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What kind of submission is tested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An IBS maintenance incident with its release request (`INCIDENT_ID`, `RRID`).
    #[default]
    Ibs,
    /// A pull request on Gitea (`SUBMISSION_ID=git:<pr>`, `_GITEA_PR`, `GITEA_SHA`).
    Gitea,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ibs => "ibs",
            Kind::Gitea => "gitea",
        }
    }
}

/// A submission: what is decided. Written `12345` (IBS incident) or `git:124` (Gitea PR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Submission {
    pub kind: Kind,
    pub number: u64,
}

impl Submission {
    pub fn ibs(number: u64) -> Submission {
        Submission { kind: Kind::Ibs, number }
    }

    pub fn gitea(number: u64) -> Submission {
        Submission { kind: Kind::Gitea, number }
    }

    /// How log lines and messages name it: `incident 12345`, `pull request git:124`.
    pub fn named(self) -> String {
        match self.kind {
            Kind::Ibs => format!("incident {self}"),
            Kind::Gitea => format!("pull request {self}"),
        }
    }

    /// `12345`, `ibs:12345`, `git:124` or `gitea:124`; numbers are positive.
    pub fn parse(text: &str) -> Option<Submission> {
        let text = text.trim();
        let (kind, number) = match text.split_once(':') {
            None => (Kind::Ibs, text),
            Some(("ibs", n)) => (Kind::Ibs, n),
            Some(("git" | "gitea", n)) => (Kind::Gitea, n),
            Some(_) => return None,
        };
        let number: u64 = number.parse().ok().filter(|n| *n > 0)?;
        Some(Submission { kind, number })
    }

    /// The key in the store's `incident` columns: the incident number for IBS (as before Gitea
    /// pull requests existed), the negated number for a Gitea pull request.
    pub fn store_key(self) -> i64 {
        let n = self.number.min(i64::MAX as u64) as i64;
        match self.kind {
            Kind::Ibs => n,
            Kind::Gitea => -n,
        }
    }

    pub fn from_store_key(key: i64) -> Submission {
        if key < 0 {
            Submission::gitea(key.unsigned_abs())
        } else {
            Submission::ibs(key as u64)
        }
    }
}

impl fmt::Display for Submission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Ibs => write!(f, "{}", self.number),
            Kind::Gitea => write!(f, "git:{}", self.number),
        }
    }
}

/// A bare number is an IBS incident, as before Gitea pull requests.
impl From<u64> for Submission {
    fn from(number: u64) -> Submission {
        Submission::ibs(number)
    }
}

/// An IBS incident as its number (as before Gitea pull requests), a pull request as `"git:124"`.
impl Serialize for Submission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.kind {
            Kind::Ibs => s.serialize_u64(self.number),
            Kind::Gitea => s.collect_str(self),
        }
    }
}

/// Whether a job tests a Gitea pull request (rather than an IBS incident).
pub fn is_gitea_job(settings: &BTreeMap<String, String>) -> bool {
    settings.get("SUBMISSION_ID").is_some_and(|v| v.trim().starts_with("git:"))
        || settings.get("BUILD").is_some_and(|v| v.starts_with(":git:"))
        || ["_GITEA_PR", "GITEA_SHA", "GITEA_REPO"].iter().any(|k| settings.contains_key(*k))
}

/// The pull request a Gitea job tests.
pub fn gitea_pr_of(settings: &BTreeMap<String, String>) -> Option<u64> {
    let number = |v: &str| v.trim().parse::<u64>().ok().filter(|n| *n > 0);
    settings
        .get("SUBMISSION_ID")
        .and_then(|v| v.trim().strip_prefix("git:").and_then(number))
        .or_else(|| settings.get("_GITEA_PR").and_then(|v| number(v)))
        .or_else(|| settings.get("BUILD").and_then(|b| parse_build(b)))
        .or_else(|| settings.get("INCIDENT_ID").and_then(|v| number(v)))
}

/// Every submission a job with these settings tests: a Gitea job its pull request, any other job
/// its incident and the incidents its aggregate lists name.
pub fn submissions_of(settings: &BTreeMap<String, String>) -> BTreeSet<Submission> {
    if is_gitea_job(settings) {
        let mut out: BTreeSet<Submission> =
            gitea_pr_of(settings).map(Submission::gitea).into_iter().collect();
        // an aggregate listing incidents is never a Gitea job, but keep what it lists
        out.extend(
            settings
                .iter()
                .filter(|(k, _)| is_test_issues_key(k))
                .flat_map(|(_, v)| parse_issue_list(v).map(Submission::ibs).collect::<Vec<_>>()),
        );
        return out;
    }
    incidents_of(settings).into_iter().map(Submission::ibs).collect()
}

/// `RRID=SUSE:Maintenance:<incident>:<request>` → (incident, request).
pub fn parse_rrid(rrid: &str) -> Option<(u64, u64)> {
    let mut parts = rrid.rsplitn(3, ':');
    let request = parts.next()?.parse().ok()?;
    let incident = parts.next()?.parse().ok()?;
    let project = parts.next()?;
    project.ends_with(":Maintenance").then_some((incident, request))
}

/// A maintenance `BUILD`: `:<incident>:<package>` or the newer `:<type>:<incident>:<package>`.
pub fn parse_build(build: &str) -> Option<u64> {
    let rest = build.strip_prefix(':')?;
    let parts: Vec<&str> = rest.split(':').collect();
    match parts.as_slice() {
        [incident, package] if !package.is_empty() => incident.parse().ok(),
        [kind, incident, package] if !kind.is_empty() && !package.is_empty() => incident.parse().ok(),
        _ => None,
    }
}

/// The elements of a `*_TEST_ISSUES` list ("12345,12346"); openQA matches whole elements only.
pub fn parse_issue_list(list: &str) -> impl Iterator<Item = u64> + '_ {
    list.split(',').filter_map(|s| s.trim().parse().ok())
}

pub fn is_test_issues_key(key: &str) -> bool {
    key.ends_with("_TEST_ISSUES") || key == "TEST_ISSUES[]" || key == "TEST_ISSUES"
}

/// Every incident a job with these settings tests.
pub fn incidents_of<'a>(settings: impl IntoIterator<Item = (&'a String, &'a String)>) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for (key, value) in settings {
        match key.as_str() {
            "INCIDENT_ID" => out.extend(value.trim().parse::<u64>().ok()),
            "BUILD" => out.extend(parse_build(value)),
            "RRID" => out.extend(parse_rrid(value).map(|(i, _)| i)),
            k if is_test_issues_key(k) => out.extend(parse_issue_list(value)),
            _ => {}
        }
    }
    out
}

/// Whether the job is one of the submission's own jobs (as opposed to an aggregate listing it).
/// A Gitea job never belongs to the IBS incident of the same number, nor an IBS job to a PR.
pub fn is_own_job(settings: &BTreeMap<String, String>, s: Submission) -> bool {
    match s.kind {
        Kind::Ibs => !is_gitea_job(settings) && is_incident_job(settings, s.number),
        Kind::Gitea => is_gitea_job(settings) && gitea_pr_of(settings) == Some(s.number),
    }
}

/// Whether the job is one of the incident's own jobs (as opposed to an aggregate listing it).
pub fn is_incident_job(settings: &BTreeMap<String, String>, incident: u64) -> bool {
    settings.get("INCIDENT_ID").and_then(|v| v.trim().parse().ok()) == Some(incident)
        || settings.get("BUILD").and_then(|b| parse_build(b)) == Some(incident)
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_name_a_pull_request_as_such() {
        assert_eq!(super::Submission::ibs(55555).named(), "incident 55555");
        assert_eq!(super::Submission::gitea(12400).named(), "pull request git:12400");
    }

    use super::*;
    use std::collections::BTreeMap;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn gitea_and_ibs_jobs_of_the_same_number_are_different_submissions() {
        let git =
            settings(&[("INCIDENT_ID", "124"), ("SUBMISSION_ID", "git:124"), ("BUILD", ":git:124:curl")]);
        let trigger =
            settings(&[("_GITEA_PR", "124"), ("GITEA_SHA", "abc"), ("BUILD", ":products_SLFO:124:curl")]);
        let ibs =
            settings(&[("INCIDENT_ID", "124"), ("RRID", "SUSE:Maintenance:124:9"), ("BUILD", ":124:curl")]);
        for s in [&git, &trigger] {
            assert_eq!(submissions_of(s).into_iter().collect::<Vec<_>>(), vec![Submission::gitea(124)]);
            assert!(is_own_job(s, Submission::gitea(124)) && !is_own_job(s, Submission::ibs(124)));
        }
        assert_eq!(submissions_of(&ibs).into_iter().collect::<Vec<_>>(), vec![Submission::ibs(124)]);
        assert!(is_own_job(&ibs, Submission::ibs(124)) && !is_own_job(&ibs, Submission::gitea(124)));
        let agg = settings(&[("OS_TEST_ISSUES", "124,125"), ("BUILD", "20261124-1")]);
        assert_eq!(
            submissions_of(&agg).into_iter().collect::<Vec<_>>(),
            vec![Submission::ibs(124), Submission::ibs(125)]
        );
    }

    #[test]
    fn submission_names() {
        assert_eq!(Submission::parse("git:124"), Some(Submission::gitea(124)));
        assert_eq!(Submission::parse("gitea:124"), Some(Submission::gitea(124)));
        assert_eq!(Submission::parse("124"), Some(Submission::ibs(124)));
        assert_eq!(Submission::parse("ibs:124"), Some(Submission::ibs(124)));
        for bad in ["", "git:", "git:0", "0", "obs:1", "git:-1", "x"] {
            assert_eq!(Submission::parse(bad), None, "{bad}");
        }
        assert_eq!(Submission::gitea(124).to_string(), "git:124");
        for s in [Submission::gitea(124), Submission::ibs(124)] {
            assert_eq!(Submission::from_store_key(s.store_key()), s);
        }
    }

    #[test]
    fn rrid() {
        assert_eq!(parse_rrid("SUSE:Maintenance:12345:300001"), Some((12345, 300001)));
        assert_eq!(parse_rrid("SUSE:Maintenance:12345"), None);
        assert_eq!(parse_rrid("SUSE:SLE-15:12345:1"), None);
        assert_eq!(parse_rrid("garbage"), None);
    }

    #[test]
    fn build_forms() {
        assert_eq!(parse_build(":12345:openssl"), Some(12345));
        assert_eq!(parse_build(":SUSE:12345:openssl"), Some(12345));
        assert_eq!(parse_build("20261124-1"), None);
        assert_eq!(parse_build(":12345:"), None);
        assert_eq!(parse_build(":abc:openssl"), None);
    }

    #[test]
    fn incidents_from_all_sources() {
        let s = settings(&[
            ("OS_TEST_ISSUES", "12345,12346,12400"),
            ("SDK_TEST_ISSUES", "12346"),
            ("TEST_ISSUES[]", "12345,12346,12400"),
            ("BUILD", "20261124-1"),
        ]);
        assert_eq!(incidents_of(&s).into_iter().collect::<Vec<_>>(), vec![12345, 12346, 12400]);
        let s = settings(&[("BUILD", ":777:curl")]);
        assert_eq!(incidents_of(&s).into_iter().collect::<Vec<_>>(), vec![777]);
        let s = settings(&[("INCIDENT_ID", "5"), ("RRID", "SUSE:Maintenance:5:9")]);
        assert_eq!(incidents_of(&s).into_iter().collect::<Vec<_>>(), vec![5]);
        // list_value semantics: a prefix of an element is not the element
        let s = settings(&[("OS_TEST_ISSUES", "12345")]);
        assert!(!incidents_of(&s).contains(&1234));
    }
}
