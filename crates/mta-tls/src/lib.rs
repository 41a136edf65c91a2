//! mta-tls — transport security in one place: the TLS settings (rustls with the ring
//! provider; no OpenSSL) and the directory's password hashes ([`password`], argon2id).
//!
//! - Server side: [`ensure_certificate`] makes the self-signed certificate for `hostname`
//!   under `data_dir/tls/` when `[tls]` names none (the supervisor calls it at start, before
//!   any task runs); [`ServerTls`] holds the `rustls::ServerConfig` the inbound listeners
//!   use and reloads it for `tell smtpmta refresh`.
//! - Client side: [`client_config`] builds the `rustls::ClientConfig` for an
//!   `[outbound.tls] policy`: `verify` checks the chain against the webpki roots plus
//!   `ca_file` and the name against the next hop's host name; `may` and `encrypt` take any
//!   certificate (opportunistic TLS protects against passive listeners only, as in
//!   Postfix), but the handshake's signatures are still checked.
//!
//! Config read: `hostname`, `data_dir`, `[tls]`, `[outbound.tls] ca_file`. Writes:
//! `data_dir/tls/selfsigned-{cert,key}.pem` (the key 0600). Logs nothing; errors name the
//! config key and the file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use mta_config::{Config, TlsFiles, TlsPolicy};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub mod dane;
pub mod password;
pub mod sts;
mod verifier;

use verifier::Check;

pub use rustls;
pub use tokio_rustls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured (or the self-signed) certificate or key file is unusable.
    #[error("key `{key}`: `{}`: {reason}", file.display())]
    File {
        key: &'static str,
        file: PathBuf,
        reason: String,
    },
    /// The self-signed certificate could not be made or written.
    #[error("cannot make the self-signed certificate in `{}`: {reason}", dir.display())]
    Generate { dir: PathBuf, reason: String },
    /// The certificate and the key do not go together, or rustls refused them.
    #[error("`{}` with `{}`: {source}", files.certificate.display(), files.private_key.display())]
    Config {
        files: TlsFiles,
        #[source]
        source: rustls::Error,
    },
}

/// The crypto provider every config here is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// When `[tls]` names no certificate: makes a self-signed one for `hostname` under
/// `data_dir/tls/` if it is not there yet. Returns the files the listeners will use; the
/// supervisor also loads them once here so a bad file stops the start with a clear error.
pub fn ensure_certificate(config: &Config) -> Result<TlsFiles, TlsError> {
    let files = config.tls_files();
    if config.tls.files.is_none() && !(files.certificate.exists() && files.private_key.exists()) {
        generate(&config.hostname, &files)?;
    }
    server_config(&files)?;
    Ok(files)
}

fn generate(hostname: &str, files: &TlsFiles) -> Result<(), TlsError> {
    let dir = files
        .certificate
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let fail = |reason: String| TlsError::Generate {
        dir: dir.clone(),
        reason,
    };
    // CN and subjectAltName both carry the host name: clients show the CN, verifiers
    // check the SAN.
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])
        .map_err(|e| fail(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    // The folder's own entry, so that a power cut cannot keep the files and lose their
    // folder (data_dir exists: the supervisor made it before this).
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(|e| fail(e.to_string()))?;
    }
    // Key first, created 0600 from the start; then the certificate. A crash in between
    // leaves a key without certificate, which the next start replaces.
    write_new(&files.private_key, key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| fail(e.to_string()))?;
    write_new(&files.certificate, cert.pem().as_bytes(), 0o644).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The new name is in the folder's data, not the file's: without this a power cut
    // can leave the old name (or none) after a start that said it made the files.
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the chain and the key and builds the server config (TLS 1.2 and 1.3).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&files.certificate, "tls.certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.private_key).map_err(|e| TlsError::File {
        key: "tls.private_key",
        file: files.private_key.clone(),
        reason: pem_reason(e, "private key"),
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|source| TlsError::Config {
            files: files.clone(),
            source,
        })?;
    Ok(Arc::new(config))
}

