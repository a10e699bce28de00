//! Simulators of the services incident-gate talks to (openQA, OBS/IBS, Gitea), for the tests, the Perl
//! tests and `incident-gate demo`.

pub mod gitea;
pub mod gitea_control;
pub mod obs;
pub mod openqa;

/// Settings of an incident job as SUSE's maintenance scheduling creates them (see
/// tests/fixtures/openqa: `BUILD=:<incident>:<package>`, `INCIDENT_ID`, `RRID`).
pub fn incident_job_settings(
    incident: u64,
    request: u64,
    package: &str,
    test: &str,
    arch: &str,
) -> Vec<(String, String)> {
    let machine = if arch == "aarch64" { "aarch64" } else { "64bit" };
    settings(&[
        ("DISTRI", "sle"),
        ("VERSION", "15-SP6"),
        ("FLAVOR", "Server-DVD-Incidents"),
        ("ARCH", arch),
        ("MACHINE", machine),
        ("TEST", test),
        ("BUILD", &format!(":{incident}:{package}")),
        ("INCIDENT_ID", &incident.to_string()),
        ("RRID", &format!("SUSE:Maintenance:{incident}:{request}")),
        ("REPOHASH", "abc123"),
    ])
}

/// Settings of a job of Gitea pull request `pr` of `repo` at commit `sha`, as qem-bot's
/// gitea-trigger schedules them (`INCIDENT_ID` is the bare PR number, as on real jobs).
pub fn gitea_job_settings(
    repo: &str,
    pr: u64,
    sha: &str,
    package: &str,
    test: &str,
) -> Vec<(String, String)> {
    settings(&[
        ("DISTRI", "sle"),
        ("VERSION", "16.0"),
        ("FLAVOR", "Online-Increments"),
        ("ARCH", "x86_64"),
        ("MACHINE", "64bit"),
        ("TEST", test),
        ("BUILD", &format!(":git:{pr}:{package}")),
        ("INCIDENT_ID", &pr.to_string()),
        ("SUBMISSION_ID", &format!("git:{pr}")),
        ("_GITEA_PR", &pr.to_string()),
        ("GITEA_REPO", repo),
        ("GITEA_SHA", sha),
    ])
}

/// Settings of an aggregate job of `build` listing `incidents` in `OS_TEST_ISSUES`.
pub fn aggregate_job_settings(build: &str, incidents: &[u64], test: &str) -> Vec<(String, String)> {
    let issues: Vec<String> = incidents.iter().map(|i| i.to_string()).collect();
    settings(&[
        ("DISTRI", "sle"),
        ("VERSION", "15-SP6"),
        ("FLAVOR", "Server-DVD-Updates"),
        ("ARCH", "x86_64"),
        ("MACHINE", "64bit"),
        ("TEST", test),
        ("BUILD", build),
        ("OS_TEST_ISSUES", &issues.join(",")),
        ("REPOHASH", "1732460000"),
    ])
}

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `create_job` takes borrowed pairs.
pub fn borrowed(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A deterministic shuffle, so simulated days replay the same order (no rand dependency).
pub fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
}
