//! The configuration every part reads: a JSON object (the C ABI), or the `[incident_gate]` INI
//! section that the openQA plugin and the command share. Every default lives in `Default for Config`.

use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::path::PathBuf;

/// A value that must never reach a log, an event, a status document or an error message.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// An AMQP URL whose password is shown as `<redacted>` everywhere but in `expose()`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    pub fn new(s: impl Into<String>) -> Self {
        AmqpUrl(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// `scheme://user:password@host` → `scheme://user:<redacted>@host`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[scheme_end..scheme_end + at];
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') { format!("{user}:<redacted>") } else { user.to_string() };
            format!("{}{}{}", &url[..scheme_end], shown, &url[scheme_end + at..])
        }
        None => url.to_string(),
    }
}

/// The URL without any user information: links must work for whoever reads them and never carry
/// a credential, not even a redacted one.
pub fn link_base(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.as_str().trim_end_matches('/').to_string()
        }
        Err(_) => redact_url(url).trim_end_matches('/').to_string(),
    }
}

fn serialize_redacted_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// Checks a URL the way the HTTP and AMQP clients will parse it, so that a bad host, IP address
/// or port is a configuration error now and not "unavailable" at the first request. The message
/// never repeats the URL (it may hold a password).
fn check_url(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let bad = |why: String| Err(ConfigError(format!("config key `{key}`: {why}")));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad(format!("must be a {} URL", schemes.join(" or ")));
    };
    if !schemes.iter().any(|s| s.trim_end_matches("://") == scheme) {
        return bad(format!("must be a {} URL", schemes.join(" or ")));
    }
    // amqp:// is no "special" scheme for the URL parser, which then takes any host as opaque:
    // parse the authority as http's to check host, IP address and port alike.
    let parsed = match reqwest::Url::parse(&format!("http://{rest}")) {
        Ok(u) => u,
        Err(e) => return bad(format!("not a valid URL: {e}")),
    };
    if parsed.host_str().is_none_or(str::is_empty) {
        return bad("has no host".into());
    }
    if reqwest::Url::parse(url).is_err() {
        return bad("not a valid URL".into());
    }
    Ok(())
}

/// Where the store is: empty for SQLite in `state_dir`, else a PostgreSQL URL
/// (`postgresql://user[:password]@host[:port]/db?sslmode=…`) whose password is shown as
/// `***` everywhere but in `expose()`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(String);

