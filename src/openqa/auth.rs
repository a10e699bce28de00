//! openQA's API authentication (HMAC-SHA1 over the URL), for the client and the simulator.
//!
//! The server never hashes the bytes a client sent: it hashes the path plus the query as Mojolicious
//! re-serialises it after parsing (application/x-www-form-urlencoded, upper-case hex, space as `+`),
//! followed by the `X-API-Microtime` header. A client therefore builds its query with
//! [`encode_query`], sends exactly that string and signs the same string; the simulator checks with
//! [`canonical_query`] what the real server would check. See tests/fixtures/openqa/auth-examples.md.

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const HEADER_KEY: &str = "X-API-Key";
pub const HEADER_MICROTIME: &str = "X-API-Microtime";
pub const HEADER_HASH: &str = "X-API-Hash";

/// openQA's default `api_hmac_time_tolerance`.
pub const TIME_TOLERANCE_S: f64 = 300.0;

/// Percent-encodes one name or value the way Mojo::Parameters does: only `A-Za-z0-9*-._` stay,
/// a space becomes `+`, every other byte of the UTF-8 form becomes `%XX` with upper-case hex.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0x0f)] as char);
            }
        }
    }
    out
}

/// Reverses [`form_encode`] leniently, like a server: `+` is a space, a `%` not followed by two hex
/// digits stays as it is, and bytes that are not UTF-8 are replaced.
pub fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (bytes.get(i + 1).and_then(|&b| hex_val(b)), bytes.get(i + 2).and_then(|&b| hex_val(b)))
                {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `name=value&...` in the canonical form; what a client sends and signs.
pub fn encode_query<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&form_encode(k.as_ref()));
        out.push('=');
        out.push_str(&form_encode(v.as_ref()));
    }
    out
}

/// Splits a raw query (or form body) into decoded pairs, in order; a name without `=` gets an
/// empty value and empty pieces (`a&&b`) are skipped, as Mojo::Parameters does.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.split_once('=') {
            Some((k, v)) => (form_decode(k), form_decode(v)),
            None => (form_decode(piece), String::new()),
        })
        .collect()
}

/// The query string the server signs for a request sent with `raw` as its query: parsed and
/// re-encoded, so `:` becomes `%3A`, `%3a` becomes `%3A`, `%20` becomes `+` and `?foo` becomes `foo=`.
pub fn canonical_query(raw: &str) -> String {
    encode_query(&parse_query(raw))
}

/// The signed message: path, `?query` when the query is not empty, and the timestamp string as it
/// goes into `X-API-Microtime`, without separators.
pub fn signed_message(path: &str, canonical_query: &str, microtime: &str) -> String {
    if canonical_query.is_empty() {
        format!("{path}{microtime}")
    } else {
        format!("{path}?{canonical_query}{microtime}")
    }
}

/// Lower-case hex HMAC-SHA1 of `message`, keyed with the API secret (openQA compares lower case only).
pub fn hmac_hex(secret: &str, message: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty key is still a valid key.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The three headers for a request to `path` with the (already canonical) `query`, at `unix_seconds`.
/// The Perl client sends integer seconds despite the header's name; so do we.
pub fn auth_headers(
    key: &str,
    secret: &str,
    path: &str,
    canonical_query: &str,
    unix_seconds: u64,
) -> [(&'static str, String); 3] {
    let microtime = unix_seconds.to_string();
    let hash = hmac_hex(secret, &signed_message(path, canonical_query, &microtime));
    [(HEADER_KEY, key.to_string()), (HEADER_MICROTIME, microtime), (HEADER_HASH, hash)]
}

/// Why openQA refused a request's credentials, in the order openQA checks them.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthFailure {
    NoApiKey,
    /// The key is not known to the server.
    NotAuthorized,
    /// `X-API-Microtime` is missing or off by more than the tolerance.
    TimestampMismatch {
        server_time: i64,
        client_time: String,
    },
    /// The hash does not match (wrong secret, wrong message or upper-case hex).
    WrongSecret,
}

impl AuthFailure {
    /// openQA's `error` text for a 403 answer; `peer_ip` is the client address the server reports.
    pub fn message(&self, peer_ip: &str) -> String {
        match self {
            AuthFailure::NoApiKey => "no api key".into(),
            AuthFailure::NotAuthorized => "Not authorized".into(),
            AuthFailure::TimestampMismatch { server_time, client_time } => format!(
                "timestamp mismatch - check whether clocks on the local host and the web UI host are in sync \
                 (local host IP: {peer_ip}, server time: {server_time}, client time: {client_time}, tolerance: {}s)",
                TIME_TOLERANCE_S as i64
            ),
            AuthFailure::WrongSecret => "unknown error (wrong secret?)".into(),
        }
    }
}

/// The credentials a request carried, as header strings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PresentedAuth<'a> {
    pub key: Option<&'a str>,
    pub microtime: Option<&'a str>,
    pub hash: Option<&'a str>,
}

