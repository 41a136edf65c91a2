//! The supervisor's HTTP side (`[metrics] listen`): `/metrics` (Prometheus, `metrics.rs`)
//! and the status page at `/` (`status_page.rs`, with its charts in `charts.rs`).
//!
//! The server is hyper's HTTP/1.1 alone: one request per connection (no keep-alive), at
//! most `MAX_CONNECTIONS` at once, each bounded by `REQUEST_TIMEOUT`. Only GET and HEAD,
//! so nothing here changes anything. The modules form no circle: this one routes to
//! `metrics` and `status_page`; both answer through `response`; what they show comes
//! from the supervisor (`crate::tasks::show_tasks`, `crate::stats`, `crate::history`),
//! which knows nothing of HTTP.

mod charts;
mod metrics;
mod response;
mod status_page;

use crate::Supervisor;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Scrapers and browsers served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// A connection that has not had its answer by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `[metrics] listen` (before the supervisor drops root); a port in use is a clear
/// start-up error, like an SMTP port.
pub fn bind(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context as _;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} ([metrics] listen)"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves until the task is aborted (at shutdown).
pub async fn serve(sup: Arc<Supervisor>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sup = sup.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let sup = sup.clone();
                async move { Ok::<_, Infallible>(answer(&sup, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

async fn answer(
    sup: &Arc<Supervisor>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return response::plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
    }
    let openmetrics = req.headers().get_all("accept").iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .contains("application/openmetrics-text")
    });
    match req.uri().path() {
        "/metrics" => metrics::answer(sup, openmetrics).await,
        "/" => status_page::page(sup).await,
        _ => response::plain(StatusCode::NOT_FOUND, "not found; try / or /metrics\n"),
    }
}
