//! The one server helper: bind a socket (mode 0600), check each client's hello, and answer
//! its requests one by one. A client that sends garbage loses its connection; the server
//! goes on.

use crate::frame::{read_frame, write_frame, FrameError};
use crate::hello::{Hello, HelloReply, Service, PROTOCOL_VERSION};
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::io::BufReader;

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds a socket at `path`, replacing a stale socket file left by a crash. Only the
/// owner may connect (mode 0600).
pub fn bind(path: &Path) -> std::io::Result<Listener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let name = path.to_fs_name::<GenericFilePath>()?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .reclaim_name(true)
        .create_tokio()
}

/// What a service does with each request of one connection.
pub trait Handler<Req, Resp>: Clone + Send + Sync + 'static {
    fn handle(&self, peer: &Hello, request: Req) -> impl Future<Output = Resp> + Send;

    /// Called with a response the client never got: its connection broke while the
    /// response was written. A client can die between asking and the answer (a task
    /// killed while its claim waited for a group commit); whatever that answer handed out
    /// must be taken back, or it stays handed to nobody.
    fn undelivered(&self, _peer: &Hello, _response: Resp) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called once the client's connection ends, for whatever reason.
    fn disconnected(&self, _peer: &Hello) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Accepts connections forever, each on its own tokio task.
pub async fn serve<Req, Resp, H>(listener: Listener, service: Service, handler: H)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + Sync + 'static,
    H: Handler<Req, Resp>,
{
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let handler = handler.clone();
                tokio::spawn(async move { serve_connection(stream, service, handler).await });
            }
            Err(err) => {
                tracing::warn!(%service, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection<Req, Resp, H>(stream: Stream, service: Service, handler: H)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + Sync + 'static,
    H: Handler<Req, Resp>,
{
    let mut stream = BufReader::new(stream);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame::<_, Hello>(&mut stream)).await
    {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            tracing::warn!(%service, error = %err, "bad hello from a client; connection closed");
            return;
        }
        Err(_) => {
            tracing::warn!(%service, "client sent no hello in time; connection closed");
            return;
        }
    };
    if let Some(reason) = refusal(&hello, service) {
        tracing::warn!(%service, client = %hello.client, pid = hello.pid, %reason, "client refused");
        let _ = write_frame(&mut stream, &HelloReply::Refused { reason }).await;
        return;
    }
    if write_frame(
        &mut stream,
        &HelloReply::Accepted {
            version: PROTOCOL_VERSION,
        },
    )
    .await
    .is_err()
    {
        return;
    }
    loop {
        match read_frame::<_, Req>(&mut stream).await {
            Ok(Some(request)) => {
                let response = handler.handle(&hello, request).await;
                if write_frame(&mut stream, &response).await.is_err() {
                    handler.undelivered(&hello, response).await;
                    break;
                }
            }
            Ok(None) => break,
            Err(FrameError::Io(_)) => break,
            Err(err) => {
                tracing::warn!(%service, client = %hello.client, pid = hello.pid, error = %err, "bad frame; connection closed");
                break;
            }
        }
    }
    handler.disconnected(&hello).await;
}

fn refusal(hello: &Hello, service: Service) -> Option<String> {
    if hello.version != PROTOCOL_VERSION {
        return Some(format!(
            "protocol version mismatch: client speaks version {}, this server speaks version {} (are all executables from the same build?)",
            hello.version, PROTOCOL_VERSION
        ));
    }
    if hello.service != service {
        return Some(format!(
            "this socket is the {service}, not the {}",
            hello.service
        ));
    }
    None
}