impl StoreUrl {
    pub fn new(s: impl Into<String>) -> Self {
        StoreUrl(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn redacted(&self) -> String {
        crate::store::postgres::redact(&self.0)
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for StoreUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for AmqpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// What to do on IBS with a final verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReviewPolicy {
    /// Accept on `passed`, comment on `failed` (the safe default).
    AcceptOnpass,
    /// Accept on `passed`, decline on `failed` with the blocking jobs as the reason.
    AcceptDecline,
    /// Never change a review; comment the verdict.
    Comment,
    /// Record what would be done, touch nothing.
    DryRun,
}

impl ReviewPolicy {
    /// As it is spelled in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewPolicy::AcceptOnpass => "accept-onpass",
            ReviewPolicy::AcceptDecline => "accept-decline",
            ReviewPolicy::Comment => "comment",
            ReviewPolicy::DryRun => "dry-run",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Base URL of openQA, used for API calls and (without its credentials) for the links in
    /// events and comments.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub openqa_url: String,
    /// API key and secret; only needed for authenticated routes (reads are public).
    pub openqa_api_key: Option<String>,
    pub openqa_api_secret: Option<Secret>,
    pub amqp_url: AmqpUrl,
    pub amqp_exchange: String,
    pub amqp_topic_prefix: String,
    /// openQA publishes to `pubsub` without declaring it; declare it only where nobody else does.
    pub amqp_declare_exchange: bool,
    /// Publish `incident.done` events (through the outbox).
    pub publish_amqp: bool,
    /// The queue `incident-gate listen` binds to openQA's job and comment messages.
    pub amqp_queue: String,
    pub amqp_queue_durable: bool,
    /// Report decisions to IBS according to `review_policy` (through the outbox).
    pub report_obs: bool,
    #[serde(serialize_with = "serialize_redacted_url")]
    pub obs_url: String,
    pub obs_user: Option<String>,
    pub obs_password: Option<Secret>,
    pub obs_ssh_key: Option<PathBuf>,
    /// Also post a status check on the request (many OBS instances refuse it; never fatal).
    pub obs_status_report: bool,
    /// IBS refused our credentials or permissions (401, 403): try again after this long, until
    /// it accepts them (the operator fixes the password, key or group membership).
    pub obs_denied_retry_s: u64,
    /// A report waiting for the other side (no review asked of us yet, or stale after a push) is
    /// tried again every `reconcile_interval_s` for at most this long after its decision, then
    /// given up with a message saying so.
    pub review_wait_max_s: u64,
    pub review_group: String,
    pub review_policy: ReviewPolicy,
    /// Job groups whose jobs never count (globs with `*` and `?`).
    pub ignore_groups: Vec<String>,
    /// Wait this long after the last event of an incident before evaluating it.
    pub settle_ms: u64,
    /// No approval (and no decline) until this long after the incident's last job was created
    /// (or first seen): where nothing says that scheduling is still going on, jobs created one
    /// after another must not each be taken for the end of testing. 0 turns it off.
    pub quiet_period_s: u64,
    /// Coverage policy: what must exist before an incident can pass, besides at least one job of
    /// its own. One rule a string, `DISTRI/VERSION/FLAVOR/ARCH: [aggregate] [flavors=A|B]
    /// [tests=x|y]` with globs (see `verdict::CoverageRule`).
    pub coverage: Vec<String>,
    /// How often incidents still pending are evaluated without an event.
    pub reconcile_interval_s: u64,
    /// openQA requests one catch-up may send at most (about every `reconcile_interval_s` among
    /// the processes of a state directory, at engine start too after a longer pause): it asks
    /// openQA for jobs that ended since the last catch-up, so their incidents are decided even
    /// when their events were lost. 0 turns catch-up off.
    pub catchup_max_requests: u32,
    /// Decisions older than this many days (not an incident's latest, nothing left to deliver)
    /// are removed with their delivered outbox rows; 0 keeps them for ever.
    pub retention_days: u64,
    pub state_dir: PathBuf,
    /// The store shared by every process and host that names it: empty keeps SQLite in
    /// `state_dir`; `postgresql://…` keeps it in the schema `incident_gate` of that database.
    pub store_url: StoreUrl,
    /// At most this many openQA or IBS requests in flight at once.
    pub concurrency: usize,
    /// Events that wait for the engine; a full queue refuses more.
    pub queue_capacity: usize,
    pub http_timeout_s: u64,
    /// SUSE's Gitea (SLE 16 pull requests): base URL without `/api/v1`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub gitea_url: String,
    /// Access token of the account that comments on pull requests.
    pub gitea_token: Option<Secret>,
    /// `owner/name` of the repository whose pull requests are tested.
    pub gitea_repo: String,
    /// The user the QAM review is requested from; approval comments mention it.
    pub gitea_review_bot: String,
    /// The team the QAM review may be requested from instead of the user.
    pub gitea_review_team: String,
    /// With `accept-decline`, also submit a native "request changes" review on a failure.
    pub gitea_request_changes: bool,
    /// The login `gitea_token` belongs to, so our comments are known without `GET /user` (which
    /// a scoped token needs `read:user` for); empty: asked once, else our marker line.
    pub gitea_user: String,
    /// Gitea refused our token or its permissions (401, 403): try again after this long.
    pub gitea_denied_retry_s: u64,
    /// Report decisions about Gitea pull requests to Gitea (through the outbox).
    pub report_gitea: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            openqa_url: "http://localhost".into(),
            openqa_api_key: None,
            openqa_api_secret: None,
            amqp_url: AmqpUrl::new("amqp://guest:guest@localhost:5672/%2f"),
            amqp_exchange: "pubsub".into(),
            amqp_topic_prefix: "suse".into(),
            amqp_declare_exchange: false,
            publish_amqp: true,
            amqp_queue: "incident-gate".into(),
            amqp_queue_durable: true,
            report_obs: true,
            obs_url: "https://api.suse.de".into(),
            obs_user: None,
            obs_password: None,
            obs_ssh_key: None,
            obs_status_report: false,
            obs_denied_retry_s: 600,
            review_wait_max_s: 3 * DAY_S,
            review_group: "qam-openqa".into(),
            review_policy: ReviewPolicy::AcceptOnpass,
            ignore_groups: vec!["*Devel*".into(), "*Test*".into()],
            settle_ms: 0,
            quiet_period_s: 0,
            coverage: Vec::new(),
            reconcile_interval_s: 300,
            catchup_max_requests: 20,
            retention_days: 90,
            state_dir: PathBuf::from("/var/lib/incident-gate"),
            store_url: StoreUrl::default(),
            concurrency: 4,
            queue_capacity: 10_000,
            http_timeout_s: 30,
            gitea_url: "https://src.suse.de".into(),
            gitea_token: None,
            gitea_repo: "products/SLFO".into(),
            gitea_review_bot: "qam-openqa-review".into(),
            gitea_review_team: "qam-openqa".into(),
            gitea_request_changes: false,
            gitea_user: String::new(),
            gitea_denied_retry_s: 600,
            report_gitea: true,
        }
    }
}

const DAY_S: u64 = 86_400;

/// A configuration error; its message names the offending key and never carries a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

const SECRET_KEYS: &[&str] = &["openqa_api_secret", "obs_password", "amqp_url", "gitea_token", "store_url"];

impl Config {
    /// The coverage policy, parsed (`validate` refused any rule that does not parse).
    pub fn coverage_rules(&self) -> Vec<crate::verdict::CoverageRule> {
        self.coverage.iter().filter_map(|r| crate::verdict::CoverageRule::parse(r).ok()).collect()
    }

    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError(format!("config is not valid JSON: {e}")))?;
        Self::from_value(value)
    }

    pub fn from_value(mut value: serde_json::Value) -> Result<Config, ConfigError> {
        let Some(map) = value.as_object_mut() else {
            return Err(ConfigError("config must be a JSON object".into()));
        };
        coerce_strings(map)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            // serde's message may quote the rejected value: never echo it for a secret key
            let detail = if SECRET_KEYS.iter().any(|k| key.starts_with(k)) {
                "invalid value".to_string()
            } else {
                e.inner().to_string()
            };
            if key == "." {
                ConfigError(format!("config: {detail}"))
            } else {
                ConfigError(format!("config key `{key}`: {detail}"))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("config key `{key}`: {why}")));
        for rule in &self.coverage {
            if let Err(why) = crate::verdict::CoverageRule::parse(rule) {
                return bad("coverage", &format!("rule `{rule}`: {why}"));
            }
        }
        for (key, url) in
            [("openqa_url", &self.openqa_url), ("obs_url", &self.obs_url), ("gitea_url", &self.gitea_url)]
        {
            check_url(key, url, &["http://", "https://"])?;
        }
        check_url("amqp_url", self.amqp_url.expose(), &["amqp://", "amqps://"])?;
        for (key, value) in [
            ("amqp_exchange", &self.amqp_exchange),
            ("amqp_topic_prefix", &self.amqp_topic_prefix),
            ("amqp_queue", &self.amqp_queue),
            ("review_group", &self.review_group),
            ("gitea_review_bot", &self.gitea_review_bot),
            ("gitea_review_team", &self.gitea_review_team),
        ] {
            if value.trim().is_empty() {
                return bad(key, "must not be empty");
            }
        }
        let repo_ok = self.gitea_repo.split_once('/').is_some_and(|(owner, name)| {
            !owner.is_empty()
                && !name.is_empty()
                && !name.contains('/')
                && !self.gitea_repo.contains(char::is_whitespace)
        });
        if !repo_ok {
            return bad("gitea_repo", "must be owner/name");
        }
        let store = self.store_url.expose().trim();
        if store == "openqa" {
            return bad(
                "store_url",
                "`openqa` (openQA's own database) is for the openQA plugin; name a postgresql:// URL",
            );
        }
        if !store.is_empty() && !store.starts_with("postgresql://") && !store.starts_with("postgres://") {
            return bad("store_url", "must be empty (SQLite in state_dir) or a postgresql:// URL");
        }
        if !store.is_empty() {
            if let Err(e) = store.parse::<postgres::Config>() {
                return bad("store_url", &format!("not a PostgreSQL URL: {e}"));
            }
        }
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir", "must not be empty");
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return bad("concurrency", "must be between 1 and 256");
        }
        if self.queue_capacity == 0 || self.queue_capacity > 10_000_000 {
            return bad("queue_capacity", "must be between 1 and 10000000");
        }
        // Durations are bounded well below what `as i64 * 1000` or a deadline (now + duration)
        // can hold, so no later conversion wraps or panics.
        if !(1..=DAY_S).contains(&self.obs_denied_retry_s) {
            return bad("obs_denied_retry_s", "must be between 1 and 86400 (one day)");
        }
        if !(1..=DAY_S).contains(&self.gitea_denied_retry_s) {
            return bad("gitea_denied_retry_s", "must be between 1 and 86400 (one day)");
        }
        if self.review_wait_max_s > 30 * DAY_S {
            return bad("review_wait_max_s", "must be at most 2592000 (30 days)");
        }
        if self.quiet_period_s > DAY_S {
            return bad("quiet_period_s", "must be at most 86400 (one day)");
        }
        if !(1..=DAY_S).contains(&self.reconcile_interval_s) {
            return bad("reconcile_interval_s", "must be between 1 and 86400 (one day)");
        }
        if self.retention_days > 3650 {
            return bad("retention_days", "must be at most 3650 (ten years)");
        }
        if self.catchup_max_requests == 1 || self.catchup_max_requests > 1000 {
            // two at least: one to look at jobs seen running before, one to look at new jobs
            return bad("catchup_max_requests", "must be 0 (off) or between 2 and 1000");
        }
        if !(1..=3600).contains(&self.http_timeout_s) {
            return bad("http_timeout_s", "must be between 1 and 3600 (one hour)");
        }
        if self.settle_ms > 3_600_000 {
            return bad("settle_ms", "must be at most 3600000 (one hour)");
        }
        if self.openqa_api_key.is_some() != self.openqa_api_secret.is_some() {
            return bad("openqa_api_secret", "openqa_api_key and openqa_api_secret go together");
        }
        Ok(())
    }

    /// The keys of one section of an INI file (openqa.ini, or our own) as strings, for
    /// `from_value`; other sections are ignored.
    pub fn ini_section(
        path: &std::path::Path,
        section: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
        let ini = ini::Ini::load_from_file(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        // A repeated section or key is a mistake whichever copy a reader would take: openQA's
        // Config::IniFiles and this parser do not take the same one.
        let mut sections = ini.section_all(Some(section));
        let props = sections
            .next()
            .ok_or_else(|| ConfigError(format!("{} has no [{section}] section", path.display())))?;
        if sections.next().is_some() {
            return Err(ConfigError(format!("{} has more than one [{section}] section", path.display())));
        }
        let mut map = serde_json::Map::new();
        for (k, v) in props.iter() {
            if map.insert(k.to_string(), serde_json::Value::String(v.to_string())).is_some() {
                return Err(ConfigError(format!(
                    "{}: key `{k}` appears twice in [{section}]",
                    path.display()
                )));
            }
        }
        Ok(map)
    }

    /// The configuration as JSON with every secret redacted, for status output.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn routing_key(&self, suffix: &str) -> String {
        format!("{}.openqa.{suffix}", self.amqp_topic_prefix)
    }
}