/// Server side: checks a request to `path` with the raw query `raw_query` the way openQA does.
/// `lookup` maps a known API key to its secret; `now` is the server's unix time.
pub fn verify(
    lookup: impl Fn(&str) -> Option<String>,
    path: &str,
    raw_query: &str,
    presented: PresentedAuth<'_>,
    now: f64,
) -> Result<(), AuthFailure> {
    let key = match presented.key {
        Some(k) if !k.is_empty() => k,
        _ => return Err(AuthFailure::NoApiKey),
    };
    let secret = lookup(key).ok_or(AuthFailure::NotAuthorized)?;
    let microtime = presented.microtime.unwrap_or("");
    // Perl numifies a missing or non-numeric timestamp to 0, which is always out of tolerance.
    let client: f64 = microtime.trim().parse().unwrap_or(0.0);
    if (now - client).abs() > TIME_TOLERANCE_S {
        return Err(AuthFailure::TimestampMismatch {
            server_time: now as i64,
            client_time: microtime.to_string(),
        });
    }
    let expected = hmac_hex(&secret, &signed_message(path, &canonical_query(raw_query), microtime));
    // A plain comparison is enough for a simulator; openQA uses secure_compare on the hex strings.
    if presented.hash == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(AuthFailure::WrongSecret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0A0A0A0A0A0A0A0A";
    const SECRET: &str = "0B0B0B0B0B0B0B0B";
    const EXAMPLES: &str = include_str!("../../tests/fixtures/openqa/auth-examples.md");

    #[test]
    fn known_answer_vectors() {
        for (message, hash) in [
            ("/api/v1/auth1795541675", "5b94034cbf218ee9d977b90701629d1608674b33"),
            (
                "/api/v1/jobs/3/comments?text=auth+test+query1795541679",
                "20407fd18f04fe6714bffffdf85e1d47c44523b2",
            ),
            ("/api/v1/auth?key=TEST_ISSUES%5B%5D1795541688", "d74f4d7bba3db8411b57a3d300a679c280c7ce1c"),
        ] {
            assert_eq!(hmac_hex(SECRET, message), hash, "{message}");
        }
    }

    #[test]
    fn form_encoding_matches_mojo() {
        assert_eq!(form_encode(":12345:openssl"), "%3A12345%3Aopenssl");
        assert_eq!(form_encode("1,2,3"), "1%2C2%2C3");
        assert_eq!(form_encode("TEST_ISSUES[]"), "TEST_ISSUES%5B%5D");
        assert_eq!(form_encode("a b"), "a+b");
        assert_eq!(form_encode("*_TEST_ISSUES"), "*_TEST_ISSUES");
        assert_eq!(form_encode("x/y@z~w"), "x%2Fy%40z%7Ew");
        assert_eq!(form_encode("INCIDENT_ID=12345"), "INCIDENT_ID%3D12345");
        assert_eq!(form_encode("ä"), "%C3%A4");
        assert_eq!(canonical_query("build=%3a1"), "build=%3A1");
        assert_eq!(canonical_query("foo"), "foo=");
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("x=a%20b"), "x=a+b");
        assert_eq!(canonical_query("ids=2&ids=12"), "ids=2&ids=12");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(
            parse_query("a=1&&b&c=x=y"),
            vec![("a".into(), "1".into()), ("b".into(), "".into()), ("c".into(), "x=y".into())]
        );
        assert_eq!(
            encode_query(&[("key", "RRID"), ("value", "SUSE:Maintenance:1:2")]),
            "key=RRID&value=SUSE%3AMaintenance%3A1%3A2"
        );
    }

    /// One `### NN-name` case of auth-examples.md.
    #[derive(Debug)]
    struct Case {
        name: String,
        method: String,
        target: String,
        key: Option<String>,
        microtime: Option<String>,
        hash: Option<String>,
        signed: Option<String>,
        status: u16,
        server_time: Option<i64>,
        error: Option<String>,
    }

    fn backticked(line: &str) -> Option<String> {
        let start = line.find('`')? + 1;
        let end = start + line[start..].find('`')?;
        Some(line[start..end].to_string())
    }

    /// `Tue, 24 Nov 2026 17:34:35 GMT` as unix seconds (the server's clock for the case).
    fn http_date(s: &str) -> Option<i64> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let month_name = *parts.get(2)?;
        let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            .iter()
            .position(|m| *m == month_name)?
            + 1;
        let rfc = format!("{}-{month:02}-{:0>2}T{}Z", parts.get(3)?, parts.get(1)?, parts.get(4)?);
        let t = humantime::parse_rfc3339(&rfc).ok()?;
        Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
    }

    fn cases() -> Vec<Case> {
        let mut out = Vec::new();
        for section in EXAMPLES.split("\n### ").skip(1) {
            let name = section.lines().next().unwrap_or("").trim().to_string();
            let mut case = Case {
                name,
                method: String::new(),
                target: String::new(),
                key: None,
                microtime: None,
                hash: None,
                signed: None,
                status: 0,
                server_time: None,
                error: None,
            };
            let (request, response) = section.split_once("Response:").expect("case has a response");
            for line in request.lines() {
                // the headers as sent, not the backticked summary lines after the request block
                if line.contains('`') && !line.starts_with("Signed message:") {
                    continue;
                }
                if let Some(rest) = line.strip_suffix(" HTTP/1.1") {
                    let (m, t) = rest.split_once(' ').expect("request line");
                    case.method = m.into();
                    case.target = t.into();
                } else if let Some(v) = line.strip_prefix("X-API-Key: ") {
                    case.key = Some(v.into());
                } else if let Some(v) = line.strip_prefix("X-API-Microtime: ") {
                    case.microtime = Some(v.into());
                } else if let Some(v) = line.strip_prefix("X-API-Hash: ") {
                    case.hash = Some(v.into());
                } else if line.starts_with("Signed message:") {
                    case.signed = backticked(line);
                }
            }
            for line in response.lines() {
                if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
                    case.status = rest[..3].parse().expect("status");
                } else if let Some(d) = line.strip_prefix("Date: ") {
                    case.server_time = http_date(d);
                } else if line.starts_with("{\"error\"") {
                    let v: serde_json::Value = serde_json::from_str(line).expect("error JSON");
                    case.error = v["error"].as_str().map(str::to_string);
                }
            }
            out.push(case);
        }
        out
    }

    /// Every hash in auth-examples.md is reproduced exactly, except the deliberately bogus ones
    /// (40 zeros, upper case, and case 14 whose wrong secret is not documented).
    #[test]
    fn every_documented_hash_is_reproduced() {
        let cases = cases();
        assert!(cases.len() >= 35, "parsed only {} cases", cases.len());
        let mut checked = 0;
        for c in &cases {
            let (Some(signed), Some(hash)) = (&c.signed, &c.hash) else {
                continue;
            };
            if hash.chars().all(|ch| ch == '0') {
                continue;
            }
            if c.name.contains("uppercase-hex") {
                assert_eq!(hmac_hex(SECRET, signed).to_uppercase(), *hash, "{}", c.name);
                assert_ne!(hmac_hex(SECRET, signed), *hash, "{}", c.name);
            } else if c.name.contains("wrong-secret") && c.name.starts_with("03") {
                assert_eq!(hmac_hex("WRONGSECRET", signed), *hash, "{}", c.name);
            } else if c.name.contains("wrong-secret") {
                assert_ne!(hmac_hex(SECRET, signed), *hash, "{}", c.name);
            } else {
                assert_eq!(hmac_hex(SECRET, signed), *hash, "{}", c.name);
            }
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} hashes checked");
    }

    /// Our server-side check accepts and refuses exactly what the real server did, with its message;
    /// and for every accepted case the documented signed message is what we would sign.
    #[test]
    fn verify_agrees_with_the_real_server_on_every_case() {
        for c in cases() {
            let (path, raw_query) = c.target.split_once('?').unwrap_or((&c.target, ""));
            let now = c.server_time.expect("date") as f64;
            let presented = PresentedAuth {
                key: c.key.as_deref(),
                microtime: c.microtime.as_deref(),
                hash: c.hash.as_deref(),
            };
            let got = verify(|k| (k == KEY).then(|| SECRET.to_string()), path, raw_query, presented, now);
            let public_read = c.method == "GET" && !path.ends_with("/auth");
            match (c.status, &got) {
                (200, Ok(())) => {
                    let ours = signed_message(
                        path,
                        &canonical_query(raw_query),
                        c.microtime.as_deref().unwrap_or(""),
                    );
                    assert_eq!(Some(&ours), c.signed.as_ref(), "{}", c.name);
                }
                // bad credentials on a public read route are ignored by the server
                (200, Err(_)) if public_read => {}
                (403, Err(failure)) => {
                    assert_eq!(Some(failure.message("127.0.0.1")), c.error, "{}", c.name);
                }
                _ => panic!("{}: server said {}, we said {got:?}", c.name, c.status),
            }
        }
    }

    #[test]
    fn headers_for_a_client_request() {
        let q = encode_query(&[("key", "TEST_ISSUES[]")]);
        let h = auth_headers(KEY, SECRET, "/api/v1/auth", &q, 1795541688);
        assert_eq!(h[0], (HEADER_KEY, KEY.to_string()));
        assert_eq!(h[1], (HEADER_MICROTIME, "1795541688".to_string()));
        assert_eq!(h[2], (HEADER_HASH, "d74f4d7bba3db8411b57a3d300a679c280c7ce1c".to_string()));
        let ok = PresentedAuth { key: Some(KEY), microtime: Some(&h[1].1), hash: Some(&h[2].1) };
        assert_eq!(verify(|_| Some(SECRET.into()), "/api/v1/auth", &q, ok, 1795541688.0), Ok(()));
        // a raw `[]` in the sent query is re-encoded by the server before it checks
        assert_eq!(
            verify(|_| Some(SECRET.into()), "/api/v1/auth", "key=TEST_ISSUES[]", ok, 1795541688.0),
            Ok(())
        );
        assert_eq!(
            verify(|_| Some(SECRET.into()), "/api/v1/auth", &q, ok, 1795541688.0 + 301.0),
            Err(AuthFailure::TimestampMismatch { server_time: 1795541989, client_time: "1795541688".into() })
        );
    }
}
