//! Plain responses shared by the routes.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

pub fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_string())))
        .expect("valid response")
}

/// A body of `content_type`, not to be cached.
pub fn with_type(content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
