//! Opening a session to one address of the next hop, as an explicit sequence of states:
//! connect and greeting → EHLO (HELO when refused) → STARTTLS, when `[outbound.tls]` asks
//! for it and the host offers it → EHLO again over TLS → ready for mail.
//!
//! Any failure here means "next host" (the caller tries the next address). Under the TLS
//! policy `may`, a failed handshake (nothing was sent yet) goes back to the start on a new
//! connection without TLS; `encrypt` and `verify` treat a host without STARTTLS, a refused
//! STARTTLS or a failed handshake like an unreachable one. The STARTTLS step is its own
//! state (`Opening::StartTls`) so that a policy module (MTA-STS, DANE) has one place to
//! decide what the connection must prove.

use crate::delivery::Env;
use crate::outcomes::reply_text;
use crate::tls_policy::HostTls;
use crate::tls_report::Failure;
use mta_smtp::client::SmtpClient;
use mta_smtp::tokio_rustls::rustls::pki_types::ServerName;
use std::net::SocketAddr;

/// The address to open and what the session must do there.
pub struct Target<'a> {
    pub addr: SocketAddr,
    /// The MX (or relay) host name, for the certificate check.
    pub host_name: &'a str,
    /// What the TLS policy (DANE, MTA-STS or the config's) asks of this host.
    pub tls: &'a HostTls,
    /// How log lines name this attempt: `list N: host[ip]:port`.
    pub what: &'a str,
    /// `SMTPClientDebug` level for the client's transcript.
    pub debug: u8,
}

/// Why a host will not do: the text for the log and the last error, and the refusing
/// reply (`421 4.7.0 …`) when there was one, for the shaping rules' `on_reply`.
#[derive(Debug)]
pub struct OpenError {
    pub text: String,
    pub reply: Option<String>,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<String> for OpenError {
    fn from(text: String) -> OpenError {
        OpenError { text, reply: None }
    }
}

/// A refusal: `what: reply`, keeping the reply.
fn refused(what: &str, reply: &mta_smtp::Reply) -> OpenError {
    let reply = reply_text(reply);
    OpenError {
        text: format!("{what}: {reply}"),
        reply: Some(reply),
    }
}

/// Where an opening session is.
enum Opening {
    /// Not connected: connect and read the greeting; `tls` false after a failed handshake
    /// under `may`.
    Connect { tls: bool },
    /// Greeted with 2xx: say EHLO.
    Ehlo { client: SmtpClient, tls: bool },
    /// EHLO answered: STARTTLS as the policy says.
    StartTls(SmtpClient),
    /// TLS is up: EHLO again (the extensions may differ over TLS).
    EhloAgain(SmtpClient),
    /// Ready for the first MAIL FROM.
    Ready(SmtpClient),
}

/// Opens a session ready for mail; an error means "next host".
pub async fn open(env: &Env, target: &Target<'_>) -> Result<SmtpClient, OpenError> {
    let mut state = Opening::Connect { tls: true };
    loop {
        state = match state {
            Opening::Connect { tls } => Opening::Ehlo {
                client: greeted(env, target).await?,
                tls,
            },
            Opening::Ehlo { client, tls } => {
                let client = ehlo(env, client, "EHLO/HELO").await?;
                if tls && target.tls.config.is_some() {
                    Opening::StartTls(client)
                } else {
                    Opening::Ready(client)
                }
            }
            Opening::StartTls(client) => starttls(env, client, target).await?,
            Opening::EhloAgain(client) => {
                Opening::Ready(ehlo(env, client, "EHLO after STARTTLS").await?)
            }
            Opening::Ready(client) => return Ok(client),
        };
    }
}

/// Connects and reads the greeting; one that is not 2xx means "next host".
async fn greeted(env: &Env, target: &Target<'_>) -> Result<SmtpClient, OpenError> {
    let (client, greeting) = SmtpClient::connect_with_debug(
        target.addr,
        env.config.connect_timeout,
        env.config.command_timeout,
        target.debug,
    )
    .await
    .map_err(|e| e.to_string())?;
    if !greeting.is_completion() {
        client.quit().await;
        return Err(refused("greeting", &greeting));
    }
    Ok(client)
}

/// EHLO (or HELO); a refusal closes the session. `what` names the step in the error.
async fn ehlo(env: &Env, mut client: SmtpClient, what: &str) -> Result<SmtpClient, OpenError> {
    let reply = client
        .hello(&env.hostname)
        .await
        .map_err(|e| e.to_string())?;
    if !reply.is_completion() {
        client.quit().await;
        return Err(refused(what, &reply));
    }
    Ok(client)
}

/// The STARTTLS step: the next state, or why this host will not do. Each outcome under a
/// DANE or MTA-STS policy is counted for TLS-RPT.
async fn starttls(
    env: &Env,
    mut client: SmtpClient,
    target: &Target<'_>,
) -> Result<Opening, OpenError> {
    let tls = target.tls;
    let config = tls.config.clone().expect("StartTls only with a config");
    let (required, policy) = (tls.required, &tls.used);
    let count = |result: Result<(), Failure>| {
        env.tls
            .outcome(tls, target.host_name, target.addr.ip(), result)
    };
    if !client.ext.starttls {
        count(Err(Failure::StarttlsNotSupported));
        if required {
            client.quit().await;
            return Err(format!(
                "TLS is required (policy {policy}), but was not offered by the host \
                 (starttls-not-supported); not sent in plaintext"
            )
            .into());
        }
        return Ok(Opening::Ready(client));
    }
    let name = ServerName::try_from(target.host_name.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(target.addr.ip().into()));
    let what = target.what;
    match client.starttls(config, name).await {
        Ok(Ok(info)) => {
            count(Ok(()));
            tracing::info!("{what}: TLS established: {info} (policy {policy})");
            Ok(Opening::EhloAgain(client))
        }
        Ok(Err(refused)) if !required => {
            tracing::info!(
                "{what}: STARTTLS refused ({}): going on in plaintext (policy {policy})",
                reply_text(&refused)
            );
            Ok(Opening::Ready(client))
        }
        Ok(Err(refused)) => {
            client.quit().await;
            Err(self::refused("STARTTLS refused", &refused))
        }
        Err(e) if e.is_handshake() => {
            let failure = Failure::of_handshake(&e.to_string());
            let result_type = failure.result_type();
            count(Err(failure));
            if required {
                return Err(format!(
                    "{e} (policy {policy}) ({result_type}); not sent in plaintext"
                )
                .into());
            }
            // Nothing was sent yet: a new connection in plaintext.
            tracing::info!("{what}: {e}: retrying in plaintext (policy {policy})");
            Ok(Opening::Connect { tls: false })
        }
        Err(e) => Err(format!("{e} (policy {policy})").into()),
    }
}
