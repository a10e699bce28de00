//! Credentials from osc's configuration, for hosts where the operator already uses osc: only
//! consulted for what our own configuration leaves out.
//!
//! osc reads `$OSC_CONFIG`, else `$XDG_CONFIG_HOME/osc/oscrc` (default `~/.config/osc/oscrc`), else
//! the legacy `~/.oscrc`. The file is Python `configparser` INI with one section per API URL. We
//! parse it ourselves rather than with rust-ini because configparser takes values literally
//! (backslashes, quotes, `;` and `#` inside a password stay), which rust-ini's defaults do not.

use crate::config::Secret;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Default, PartialEq, Eq)]
pub struct OscCredentials {
    pub user: Option<String>,
    pub pass: Option<Secret>,
    /// Resolved like osc does: `~` expanded, a bare name taken from `~/.ssh/`.
    pub sshkey: Option<PathBuf>,
    /// The file they came from, for messages.
    pub source: PathBuf,
}

impl fmt::Debug for OscCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OscCredentials")
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "<redacted>"))
            .field("sshkey", &self.sshkey)
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OscrcError(pub String);

impl fmt::Display for OscrcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OscrcError {}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// The oscrc osc itself would read, if any exists.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OSC_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")));
    let candidates = [xdg.map(|x| x.join("osc/oscrc")), home().map(|h| h.join(".oscrc"))];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// Credentials for `api_url` from the oscrc osc would read; `Ok(None)` without a file or section.
pub fn lookup(api_url: &str) -> Result<Option<OscCredentials>, OscrcError> {
    match config_path() {
        Some(path) => read(&path, api_url),
        None => Ok(None),
    }
}

pub fn read(path: &Path, api_url: &str) -> Result<Option<OscCredentials>, OscrcError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // OSC_CONFIG may name a file that does not exist yet; osc would create it
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OscrcError(format!("cannot read {}: {}", path.display(), e.kind()))),
    };
    let mut creds = credentials(&text, api_url, home().as_deref());
    if let Some(c) = creds.as_mut() {
        c.source = path.to_path_buf();
    }
    Ok(creds)
}

/// Normalised form of an API URL for comparison: no trailing slash, lower-case scheme and host,
/// `https://` when the section name has no scheme (osc's default).
pub fn normalize_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("https".to_string(), url),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    format!("{scheme}://{}{path}", host.to_ascii_lowercase())
}

/// The credentials in oscrc `text` for `api_url`.
pub fn credentials(text: &str, api_url: &str, home: Option<&Path>) -> Option<OscCredentials> {
    let want = normalize_url(api_url);
    let sections = parse_ini(text);
    let (_, keys) = sections.iter().find(|(name, _)| normalize_url(name) == want)?;
    let get = |k: &str| {
        keys.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty())
    };
    if get("pass").is_none() && get("passx").is_some() {
        // passx is bz2-obfuscated; decoding it would need a compression crate for a legacy form
        tracing::warn!("oscrc section {api_url}: `passx` is not supported, store `pass` or an sshkey");
    }
    Some(OscCredentials {
        user: get("user"),
        pass: get("pass").map(Secret::new),
        sshkey: get("sshkey").map(|k| resolve_sshkey(&k, home)),
        source: PathBuf::new(),
    })
}

fn resolve_sshkey(value: &str, home: Option<&Path>) -> PathBuf {
    let home = home.map(Path::to_path_buf).unwrap_or_default();
    if let Some(rest) = value.strip_prefix("~/") {
        return home.join(rest);
    }
    let p = PathBuf::from(value);
    if p.is_absolute() || value.contains('/') {
        p
    } else {
        home.join(".ssh").join(value)
    }
}

/// configparser's rules: `[section]`, `key = value` or `key: value` split at the first delimiter,
/// keys case-insensitive, full-line `#`/`;` comments, indented lines continue the previous value.
pub fn parse_ini(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let indented = line.starts_with(' ') || line.starts_with('\t');
        if indented {
            if let Some((_, value)) = sections.last_mut().and_then(|(_, keys)| keys.last_mut()) {
                value.push('\n');
                value.push_str(trimmed);
                continue;
            }
        }
        if trimmed.starts_with('[') {
            if let Some(end) = trimmed.rfind(']') {
                sections.push((trimmed[1..end].trim().to_string(), Vec::new()));
                continue;
            }
        }
        let Some(at) = trimmed.find(['=', ':']) else {
            continue;
        };
        let key = trimmed[..at].trim().to_ascii_lowercase();
        let value = trimmed[at + 1..].trim().to_string();
        if let Some((_, keys)) = sections.last_mut() {
            keys.push((key, value));
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    const OSCRC: &str = "[general]\napiurl = https://api.suse.de\n\n\
        [https://api.opensuse.org/]\nuser = alice\npass = a;b#c\\d=e:f\n\n\
        # IBS\n[https://api.suse.de]\nuser=bot\nsshkey = id_ed25519\ncredentials_mgr_class=osc.credentials.PlaintextConfigFileCredentialsManager\n\n\
        [obs.example.com]\nUser: carol\nsshkey = ~/keys/obs\n";

    #[test]
    fn sections_match_with_or_without_slash() {
        let home = Path::new("/home/me");
        let c = credentials(OSCRC, "https://api.opensuse.org", Some(home)).unwrap();
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.pass.as_ref().map(|p| p.expose()), Some("a;b#c\\d=e:f"));
        assert_eq!(c.sshkey, None);
        let c = credentials(OSCRC, "https://API.suse.de/", Some(home)).unwrap();
        assert_eq!(c.user.as_deref(), Some("bot"));
        assert!(c.pass.is_none());
        assert_eq!(c.sshkey.as_deref(), Some(Path::new("/home/me/.ssh/id_ed25519")));
        let c = credentials(OSCRC, "https://obs.example.com/", Some(home)).unwrap();
        assert_eq!(c.user.as_deref(), Some("carol"));
        assert_eq!(c.sshkey.as_deref(), Some(Path::new("/home/me/keys/obs")));
        assert!(credentials(OSCRC, "https://other.example.com", Some(home)).is_none());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = credentials(OSCRC, "https://api.opensuse.org", None).unwrap();
        assert!(!format!("{c:?}").contains("a;b"));
    }

    #[test]
    fn read_from_file_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oscrc");
        std::fs::write(&path, OSCRC).unwrap();
        let c = read(&path, "https://api.suse.de").unwrap().unwrap();
        assert_eq!(c.source, path);
        assert_eq!(read(&dir.path().join("nope"), "https://api.suse.de"), Ok(None));
    }
}
