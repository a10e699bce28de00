//! SSH signatures for IBS's `Signature` HTTP authentication.
//!
//! IBS answers 401 with `WWW-Authenticate: Signature realm="..."`; osc then signs the string
//! `(created): <unix-ts>` exactly like `ssh-keygen -Y sign -n <realm>` would (the SSHSIG format of
//! OpenSSH's PROTOCOL.sshsig, SHA-512 message hash) and sends the *raw* signature blob, base64
//! encoded, in an `Authorization: Signature ...` header. This module does the same in-process, and
//! verifies such headers for the simulator.
//!
//! Key material never leaves this module: errors name the key file and what went wrong with it,
//! and `Debug` shows the user, the algorithm and the public fingerprint only.

use base64::Engine;
use rsa::signature::{SignatureEncoding, Signer};
use ssh_encoding::{Decode, Encode};
use ssh_key::private::RsaKeypair;
use ssh_key::{Algorithm, HashAlg, LineEnding, Mpint, PrivateKey, PublicKey, Signature, SshSig};
use std::fmt;
use std::path::Path;

/// The only header IBS asks to be signed, and the only one we sign.
pub const SIGNED_HEADERS: &str = "(created)";

/// The string that is signed: what osc feeds to `ssh-keygen -Y sign` on stdin (no newline).
pub fn signing_string(created: u64) -> String {
    format!("(created): {created}")
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSigError {
    /// The key file could not be read (missing, permissions).
    ReadKey {
        path: String,
        reason: String,
    },
    /// The key is protected by a passphrase, which we cannot ask for.
    Encrypted {
        path: String,
    },
    /// The file is not an OpenSSH private key we understand.
    InvalidKey {
        path: String,
        reason: String,
    },
    /// A key type other than ed25519 or RSA.
    UnsupportedKey {
        algorithm: String,
    },
    Sign(String),
    /// A signature or `Authorization` header that does not verify or does not parse.
    Verify(String),
}

impl fmt::Display for SshSigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshSigError::ReadKey { path, reason } => {
                write!(f, "cannot read SSH key {path}: {reason}")
            }
            SshSigError::Encrypted { path } => write!(
                f,
                "SSH key {path} is protected by a passphrase; passphrases are not supported, \
                 use a key without one that only the service user can read"
            ),
            SshSigError::InvalidKey { path, reason } => {
                write!(f, "SSH key {path} is not a usable OpenSSH private key: {reason}")
            }
            SshSigError::UnsupportedKey { algorithm } => {
                write!(f, "SSH key type {algorithm} is not supported (use ed25519 or RSA)")
            }
            SshSigError::Sign(why) => write!(f, "SSH signing failed: {why}"),
            SshSigError::Verify(why) => write!(f, "SSH signature rejected: {why}"),
        }
    }
}

impl std::error::Error for SshSigError {}

/// A private key and the login it signs for.
pub struct SshSigner {
    user: String,
    key: PrivateKey,
}

impl fmt::Debug for SshSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSigner")
            .field("user", &self.user)
            .field("algorithm", &self.key.algorithm().as_str())
            .field("fingerprint", &self.key.fingerprint(HashAlg::Sha256).to_string())
            .finish()
    }
}

