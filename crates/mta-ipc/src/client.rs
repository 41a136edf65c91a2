//! The one client helper: connect, say hello, send a request, wait for its reply — each
//! step bounded by a timeout.

use crate::frame::{read_frame, write_frame, FrameError};
use crate::hello::{Hello, HelloReply, Service, PROTOCOL_VERSION};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use mta_types::TaskName;
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::BufReader;

/// How long a connect or hello may take before the peer is considered absent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{service} refused the connection: {reason}")]
    Refused { service: Service, reason: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("the peer closed the connection")]
    Closed,
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl IpcError {
    /// The peer is not there (not running, or gone): worth a retry later, not a crash.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            IpcError::Connect { .. } | IpcError::Closed | IpcError::Timeout { .. }
        ) || matches!(
            self,
            IpcError::Frame(FrameError::Io(_)) | IpcError::Frame(FrameError::Truncated)
        )
    }
}

/// A connection that has passed the hello.
pub struct Connection {
    stream: BufReader<Stream>,
    service: Service,
}

impl Connection {
    pub async fn connect(
        path: &Path,
        service: Service,
        client: TaskName,
    ) -> Result<Connection, IpcError> {
        let connect = async {
            let name =
                path.to_fs_name::<GenericFilePath>()
                    .map_err(|source| IpcError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })?;
            let stream = Stream::connect(name)
                .await
                .map_err(|source| IpcError::Connect {
                    path: path.to_path_buf(),
                    source,
                })?;
            let mut stream = BufReader::new(stream);
            let hello = Hello {
                version: PROTOCOL_VERSION,
                service,
                client,
                pid: std::process::id(),
            };
            write_frame(&mut stream, &hello).await?;
            match read_frame::<_, HelloReply>(&mut stream).await? {
                Some(HelloReply::Accepted { .. }) => Ok(Connection { stream, service }),
                Some(HelloReply::Refused { reason }) => Err(IpcError::Refused { service, reason }),
                None => Err(IpcError::Closed),
            }
        };
        within(CONNECT_TIMEOUT, "connect", connect).await
    }

    pub fn service(&self) -> Service {
        self.service
    }

    /// Sends one request and waits up to `timeout` for its reply.
    pub async fn call<Req, Resp>(
        &mut self,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, IpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let exchange = async {
            write_frame(&mut self.stream, request).await?;
            read_frame::<_, Resp>(&mut self.stream)
                .await?
                .ok_or(IpcError::Closed)
        };
        within(timeout, "request", exchange).await
    }

    /// Sends a request without waiting for a reply.
    pub async fn send<Req: Serialize>(&mut self, request: &Req) -> Result<(), IpcError> {
        write_frame(&mut self.stream, request).await?;
        Ok(())
    }

    /// Waits for the next frame, however long it takes (`None` when the peer closes).
    pub async fn recv<Resp: DeserializeOwned>(&mut self) -> Result<Option<Resp>, IpcError> {
        Ok(read_frame::<_, Resp>(&mut self.stream).await?)
    }
}

/// `exchange`, given `after` to finish; past it, `IpcError::Timeout` naming `what`.
async fn within<T>(
    after: Duration,
    what: &'static str,
    exchange: impl std::future::Future<Output = Result<T, IpcError>>,
) -> Result<T, IpcError> {
    tokio::time::timeout(after, exchange)
        .await
        .map_err(|_| IpcError::Timeout { what, after })?
}
