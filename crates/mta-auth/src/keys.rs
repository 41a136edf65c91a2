//! The `[[dkim]]` signing keys, and key generation for `smtpmta dkim-keygen`.

use crate::headers::{first_value, header_domain};
use crate::AuthError;
use base64::Engine as _;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mta_config::{Config, DkimAlgorithm, DkimKeyConfig};
use mta_types::Domain;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// RFC 8301 section 3.2: signers MUST use RSA keys of at least 1024 bits (and verifiers
/// must not accept shorter ones).
pub const MIN_RSA_BITS: usize = 1024;

/// One loaded key and the signer built from it.
struct Key {
    config: DkimKeyConfig,
    signer: DkimSigner<DkimKey, Done>,
}

/// Every `[[dkim]]` key, parsed and ready to sign.
pub struct SigningKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{}/{}", k.config.domain, k.config.selector))
            .collect();
        f.debug_struct("SigningKeys").field("keys", &names).finish()
    }
}

impl SigningKeys {
    /// Parses every `[[dkim]]` key file. A key that is not PEM, not of its `algorithm`, or
    /// an RSA key shorter than 1024 bits is an error naming the entry (file, line, key).
    pub fn load(config: &Config) -> Result<SigningKeys, AuthError> {
        let mut keys = Vec::with_capacity(config.dkim.len());
        for (i, entry) in config.dkim.iter().enumerate() {
            let key = load_key(entry).map_err(|fault| {
                config.dkim_error(
                    i,
                    "private_key",
                    format!(
                        "{} ({}): {fault}",
                        entry.private_key.display(),
                        entry.algorithm.as_str()
                    ),
                )
            })?;
            let signer = DkimSigner::from_key(key)
                .domain(entry.domain.as_str())
                .selector(entry.selector.as_str())
                .headers(entry.headers.iter().map(String::as_str))
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed);
            keys.push(Key {
                config: entry.clone(),
                signer,
            });
        }
        Ok(SigningKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key that signs mail from `domain`.
    pub fn key_for(&self, domain: &str) -> Option<&DkimKeyConfig> {
        self.find(domain).map(|k| &k.config)
    }

    fn find(&self, domain: &str) -> Option<&Key> {
        let domain: Domain = domain.parse().ok()?;
        self.keys.iter().find(|k| k.config.domain == domain)
    }

    /// The key for a message: its From domain's, else the envelope sender's domain's.
    pub fn key_for_message(
        &self,
        content: &[u8],
        sender_domain: Option<&str>,
    ) -> Option<&DkimKeyConfig> {
        self.pick(content, sender_domain).map(|k| &k.config)
    }

    fn pick(&self, content: &[u8], sender_domain: Option<&str>) -> Option<&Key> {
        let from = first_value(content, "from").and_then(|v| header_domain(&v));
        from.as_deref()
            .and_then(|d| self.find(d))
            .or_else(|| sender_domain.and_then(|d| self.find(d)))
    }

    /// The `DKIM-Signature:` header (ending in CRLF) to prepend to `content`, with the key
    /// that made it; `Ok(None)` when no key signs for the message's domains, or when the
    /// message already starts with our own signature (signed on an earlier pass).
    pub fn sign(
        &self,
        content: &[u8],
        sender_domain: Option<&str>,
    ) -> Result<Option<(String, &DkimKeyConfig)>, AuthError> {
        let Some(key) = self.pick(content, sender_domain) else {
            return Ok(None);
        };
        if already_signed(content, &key.config) {
            return Ok(None);
        }
        let signature = key.signer.sign(content).map_err(AuthError::Sign)?;
        Ok(Some((
            tidy_signature_header(signature.to_header()),
            &key.config,
        )))
    }
}

/// mail-auth 0.13 may fold the header between the `b=` value and the closing `;`, while it
/// signed the header with `b=;` (no white space): a verifier that keeps that folding white
/// space (dkimpy does, as RFC 6376 3.2's tag-spec reads) hashes `b= ;` and the signature
/// fails. Ending the header on `b=<value>;` makes both readings agree.
fn tidy_signature_header(header: String) -> String {
    let body = header.trim_end_matches(['\r', '\n']);
    match body.strip_suffix(';') {
        Some(rest) => format!("{};\r\n", rest.trim_end_matches([' ', '\t', '\r', '\n'])),
        None => format!("{body}\r\n"),
    }
}

/// The first header field is a DKIM-Signature with our `d=` and `s=`.
fn already_signed(content: &[u8], key: &DkimKeyConfig) -> bool {
    let Some(&(s, e)) = crate::headers::fields(content).first() else {
        return false;
    };
    let field = String::from_utf8_lossy(&content[s..e]).to_ascii_lowercase();
    let Some(value) = field.strip_prefix("dkim-signature:") else {
        return false;
    };
    let tags: Vec<String> = value
        .split(';')
        .map(|t| t.chars().filter(|c| !c.is_whitespace()).collect())
        .collect();
    tags.contains(&format!("d={}", key.domain)) && tags.contains(&format!("s={}", key.selector))
}

/// Why a `[[dkim]]` key file is unusable; `SigningKeys::load` puts it in a config error
/// naming the entry.
#[derive(Debug, thiserror::Error)]
enum KeyFault {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a PEM private key: {0}")]
    NotPem(#[source] rustls_pki_types::pem::Error),
    #[error("not an RSA key")]
    NotRsa,
    /// The parser's words (from the rsa crate or mail-auth).
    #[error("not an RSA private key: {0}")]
    BadRsa(String),
    #[error(
        "an RSA key of {0} bits is too short: at least {MIN_RSA_BITS} (RFC 8301), 2048 recommended"
    )]
    RsaTooShort(usize),
    #[error("not an Ed25519 PKCS#8 key: {0}")]
    BadEd25519(#[source] mail_auth::Error),
    #[error("not an Ed25519 key (expected a PKCS#8 \"PRIVATE KEY\" PEM)")]
    NotEd25519,
}

fn load_key(entry: &DkimKeyConfig) -> Result<DkimKey, KeyFault> {
    let pem = std::fs::read(&entry.private_key).map_err(KeyFault::Read)?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(KeyFault::NotPem)?;
    match entry.algorithm {
        DkimAlgorithm::RsaSha256 => {
            if matches!(der, PrivateKeyDer::Sec1(_)) {
                return Err(KeyFault::NotRsa);
            }
            // The size first: ring refuses short keys with a bare "TooSmall".
            let bits = private_rsa_bits(&der)?;
            if bits < MIN_RSA_BITS {
                return Err(KeyFault::RsaTooShort(bits));
            }
            let key =
                RsaKey::<Sha256>::from_key_der(der).map_err(|e| KeyFault::BadRsa(e.to_string()))?;
            Ok(DkimKey::Rsa(key))
        }
        DkimAlgorithm::Ed25519Sha256 => match der {
            PrivateKeyDer::Pkcs8(p8) => Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der())
                .map(DkimKey::Ed25519)
                .map_err(KeyFault::BadEd25519),
            _ => Err(KeyFault::NotEd25519),
        },
    }
}