impl SshSigner {
    pub fn from_file(user: impl Into<String>, path: &Path) -> Result<SshSigner, SshSigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| SshSigError::ReadKey { path: shown.clone(), reason: e.kind().to_string() })?;
        Self::from_openssh(user, &text, &shown)
    }

    /// `source` names the key in errors (a path, or "inline key").
    pub fn from_openssh(user: impl Into<String>, pem: &str, source: &str) -> Result<SshSigner, SshSigError> {
        let key = PrivateKey::from_openssh(pem).map_err(|e| SshSigError::InvalidKey {
            path: source.to_string(),
            // ssh_key's messages name the failing step ("format encoding error"), never key bytes
            reason: e.to_string(),
        })?;
        if key.is_encrypted() {
            return Err(SshSigError::Encrypted { path: source.to_string() });
        }
        if let Some(pair) = key.key_data().rsa() {
            // an inconsistent RSA key shows now, at startup, not at IBS's first challenge
            rsa_private_key(pair)
                .map_err(|reason| SshSigError::InvalidKey { path: source.to_string(), reason })?;
        }
        match key.algorithm() {
            Algorithm::Ed25519 | Algorithm::Rsa { .. } => {}
            other => return Err(SshSigError::UnsupportedKey { algorithm: other.as_str().to_string() }),
        }
        Ok(SshSigner { user: user.into(), key })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The raw SSHSIG blob over `message` (what `ssh-keygen -Y sign` armors). RSA keys sign with
    /// rsa-sha2-512: OpenSSH refuses SHA-1 `ssh-rsa` signatures.
    pub fn sign_blob(&self, namespace: &str, message: &[u8]) -> Result<Vec<u8>, SshSigError> {
        let sig = match self.key.key_data().rsa() {
            Some(pair) => sign_rsa(pair, self.key.public_key(), namespace, message)?,
            None => self
                .key
                .sign(namespace, HashAlg::Sha512, message)
                .map_err(|e| SshSigError::Sign(e.to_string()))?,
        };
        let mut blob = Vec::new();
        sig.encode(&mut blob).map_err(|e| SshSigError::Sign(e.to_string()))?;
        Ok(blob)
    }

    /// The value of the `Authorization` header answering a `Signature realm="<realm>"` challenge.
    pub fn authorization(&self, realm: &str, created: u64) -> Result<String, SshSigError> {
        let blob = self.sign_blob(realm, signing_string(created).as_bytes())?;
        let signature = base64::engine::general_purpose::STANDARD.encode(blob);
        Ok(format!(
            "Signature keyId=\"{}\",algorithm=\"ssh\",headers=\"{SIGNED_HEADERS}\",created={created},signature=\"{signature}\"",
            self.user
        ))
    }
}

/// SSHSIG with an RSA key, rsa-sha2-512, done with the rsa crate: ssh-key 0.6.7's own conversion
/// of the key passes the prime p twice, which the rsa crate rightly rejects.
fn rsa_private_key(pair: &RsaKeypair) -> Result<rsa::RsaPrivateKey, String> {
    let int = |m: &Mpint| {
        m.as_positive_bytes()
            .map(rsa::BigUint::from_bytes_be)
            .ok_or_else(|| "a key component is not a positive integer".to_string())
    };
    rsa::RsaPrivateKey::from_components(
        int(&pair.public.n)?,
        int(&pair.public.e)?,
        int(&pair.private.d)?,
        vec![int(&pair.private.p)?, int(&pair.private.q)?],
    )
    // the rsa crate's messages describe the check that failed, not the numbers
    .map_err(|e| e.to_string())
}

fn sign_rsa(
    pair: &RsaKeypair,
    public: &PublicKey,
    namespace: &str,
    message: &[u8],
) -> Result<SshSig, SshSigError> {
    let sign_err = |what: &str| SshSigError::Sign(format!("RSA key: {what}"));
    let key = rsa_private_key(pair).map_err(|e| sign_err(&e))?;
    let signed = SshSig::signed_data(namespace, HashAlg::Sha512, message)
        .map_err(|e| SshSigError::Sign(e.to_string()))?;
    let raw = rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(key)
        .try_sign(&signed)
        .map_err(|e| sign_err(&e.to_string()))?
        .to_vec();
    let signature = Signature::new(Algorithm::Rsa { hash: Some(HashAlg::Sha512) }, raw)
        .map_err(|e| SshSigError::Sign(e.to_string()))?;
    SshSig::new(public.key_data().clone(), namespace, HashAlg::Sha512, signature)
        .map_err(|e| SshSigError::Sign(e.to_string()))
}

/// The armored form (`-----BEGIN SSH SIGNATURE-----`) of a raw blob, as `ssh-keygen -Y verify`
/// reads it from a file.
pub fn armor(blob: &[u8]) -> Result<String, SshSigError> {
    let sig = decode_blob(blob)?;
    sig.to_pem(LineEnding::LF).map_err(|e| SshSigError::Sign(e.to_string()))
}

