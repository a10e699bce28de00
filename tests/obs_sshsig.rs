//! Our SSH signatures against OpenSSH's own `ssh-keygen -Y verify` (and the other way round):
//! if these agree, IBS (which checks with OpenSSH's format) will accept what we send.

use base64::Engine;
use incident_gate::obs::sshsig::{self, SshSigError, SshSigner};
use ssh_key::PublicKey;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use testkit::keygen;

const REALM: &str = "Use your SSH key to log in";
const USER: &str = "qam-openqa-bot";

fn public_key(private: &Path) -> PublicKey {
    let text = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    PublicKey::from_openssh(text.trim()).unwrap()
}

/// Runs `ssh-keygen -Y verify` on `message` with the armored signature; returns success and stderr.
fn openssh_verify(
    dir: &Path,
    private: &Path,
    namespace: &str,
    message: &[u8],
    armored: &str,
) -> (bool, String) {
    let pubkey = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    let allowed = dir.join("allowed_signers");
    std::fs::write(&allowed, format!("{USER} {}", pubkey.trim())).unwrap();
    let sig = dir.join("message.sig");
    std::fs::write(&sig, armored).unwrap();
    let mut child = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(&allowed)
        .args(["-I", USER, "-n", namespace, "-s"])
        .arg(&sig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `ssh-keygen -Y sign` over `message`, as osc does it; returns the armored signature.
fn openssh_sign(dir: &Path, private: &Path, namespace: &str, message: &[u8]) -> String {
    let msg = dir.join("to-sign");
    std::fs::write(&msg, message).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-f"])
        .arg(private)
        .args(["-n", namespace])
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(dir.join("to-sign.sig")).unwrap()
}

fn blob_of_header(header: &str) -> Vec<u8> {
    let auth = sshsig::parse_authorization(header).unwrap();
    base64::engine::general_purpose::STANDARD.decode(auth.signature).unwrap()
}

fn check_kind(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), kind, "");
    let signer = SshSigner::from_file(USER, &key).unwrap();
    let created = 1_764_000_000;
    let header = signer.authorization(REALM, created).unwrap();
    assert!(
        header.starts_with(&format!(
            "Signature keyId=\"{USER}\",algorithm=\"ssh\",headers=\"(created)\",created={created},signature=\""
        )),
        "{header}"
    );
    let blob = blob_of_header(&header);
    assert!(blob.starts_with(b"SSHSIG"), "raw blob, not the armored text");
    let armored = sshsig::armor(&blob).unwrap();
    assert!(armored.starts_with("-----BEGIN SSH SIGNATURE-----"));
    let message = sshsig::signing_string(created);
    assert_eq!(message, format!("(created): {created}"));

    // OpenSSH accepts our signature over the exact string, in the realm's namespace
    let (ok, out) = openssh_verify(dir.path(), &key, REALM, message.as_bytes(), &armored);
    assert!(ok, "ssh-keygen rejected our {kind} signature: {out}");
    if kind == "rsa" {
        assert!(out.contains("RSA"), "{out}");
    }
    // ... and rejects it for another message or another namespace
    let (ok, _) =
        openssh_verify(dir.path(), &key, REALM, format!("(created): {}", created + 1).as_bytes(), &armored);
    assert!(!ok, "tampered message verified");
    let (ok, _) = openssh_verify(dir.path(), &key, "other-realm", message.as_bytes(), &armored);
    assert!(!ok, "wrong namespace verified");

    // our verifier agrees
    let pk = public_key(&key);
    sshsig::verify_blob(&pk, REALM, message.as_bytes(), &blob).unwrap();
    sshsig::verify_authorization(&header, USER, &pk, REALM, created + 5, 300).unwrap();
    let mut tampered = blob.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(matches!(
        sshsig::verify_blob(&pk, REALM, message.as_bytes(), &tampered),
        Err(SshSigError::Verify(_))
    ));
    assert!(sshsig::verify_blob(&pk, REALM, b"(created): 1", &blob).is_err());
    assert!(sshsig::verify_blob(&pk, "other", message.as_bytes(), &blob).is_err());

    // and accepts what OpenSSH itself signs (the form osc sends)
    let theirs = openssh_sign(dir.path(), &key, REALM, message.as_bytes());
    let body: String = theirs.lines().filter(|l| !l.starts_with("-----")).collect();
    let their_blob = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    sshsig::verify_blob(&pk, REALM, message.as_bytes(), &their_blob).unwrap();
}

#[test]
fn ed25519_signatures_verify_with_openssh() {
    check_kind("ed25519");
}

#[test]
fn rsa_signatures_verify_with_openssh() {
    check_kind("rsa");
}

#[test]
fn encrypted_and_broken_keys_are_clear_errors_without_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "ed25519", "a passphrase");
    let e = SshSigner::from_file(USER, &key).unwrap_err();
    assert!(matches!(e, SshSigError::Encrypted { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("passphrase") && text.contains("id_ed25519"), "{text}");
    let pem = std::fs::read_to_string(&key).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line) && !format!("{e:?}").contains(line));
    }

    let e = SshSigner::from_file(USER, &dir.path().join("missing")).unwrap_err();
    assert!(e.to_string().starts_with("cannot read SSH key"), "{e}");
    let garbage = dir.path().join("garbage");
    std::fs::write(
        &garbage,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = SshSigner::from_file(USER, &garbage).unwrap_err();
    assert!(matches!(e, SshSigError::InvalidKey { .. }), "{e:?}");

    let ok = keygen(dir.path(), "rsa", "");
    let signer = SshSigner::from_file(USER, &ok).unwrap();
    let shown = format!("{signer:?}");
    let pem = std::fs::read_to_string(&ok).unwrap();
    let secret_line = pem.lines().nth(3).unwrap();
    assert!(!shown.contains(secret_line) && shown.contains(USER), "{shown}");
}
