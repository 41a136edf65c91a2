//! `smtpmta dkim-keygen --domain D --selector S [--algorithm A] [--bits N] [--out FILE]`:
//! a new DKIM key pair. The private key goes to FILE (default `<domain>.<selector>.pem`
//! in the current folder, never overwritten, mode 0600); the TXT record to publish and the
//! `[[dkim]]` entry to add are printed.

use mta_config::DkimAlgorithm;
use mta_types::Domain;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The signing domain (`d=`).
    #[arg(long)]
    domain: String,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    #[arg(long)]
    selector: String,
    /// `rsa-sha256` or `ed25519-sha256`.
    #[arg(long, default_value = "rsa-sha256")]
    algorithm: String,
    /// RSA key size in bits (at least 1024; 2048 is what the big receivers expect).
    #[arg(long, default_value_t = 2048)]
    bits: usize,
    /// Where to write the private key (PEM).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: &Args) -> ExitCode {
    match generate(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtpmta dkim-keygen: {e}");
            ExitCode::from(2)
        }
    }
}

fn generate(args: &Args) -> Result<(), String> {
    let domain: Domain = args
        .domain
        .parse()
        .map_err(|e| format!("--domain `{}`: {e}", args.domain))?;
    let selector = args.selector.trim().to_ascii_lowercase();
    if selector.is_empty()
        || !selector
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!("--selector `{}` is not a DNS label", args.selector));
    }
    let algorithm = match args.algorithm.as_str() {
        "rsa-sha256" | "rsa" => DkimAlgorithm::RsaSha256,
        "ed25519-sha256" | "ed25519" => DkimAlgorithm::Ed25519Sha256,
        other => {
            return Err(format!(
                "--algorithm `{other}`: use rsa-sha256 or ed25519-sha256"
            ))
        }
    };
    let key =
        mta_auth::keygen(&domain, &selector, algorithm, args.bits).map_err(|e| e.to_string())?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{domain}.{selector}.pem")));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    file.write_all(key.private_pem.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let shown = std::fs::canonicalize(&out).unwrap_or(out);
    println!(
        "Private key written to {} (keep it secret).",
        shown.display()
    );
    println!();
    println!("Publish this TXT record:");
    println!("{} IN TXT \"{}\"", key.record_name, key.record_value);
    println!();
    println!("Add to smtpmta.toml:");
    println!("[[dkim]]");
    println!("domain = \"{domain}\"");
    println!("selector = \"{selector}\"");
    println!("private_key = \"{}\"", shown.display());
    println!("algorithm = \"{}\"", algorithm.as_str());
    Ok(())
}