fn decode_blob(blob: &[u8]) -> Result<SshSig, SshSigError> {
    let mut reader = blob;
    let sig =
        SshSig::decode(&mut reader).map_err(|e| SshSigError::Verify(format!("not an SSHSIG blob: {e}")))?;
    if !reader.is_empty() {
        return Err(SshSigError::Verify("trailing bytes after the SSHSIG blob".into()));
    }
    Ok(sig)
}

/// Checks a raw SSHSIG blob: made by `public_key`, for `namespace`, over `message`.
pub fn verify_blob(
    public_key: &PublicKey,
    namespace: &str,
    message: &[u8],
    blob: &[u8],
) -> Result<(), SshSigError> {
    let sig = decode_blob(blob)?;
    // PublicKey::verify checks key and namespace too; checking first gives the caller a reason
    if sig.public_key() != public_key.key_data() {
        return Err(SshSigError::Verify("signed by a different key".into()));
    }
    if sig.namespace() != namespace {
        return Err(SshSigError::Verify(format!(
            "namespace {:?} is not the realm {namespace:?}",
            sig.namespace()
        )));
    }
    public_key
        .verify(namespace, message, &sig)
        .map_err(|_| SshSigError::Verify("signature does not match the signed data".into()))
}

/// The parameters of an `Authorization: Signature ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureAuthorization {
    pub key_id: String,
    pub algorithm: String,
    pub headers: String,
    pub created: u64,
    /// Base64 of the raw SSHSIG blob.
    pub signature: String,
}