fn private_rsa_bits(der: &PrivateKeyDer<'_>) -> Result<usize, KeyFault> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = match der {
        PrivateKeyDer::Pkcs1(k) => rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der())
            .map_err(|e| KeyFault::BadRsa(e.to_string()))?,
        PrivateKeyDer::Pkcs8(k) => rsa::RsaPrivateKey::from_pkcs8_der(k.secret_pkcs8_der())
            .map_err(|e| KeyFault::BadRsa(e.to_string()))?,
        _ => return Err(KeyFault::NotRsa),
    };
    Ok(key.n().bits())
}

fn spki(public_pkcs1_der: &[u8]) -> Result<Vec<u8>, AuthError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    let public = rsa::RsaPublicKey::from_pkcs1_der(public_pkcs1_der)
        .map_err(|e| AuthError::Crypto(e.to_string()))?;
    public
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| AuthError::Crypto(e.to_string()))
}

/// A new key pair: the private key as PEM and the TXT record to publish.
pub struct GeneratedKey {
    pub private_pem: String,
    /// `<selector>._domainkey.<domain>.`
    pub record_name: String,
    /// `v=DKIM1; k=rsa; p=…` (or `k=ed25519`).
    pub record_value: String,
}

/// Makes a key pair for `algorithm` (RSA with `rsa_bits` bits).
pub fn keygen(
    domain: &Domain,
    selector: &str,
    algorithm: DkimAlgorithm,
    rsa_bits: usize,
) -> Result<GeneratedKey, AuthError> {
    let (label, k, private, public) = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            if rsa_bits < MIN_RSA_BITS {
                return Err(AuthError::Crypto(format!(
                    "RSA keys need at least {MIN_RSA_BITS} bits (RFC 8301)"
                )));
            }
            let pair = mail_auth::dkim::generate::DkimKeyPair::generate_rsa(rsa_bits)
                .map_err(|e| AuthError::Crypto(e.to_string()))?;
            let (private, public) = pair.into_inner();
            // Publish the SubjectPublicKeyInfo form, as `openssl rsa -pubout` writes it:
            // every verifier reads it (some read PKCS#1 RSAPublicKey too).
            let public = spki(&public)?;
            ("RSA PRIVATE KEY", "rsa", private, public)
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let pair = mail_auth::dkim::generate::DkimKeyPair::generate_ed25519()
                .map_err(|e| AuthError::Crypto(e.to_string()))?;
            let (private, public) = pair.into_inner();
            ("PRIVATE KEY", "ed25519", private, public)
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = b64.encode(&private);
    let mut private_pem = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        private_pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        private_pem.push('\n');
    }
    private_pem.push_str(&format!("-----END {label}-----\n"));
    Ok(GeneratedKey {
        private_pem,
        record_name: format!("{selector}._domainkey.{domain}."),
        record_value: format!("v=DKIM1; k={k}; p={}", b64.encode(&public)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(
        dir: &std::path::Path,
        entries: &str,
    ) -> Result<Config, mta_config::ConfigError> {
        std::fs::write(dir.join("directory.toml"), "").unwrap();
        let path = dir.join("smtpmta.toml");
        std::fs::write(&path, format!("hostname = \"mta.test\"\n{entries}")).unwrap();
        Config::load(&path)
    }

    #[test]
    fn generated_keys_load_and_sign() {
        let dir = tempfile::tempdir().unwrap();
        let domain: Domain = "example.test".parse().unwrap();
        let rsa = keygen(&domain, "r1", DkimAlgorithm::RsaSha256, 2048).unwrap();
        let ed = keygen(&domain, "e1", DkimAlgorithm::Ed25519Sha256, 0).unwrap();
        assert!(rsa.record_value.starts_with("v=DKIM1; k=rsa; p=MII"));
        assert!(ed.record_value.starts_with("v=DKIM1; k=ed25519; p="));
        assert_eq!(ed.record_name, "e1._domainkey.example.test.");
        std::fs::write(dir.path().join("r.pem"), &rsa.private_pem).unwrap();
        std::fs::write(dir.path().join("e.pem"), &ed.private_pem).unwrap();
        for (file, alg, sel) in [
            ("r.pem", "rsa-sha256", "r1"),
            ("e.pem", "ed25519-sha256", "e1"),
        ] {
            let config = config_with(
                dir.path(),
                &format!("[[dkim]]\ndomain = \"example.test\"\nselector = \"{sel}\"\nprivate_key = \"{file}\"\nalgorithm = \"{alg}\"\n"),
            )
            .unwrap();
            let keys = SigningKeys::load(&config).unwrap();
            let msg = b"From: Ann <ann@Example.test>\r\nSubject: hi\r\n\r\nbody\r\n";
            let (header, key) = keys.sign(msg, None).unwrap().expect("signed");
            assert_eq!(key.selector, sel);
            assert!(header.starts_with("DKIM-Signature:"), "{header}");
            assert!(header.contains(&format!("a={alg}")), "{header}");
            assert!(header.contains("c=relaxed/relaxed"), "{header}");
            // Signed once: a second pass over the signed message adds nothing.
            let signed = [header.as_bytes(), msg].concat();
            assert!(keys.sign(&signed, None).unwrap().is_none());
            // Other domains are not signed; the sender domain is the fallback.
            let other = b"From: bob@other.test\r\n\r\nx\r\n";
            assert!(keys.sign(other, None).unwrap().is_none());
            assert!(keys.sign(other, Some("example.test")).unwrap().is_some());
        }
    }

    #[test]
    fn bad_keys_name_their_entry() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |file: &str, alg: &str| {
            format!("local_domains = [\"localhost\"]\n\n[[dkim]]\ndomain = \"example.test\"\nselector = \"s\"\nprivate_key = \"{file}\"\nalgorithm = \"{alg}\"\n")
        };
        // Missing file: refused at load, with the line of `private_key`.
        let e = config_with(dir.path(), &entry("missing.pem", "rsa-sha256")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(":7: key `dkim[0].private_key`"), "{text}");
        assert!(text.contains("missing.pem"), "{text}");
        // Not a key.
        std::fs::write(dir.path().join("junk.pem"), "hello\n").unwrap();
        let c = config_with(dir.path(), &entry("junk.pem", "rsa-sha256")).unwrap();
        let text = SigningKeys::load(&c).unwrap_err().to_string();
        assert!(
            text.contains("key `dkim[0].private_key`") && text.contains("not a PEM private key"),
            "{text}"
        );
        // An RSA key of 512 bits (RFC 8301 forbids < 1024).
        let short = mail_auth::dkim::generate::DkimKeyPair::generate_rsa(512).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(short.private_key());
        std::fs::write(
            dir.path().join("short.pem"),
            format!("-----BEGIN RSA PRIVATE KEY-----\n{b64}\n-----END RSA PRIVATE KEY-----\n"),
        )
        .unwrap();
        let c = config_with(dir.path(), &entry("short.pem", "rsa-sha256")).unwrap();
        let text = SigningKeys::load(&c).unwrap_err().to_string();
        assert!(
            text.contains(":7: key `dkim[0].private_key`")
                && text.contains("512 bits is too short"),
            "{text}"
        );
        // An RSA key given as Ed25519.
        let c = config_with(dir.path(), &entry("short.pem", "ed25519-sha256")).unwrap();
        let text = SigningKeys::load(&c).unwrap_err().to_string();
        assert!(text.contains("not an Ed25519 key"), "{text}");
        // Unknown algorithm: a toml error at the value.
        let e = config_with(dir.path(), &entry("short.pem", "rsa-sha1")).unwrap_err();
        assert!(e.to_string().contains("dkim[0].algorithm"), "{e}");
    }
}
