//! Which incidents (and which release request) an openQA job tests, from its settings alone.

use std::collections::BTreeSet;

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

/// Whether the job is one of the incident's own jobs (as opposed to an aggregate listing it).
pub fn is_incident_job(settings: &std::collections::BTreeMap<String, String>, incident: u64) -> bool {
    settings.get("INCIDENT_ID").and_then(|v| v.trim().parse().ok()) == Some(incident)
        || settings.get("BUILD").and_then(|b| parse_build(b)) == Some(incident)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
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