pub fn parse_authorization(value: &str) -> Result<SignatureAuthorization, SshSigError> {
    let bad = |why: &str| SshSigError::Verify(format!("malformed Signature authorization: {why}"));
    let challenges = parse_challenges(value);
    let (scheme, params) = challenges.first().ok_or_else(|| bad("empty"))?;
    if !scheme.eq_ignore_ascii_case("signature") {
        return Err(bad("not the Signature scheme"));
    }
    let get = |k: &str| params.iter().find(|(name, _)| name.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    let created = get("created").ok_or_else(|| bad("no created"))?;
    Ok(SignatureAuthorization {
        key_id: get("keyId").ok_or_else(|| bad("no keyId"))?,
        algorithm: get("algorithm").unwrap_or_default(),
        headers: get("headers").unwrap_or_default(),
        created: created.parse().map_err(|_| bad("created is not a unix timestamp"))?,
        signature: get("signature").ok_or_else(|| bad("no signature"))?,
    })
}

/// Verifies a whole `Authorization: Signature ...` header value for `user` holding `public_key`:
/// the signed string, the realm as namespace, and `created` within `max_skew_s` of `now`.
pub fn verify_authorization(
    value: &str,
    user: &str,
    public_key: &PublicKey,
    realm: &str,
    now: u64,
    max_skew_s: u64,
) -> Result<(), SshSigError> {
    let auth = parse_authorization(value)?;
    if auth.key_id != user {
        return Err(SshSigError::Verify(format!("unknown keyId {:?}", auth.key_id)));
    }
    if auth.algorithm != "ssh" {
        return Err(SshSigError::Verify(format!("algorithm {:?} is not ssh", auth.algorithm)));
    }
    if auth.headers != SIGNED_HEADERS {
        return Err(SshSigError::Verify(format!(
            "signed headers {:?} are not {SIGNED_HEADERS}",
            auth.headers
        )));
    }
    if auth.created.abs_diff(now) > max_skew_s {
        return Err(SshSigError::Verify(format!(
            "created={} is more than {max_skew_s}s away from the server time {now}",
            auth.created
        )));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(auth.signature.as_bytes())
        .map_err(|_| SshSigError::Verify("signature is not base64".into()))?;
    verify_blob(public_key, realm, signing_string(auth.created).as_bytes(), &blob)
}

/// The realm of a `Signature` challenge among the challenges of one `WWW-Authenticate` value.
pub fn signature_realm(www_authenticate: &str) -> Option<String> {
    parse_challenges(www_authenticate)
        .into_iter()
        .find(|(scheme, _)| scheme.eq_ignore_ascii_case("signature"))
        .and_then(|(_, params)| {
            params.into_iter().find(|(k, _)| k.eq_ignore_ascii_case("realm")).map(|(_, v)| v)
        })
}

/// RFC 7235 challenges (or one credentials value) as (scheme, [(param, value)]): a bare token
/// starts a new challenge, `name=value` or `name="quoted"` adds a parameter to the current one.
pub fn parse_challenges(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let chars: Vec<char> = value.chars().collect();
    let mut i = 0;
    let is_sep = |c: char| c == ',' || c.is_whitespace();
    while i < chars.len() {
        while i < chars.len() && is_sep(chars[i]) {
            i += 1;
        }
        let start = i;
        while i < chars.len() && !is_sep(chars[i]) && chars[i] != '=' {
            i += 1;
        }
        let token: String = chars[start..i].iter().collect();
        if token.is_empty() {
            // a stray '=' (token68 padding): skip it
            i += 1;
            continue;
        }
        if i < chars.len() && chars[i] == '=' {
            i += 1;
            let mut val = String::new();
            if i < chars.len() && chars[i] == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    val.push(chars[i]);
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && !is_sep(chars[i]) {
                    val.push(chars[i]);
                    i += 1;
                }
            }
            match out.last_mut() {
                Some((_, params)) => params.push((token, val)),
                None => out.push((String::new(), vec![(token, val)])),
            }
        } else {
            out.push((token, Vec::new()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519() -> SshSigner {
        let key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).expect("keygen");
        let pem = key.to_openssh(LineEnding::LF).expect("encode");
        SshSigner::from_openssh("bot", &pem, "test key").expect("load")
    }

    #[test]
    fn challenges_parse_with_several_schemes() {
        assert_eq!(
            signature_realm(r#"Signature realm="Use your SSH key",headers="(created)""#).as_deref(),
            Some("Use your SSH key")
        );
        assert_eq!(
            signature_realm(r#"Basic realm="API login", Signature realm="ibs""#).as_deref(),
            Some("ibs")
        );
        assert_eq!(signature_realm(r#"basic realm="API login""#), None);
        assert_eq!(signature_realm(r#"Signature realm="a \"b\"""#).as_deref(), Some(r#"a "b""#));
    }

    #[test]
    fn header_round_trip_and_rejections() {
        let s = ed25519();
        let now = 1_700_000_000;
        let h = s.authorization("realm", now).unwrap();
        assert!(h.starts_with(
            r#"Signature keyId="bot",algorithm="ssh",headers="(created)",created=1700000000,signature=""#
        ));
        let pk = s.public_key().clone();
        verify_authorization(&h, "bot", &pk, "realm", now + 10, 300).unwrap();
        let err = |h: &str, user: &str, realm: &str, at: u64| {
            verify_authorization(h, user, &pk, realm, at, 300).unwrap_err()
        };
        assert!(err(&h, "bot", "other", now).to_string().contains("namespace"));
        assert!(err(&h, "eve", "realm", now).to_string().contains("keyId"));
        assert!(err(&h, "bot", "realm", now + 301).to_string().contains("away"));
        let forged = h.replace("created=1700000000", "created=1700000001");
        assert!(err(&forged, "bot", "realm", now).to_string().contains("does not match"));
        let other = ed25519();
        let h2 = other.authorization("realm", now).unwrap();
        assert!(err(&h2, "bot", "realm", now).to_string().contains("different key"));
    }

    #[test]
    fn debug_and_errors_show_no_key_material() {
        let key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let pem = key.to_openssh(LineEnding::LF).unwrap();
        let s = SshSigner::from_openssh("bot", &pem, "k").unwrap();
        let shown = format!("{s:?}");
        let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(!shown.contains(&body) && shown.contains("SHA256:"), "{shown}");
        let broken = pem.replace(&body, "AAAAAAAAAAAAAAAAAAAA");
        if let Err(e) = SshSigner::from_openssh("bot", &broken, "k") {
            assert!(!e.to_string().contains(&body));
        }
        let enc = key.encrypt(&mut rand_core::OsRng, "pw").unwrap().to_openssh(LineEnding::LF).unwrap();
        let e = SshSigner::from_openssh("bot", &enc, "/keys/id").unwrap_err();
        assert!(matches!(e, SshSigError::Encrypted { .. }) && e.to_string().contains("passphrase"), "{e}");
    }
}