/// INI files and the Perl plugin hand every value over as a string: read "true", "30" and
/// "*Devel*, Maintenance: SLE 15 SP6 Test" (comma-separated) as the type the key has. A string that does not parse stays a string, so
/// serde's error names the key.
fn coerce_strings(map: &mut serde_json::Map<String, serde_json::Value>) -> Result<(), ConfigError> {
    use serde_json::Value;
    let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    for (key, value) in map.iter_mut() {
        let Value::String(text) = value else { continue };
        let text = text.trim();
        *value = match defaults.get(key) {
            Some(Value::Bool(_)) => match text {
                "1" | "true" | "yes" | "on" => Value::Bool(true),
                "0" | "false" | "no" | "off" => Value::Bool(false),
                _ => return Err(ConfigError(format!("config key `{key}`: expected true or false"))),
            },
            Some(Value::Number(_)) => match text.parse::<u64>() {
                Ok(n) => Value::from(n),
                Err(_) => return Err(ConfigError(format!("config key `{key}`: expected a whole number"))),
            },
            // commas only: job group names contain spaces
            Some(Value::Array(_)) => Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::from(s.to_string()))
                    .collect(),
            ),
            _ => continue,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_an_empty_object() {
        let c = Config::from_json("{}").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.review_policy, ReviewPolicy::AcceptOnpass);
        assert_eq!(c.ignore_groups, vec!["*Devel*", "*Test*"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::from_json(r#"{"opneqa_url":"http://x"}"#).unwrap_err();
        assert!(e.0.contains("opneqa_url"), "{e}");
        let e = Config::from_json(r#"{"settle_ms":"soon"}"#).unwrap_err();
        assert!(e.0.contains("`settle_ms`"), "{e}");
        let e = Config::from_json(r#"{"review_policy":"approve-all"}"#).unwrap_err();
        assert!(e.0.contains("`review_policy`"), "{e}");
        let e = Config::from_json(r#"{"concurrency":0}"#).unwrap_err();
        assert!(e.0.contains("`concurrency`"), "{e}");
        let e = Config::from_json(r#"{"openqa_url":"ftp://openqa"}"#).unwrap_err();
        assert!(e.0.contains("`openqa_url`"), "{e}");
        assert!(Config::from_json("[]").unwrap_err().0.contains("object"));
        for repo in ["SLFO", "products/", "/SLFO", "a/b/c", "products/SL FO"] {
            let e = Config::from_json(&format!(r#"{{"gitea_repo":"{repo}"}}"#)).unwrap_err();
            assert!(e.0.contains("`gitea_repo`"), "{repo}: {e}");
        }
        let e = Config::from_json(r#"{"gitea_url":"src.suse.de"}"#).unwrap_err();
        assert!(e.0.contains("`gitea_url`"), "{e}");
        assert!(Config::from_json("{").unwrap_err().0.contains("JSON"));
    }

    #[test]
    fn durations_beyond_their_maximum_name_the_key_and_the_bound() {
        // each would wrap (`as i64 * 1000`) or overflow a deadline later on
        for (key, max, why) in [
            ("obs_denied_retry_s", 86_400, "between 1 and 86400 (one day)"),
            ("gitea_denied_retry_s", 86_400, "between 1 and 86400 (one day)"),
            ("review_wait_max_s", 2_592_000, "at most 2592000 (30 days)"),
            ("quiet_period_s", 86_400, "at most 86400 (one day)"),
            ("reconcile_interval_s", 86_400, "between 1 and 86400 (one day)"),
            ("http_timeout_s", 3_600, "between 1 and 3600 (one hour)"),
            ("retention_days", 3_650, "at most 3650 (ten years)"),
        ] {
            let c = Config::from_json(&format!(r#"{{"{key}":{max}}}"#));
            assert!(c.is_ok(), "{key} = {max}: {c:?}");
            for too_much in [max + 1, i64::MAX as u64 / 1000 + 1, u64::MAX] {
                let e = Config::from_json(&format!(r#"{{"{key}":{too_much}}}"#)).unwrap_err();
                assert_eq!(e.0, format!("config key `{key}`: must be {why}"), "{key} = {too_much}");
            }
        }
    }

    #[test]
    fn secrets_never_show() {
        let c = Config::from_json(
            r#"{"openqa_api_key":"KEY","openqa_api_secret":"S3CRET-QA","obs_password":"S3CRET-OBS",
                "amqp_url":"amqp://user:S3CRET-MQ@rabbit:5672/","gitea_token":"S3CRET-GITEA"}"#,
        )
        .unwrap();
        let shown = format!("{c:?} {}", c.redacted_json());
        for s in ["S3CRET-QA", "S3CRET-OBS", "S3CRET-MQ", "S3CRET-GITEA"] {
            assert!(!shown.contains(s), "{s} leaked: {shown}");
        }
        assert!(shown.contains("amqp://user:<redacted>@rabbit:5672/"));
        assert_eq!(c.amqp_url.expose(), "amqp://user:S3CRET-MQ@rabbit:5672/");
        // a wrong type for a secret key does not echo the value
        let e = Config::from_json(r#"{"obs_password":["S3CRET-OBS"]}"#).unwrap_err();
        assert!(!e.0.contains("S3CRET") && e.0.contains("obs_password"), "{e}");
        let e = Config::from_json(r#"{"gitea_token":["S3CRET-GITEA"]}"#).unwrap_err();
        assert!(!e.0.contains("S3CRET") && e.0.contains("gitea_token"), "{e}");
    }

    #[test]
    fn the_store_password_never_shows() {
        let url = "postgresql://ig:S3CRET-PG@db.example:5432/openqa?sslmode=require";
        let c = Config::from_json(&format!(r#"{{"store_url":"{url}"}}"#)).unwrap();
        let shown = format!("{c:?} {} {}", c.redacted_json(), c.store_url);
        assert!(!shown.contains("S3CRET-PG"), "{shown}");
        assert!(shown.contains("postgresql://ig:***@db.example:5432/openqa?sslmode=require"), "{shown}");
        assert_eq!(c.store_url.expose(), url);
        for bad in [
            "postgresql://ig:S3CRET-PG@db:notaport/openqa",
            "mysql://ig:S3CRET-PG@db/openqa",
            "postgresql://ig:S3CRET-PG@db/openqa?sslmode=sometimes",
        ] {
            let e = Config::from_json(&format!(r#"{{"store_url":"{bad}"}}"#)).unwrap_err();
            assert!(!e.0.contains("S3CRET") && e.0.contains("store_url"), "{e}");
        }
        // what the plugin makes of openQA's own `DBI:Pg:dbname=openqa`: the local socket
        let c =
            Config::from_json(r#"{"store_url":"postgresql://%2Fvar%2Frun%2Fpostgresql/openqa"}"#).unwrap();
        let parsed: postgres::Config = c.store_url.expose().parse().unwrap();
        assert!(
            matches!(parsed.get_hosts(), [postgres::config::Host::Unix(p)] if p.ends_with("postgresql")),
            "{:?}",
            parsed.get_hosts()
        );
        let e = Config::from_json(r#"{"store_url":"openqa"}"#).unwrap_err();
        assert!(e.0.contains("openQA plugin"), "{e}");
        // nobody listens on port 1: the error names the store without its password
        let e = crate::store::Store::open_url(
            "postgresql://ig:S3CRET-PG@127.0.0.1:1/openqa?connect_timeout=5",
            std::path::Path::new("/nonexistent"),
        )
        .err()
        .expect("nothing listens there");
        assert!(!e.0.contains("S3CRET") && e.0.contains("postgresql://ig:***@127.0.0.1:1/openqa"), "{e}");
    }

    #[test]
    fn ini_strings_take_the_type_of_their_key() {
        let c = Config::from_json(
            r#"{"settle_ms":"250","publish_amqp":"false","ignore_groups":"*Devel*, *Staging*","review_group":"qam-openqa"}"#,
        )
        .unwrap();
        assert_eq!((c.settle_ms, c.publish_amqp), (250, false));
        assert_eq!(c.ignore_groups, vec!["*Devel*", "*Staging*"]);
        let c = Config::from_json(r#"{"ignore_groups":"Maintenance: SLE 15 SP6 Devel, Kernel *"}"#).unwrap();
        assert_eq!(c.ignore_groups, vec!["Maintenance: SLE 15 SP6 Devel", "Kernel *"]);
        let e = Config::from_json(r#"{"concurrency":"many"}"#).unwrap_err();
        assert!(e.0.contains("`concurrency`"), "{e}");
        let e = Config::from_json(r#"{"report_obs":"maybe"}"#).unwrap_err();
        assert!(e.0.contains("`report_obs`"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openqa.ini");
        std::fs::write(&path, "[global]\nplugins = IncidentGate AMQP\n\n[incident_gate]\nopenqa_url = http://openqa.local\nreview_policy = comment\nreconcile_interval_s = 60\n").unwrap();
        let c = Config::from_value(Config::ini_section(&path, "incident_gate").unwrap().into()).unwrap();
        assert_eq!(c.openqa_url, "http://openqa.local");
        assert_eq!(c.review_policy, ReviewPolicy::Comment);
        assert_eq!(c.reconcile_interval_s, 60);
        assert!(Config::ini_section(&path, "nope").unwrap_err().0.contains("[nope]"));
    }

    #[test]
    fn urls_are_checked_like_the_clients_parse_them() {
        for (key, url) in [
            ("openqa_url", "http://1.2.3.999/"),
            ("openqa_url", "http://exa mple.com"),
            ("openqa_url", "http://[::1"),
            ("obs_url", "http://host:99999/"),
            ("obs_url", "https://"),
            ("amqp_url", "amqp://u:S3CRET@h:notaport/"),
            ("amqp_url", "amqp://u:S3CRET@1.2.3.999/"),
            ("amqp_url", "amqp://u:S3CRET@h:70000/"),
            ("amqp_url", "http://h/"),
        ] {
            let e = Config::from_value(serde_json::json!({ key: url })).unwrap_err();
            assert!(e.0.contains(&format!("`{key}`")), "{url}: {e}");
            assert!(!e.0.contains("S3CRET"), "{e}");
        }
        for (key, url) in [
            ("openqa_url", "http://[::1]:9526/prefix"),
            ("openqa_url", "http://u:p@openqa.local"),
            ("amqp_url", "amqps://u:p@rabbit.example.com:5671/%2f"),
            ("amqp_url", "amqp://localhost"),
        ] {
            Config::from_value(serde_json::json!({ key: url })).unwrap();
        }
    }

    #[test]
    fn repeated_sections_and_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openqa.ini");
        std::fs::write(
            &path,
            "[incident_gate]\nsettle_ms = 1\n[global]\nx = 1\n[incident_gate]\nsettle_ms = 2\n",
        )
        .unwrap();
        let e = Config::ini_section(&path, "incident_gate").unwrap_err();
        assert!(e.0.contains("more than one [incident_gate]"), "{e}");
        std::fs::write(&path, "[incident_gate]\nsettle_ms = 1\nreview_group = a\nsettle_ms = 2\n").unwrap();
        let e = Config::ini_section(&path, "incident_gate").unwrap_err();
        assert!(e.0.contains("key `settle_ms` appears twice"), "{e}");
    }

    #[test]
    fn urls_show_without_passwords_and_links_without_credentials() {
        let c = Config::from_json(
            r#"{"openqa_url":"http://bot:S3CRET-QA@openqa.local/","obs_url":"https://u:S3CRET-OBS@api.local"}"#,
        )
        .unwrap();
        let shown = c.redacted_json().to_string();
        assert!(!shown.contains("S3CRET"), "{shown}");
        assert!(shown.contains("http://bot:<redacted>@openqa.local/"), "{shown}");
        assert_eq!(link_base(&c.openqa_url), "http://openqa.local");
        assert_eq!(link_base("http://bot@openqa.local/x/"), "http://openqa.local/x");
    }

    #[test]
    fn policies_are_named_as_configured() {
        for name in ["accept-onpass", "accept-decline", "comment", "dry-run"] {
            let c = Config::from_value(serde_json::json!({ "review_policy": name })).unwrap();
            assert_eq!(c.review_policy.as_str(), name);
        }
    }

    #[test]
    fn redact_url_forms() {
        assert_eq!(redact_url("amqp://localhost"), "amqp://localhost");
        assert_eq!(redact_url("amqp://u@h/"), "amqp://u@h/");
        assert_eq!(redact_url("amqps://u:p@h:1/v"), "amqps://u:<redacted>@h:1/v");
    }
}
