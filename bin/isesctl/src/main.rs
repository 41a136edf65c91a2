//! isesctl — Inbound Session Controller, with its inbound session handlers `iseshlrN`.
//!
//! Listens on every `[inbound] listen` address (on the sockets the supervisor bound and
//! passed, `mta_ipc::listeners`) and hands each accepted connection to an
//! idle handler (`iseshlr0`, `iseshlr1`, …), creating one while fewer than `max_handlers`
//! exist; with every handler busy it stops accepting until one frees up. Each handler
//! speaks ESMTP (`mta-smtp`) with one client, validates recipients (local users, relaying
//! for trusted networks only) and hands accepted messages to the intake, which makes them
//! durable in groups (spool sync + one store commit) before answering 250.
//!
//! Writes: the Inbound Work Queue (and spool segments `isesctl-*.seg`). Kicks: imsgcnv.
//! TELL: `stop inbound transport`, `start inbound transport`; from the supervisor during
//! `tell smtpmta drain`: `InboundDraining` (new connections get 421 4.3.2).
//! A fleet peer (AUTH as `mta_smtp::handoff::PEER_USER` with `[cluster]
//! peer_password_file`) may hand messages off with `XFLEET` (`handoff.rs`). Status: the listening
//! addresses and one row per handler.
//! Per-client limits (`client_limits.rs`): with `[cluster] redis` those not written
//! `local:` are counted by the fleet in Redis (`fleet_limits.rs`); status counters
//! `redis_up`, `cluster_nodes_alive`, `redis_calls`, `redis_limit_calls`.
//! Config: `hostname`, `local_domains`, `trusted_networks`, the directory, `[inbound]`,
//! `[cluster]`;
//! debug knobs SMTPDebug (connect/disconnect lines), SMTPDebugIO (protocol transcript).
//! Mail authentication (`mail_auth.rs`): SPF, DKIM and DMARC results in an
//! Authentication-Results header before the 250; `[inbound] dmarc_reject` refuses DMARC
//! `p=reject` failures with 550 5.7.1 at the end of DATA.
//! Logs: `qid=… from=<…> size=… nrcpt=… client=helo[ip] [sasl_username=…]` per accepted message.
//! Also listens on `submission_listen` (STARTTLS + AUTH required) and `submissions_listen`
//! (implicit TLS + AUTH required) with the `[tls]` certificate, re-read at `tell smtpmta
//! refresh`; see `auth.rs` for AUTH and its lockout.
//! RFCs: see `mta-smtp` (5321, 1870, 6152, 2920, 2034/3463, 6531, 3461, 3030, 3207, 4954,
//! 6409, 8314).

mod auth;
mod client_limits;
mod dnsbl;
mod door;
mod fleet_limits;
mod handler_table;
mod handoff;
mod intake;
mod listener;
mod mail_auth;
mod milter;
mod policy;

use anyhow::Context as _;
use intake::Intake;
use listener::Inbound;
use mta_ipc::console::TellCommand;
use mta_ipc::TaskStatus;
use mta_task::{Task, TaskContext, TellError};
use mta_types::TaskName;
use std::process::ExitCode;
use std::sync::Arc;

struct Isesctl {
    inbound: Inbound,
    security: policy::Security,
}

impl Task for Isesctl {
    const NAME: TaskName = TaskName::Isesctl;

    async fn start(ctx: &TaskContext) -> anyhow::Result<Self> {
        let intake = Intake::spawn(ctx)?;
        let config = ctx.config();
        let mail_auth = mail_auth::InboundAuth::new(config)?;
        // The supervisor made (or checked) the certificate before starting us.
        let tls = mta_tls::ServerTls::load(config).context("TLS certificate")?;
        let security = policy::Security {
            tls: Some(Arc::new(tls)),
            auth: Arc::new(auth::AuthGuard::new(
                config.inbound.max_auth_failures,
                config.inbound.auth_failure_window,
            )),
        };
        // The supervisor bound the listening sockets (ports below 1024 need root, which
        // we no longer have with `user =`); an address it did not pass is bound here.
        let passed = mta_ipc::listeners::take_passed()?;
        // The fleet's link, when a per-client limit is shared (`fleet_limits.rs`).
        let fleet = match client_limits::Limits::from_config(&config.inbound).any_shared() {
            true => mta_task::fleet::join(config).await?,
            false => None,
        };
        let door = door::Door::new(config, intake.clone(), fleet).context("DNS lists")?;
        let inbound = Inbound::new(ctx, intake, mail_auth, security.clone(), passed, door);
        inbound.listen().await?;
        Ok(Isesctl { inbound, security })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        ctx.shutdown_requested().await;
        self.inbound
            .shutdown(ctx.config().inbound.shutdown_grace)
            .await;
        Ok(())
    }

    fn status(&self) -> TaskStatus {
        self.inbound.status()
    }

    fn histograms(&self) -> Vec<mta_ipc::task::HistogramSnapshot> {
        self.inbound.histograms()
    }

    /// `show clients` (`tell isesctl show clients`): the per-client counters.
    async fn report(
        &self,
        _ctx: &TaskContext,
        command: &TellCommand,
    ) -> Option<Result<mta_ipc::task::TaskReport, TellError>> {
        match command {
            TellCommand::Other(words)
                if words.len() == 2
                    && words[0].eq_ignore_ascii_case("show")
                    && words[1].eq_ignore_ascii_case("clients") =>
            {
                Some(Ok(mta_ipc::task::TaskReport::Clients(
                    self.inbound.clients(),
                )))
            }
            _ => None,
        }
    }

    /// `tell smtpmta refresh`: re-read the certificate (new sessions use it).
    fn refresh(&self, _ctx: &TaskContext) -> Result<(), TellError> {
        let Some(tls) = &self.security.tls else {
            return Ok(());
        };
        match tls.reload() {
            Ok(files) => {
                tracing::info!(
                    "TLS certificate re-read from {}",
                    files.certificate.display()
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!("TLS certificate not re-read, keeping the old one: {e}");
                Err(TellError::Failed(format!(
                    "TLS certificate not re-read: {e}"
                )))
            }
        }
    }

    async fn tell(&self, _ctx: &TaskContext, command: TellCommand) -> Result<String, TellError> {
        match command {
            TellCommand::StopInboundTransport => Ok(if self.inbound.stop().await {
                "inbound transport stopped".into()
            } else {
                "inbound transport already stopped".into()
            }),
            TellCommand::StartInboundTransport => match self.inbound.listen().await {
                Ok((true, listening)) => Ok(format!("inbound transport started: {listening}")),
                Ok((false, listening)) => Ok(format!("inbound transport already {listening}")),
                Err(e) => Err(TellError::Failed(format!("{e:#}"))),
            },
            TellCommand::InboundDraining(on) => Ok(match (self.inbound.set_draining(on), on) {
                (true, true) => "inbound transport draining: new connections get 421 4.3.2",
                (true, false) => "inbound transport no longer draining",
                (false, true) => "inbound transport already draining",
                (false, false) => "inbound transport was not draining",
            }
            .into()),
            other => Err(Self::unknown(
                other,
                "it knows: stop inbound transport, start inbound transport, show status",
            )),
        }
    }
}

fn main() -> ExitCode {
    mta_task::run::<Isesctl>()
}