fn read_certs(file: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        key,
        file: file.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(pem_reason(e, "certificate")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_reason(e, "certificate")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn pem_reason(e: rustls::pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM {what} in the file"),
        other => format!("not a PEM {what}: {other:?}"),
    }
}

/// The server config in effect; `tell smtpmta refresh` swaps in a new one (sessions in
/// progress keep the one they started with).
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    pub fn load(config: &Config) -> Result<ServerTls, TlsError> {
        let files = config.tls_files();
        let current = RwLock::new(server_config(&files)?);
        Ok(ServerTls { files, current })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls lock").clone()
    }

    /// Re-reads the files; on error the config in effect stays.
    pub fn reload(&self) -> Result<&TlsFiles, TlsError> {
        let fresh = server_config(&self.files)?;
        *self.current.write().expect("tls lock") = fresh;
        Ok(&self.files)
    }
}

/// The client config for a policy (`None` for `TlsPolicy::None`). `ca_file` adds private
/// CAs to the webpki roots under `verify`.
pub fn client_config(
    policy: TlsPolicy,
    ca_file: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    Ok(match policy {
        TlsPolicy::None => None,
        TlsPolicy::May | TlsPolicy::Encrypt => Some(verifier::client_config(Check::Any)),
        TlsPolicy::Verify => {
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .with_root_certificates(root_store(ca_file)?)
                .with_no_client_auth();
            Some(Arc::new(config))
        }
    })
}

/// The webpki roots plus the PEM certificates of `ca_file` (`[outbound.tls] ca_file`).
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca_file {
        for cert in read_certs(ca, "outbound.tls.ca_file")? {
            roots.add(cert).map_err(|e| TlsError::File {
                key: "outbound.tls.ca_file",
                file: ca.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

/// What a verification would have said, for MTA-STS `testing` (TLS-RPT): `Some(error)`
/// after a failed one, `None` while it passed or did not run.
pub type Observed = Arc<std::sync::Mutex<Option<String>>>;

/// Verifies like `verify` (roots plus `ca_file`, the host name) but takes any
/// certificate, noting the verdict: MTA-STS `testing` delivers as before and reports.
pub struct Observer(Arc<rustls::client::WebPkiServerVerifier>);

impl Observer {
    pub fn new(ca_file: Option<&Path>) -> Result<Observer, TlsError> {
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(root_store(ca_file)?),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::File {
            key: "outbound.tls.ca_file",
            file: ca_file.map(Path::to_path_buf).unwrap_or_default(),
            reason: e.to_string(),
        })?;
        Ok(Observer(verifier))
    }

    /// A client config for one connection and the slot its verdict lands in.
    pub fn config(&self) -> (Arc<ClientConfig>, Observed) {
        let observed = Observed::default();
        let check = Check::Observe {
            webpki: self.0.clone(),
            observed: observed.clone(),
        };
        (verifier::client_config(check), observed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path, tls: &str) -> Config {
        std::fs::write(dir.join("directory.toml"), "").unwrap();
        std::fs::write(
            dir.join("smtpmta.toml"),
            format!("hostname = \"mx.example\"\ndata_dir = \"var\"\n{tls}"),
        )
        .unwrap();
        Config::load(&dir.join("smtpmta.toml")).unwrap()
    }

    #[test]
    fn selfsigned_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), "");
        let files = ensure_certificate(&config).unwrap();
        let pem = std::fs::read(&files.certificate).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&files.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        ensure_certificate(&config).unwrap();
        assert_eq!(
            std::fs::read(&files.certificate).unwrap(),
            pem,
            "kept, not remade"
        );
        let tls = ServerTls::load(&config).unwrap();
        tls.reload().unwrap();
    }

    #[test]
    fn a_bad_certificate_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), "not a certificate\n").unwrap();
        std::fs::write(dir.path().join("k.pem"), "no key\n").unwrap();
        let config = config_in(
            dir.path(),
            "[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n",
        );
        let e = ensure_certificate(&config).unwrap_err().to_string();
        assert!(e.contains("tls.certificate") && e.contains("c.pem"), "{e}");
    }

    #[test]
    fn client_configs() {
        assert!(client_config(TlsPolicy::None, None).unwrap().is_none());
        assert!(client_config(TlsPolicy::May, None).unwrap().is_some());
        assert!(client_config(TlsPolicy::Verify, None).unwrap().is_some());
    }
}
