//! Open (keyless) mode listens on loopback only, but a browser on the same machine can still
//! reach it: any web page may send a "simple" cross-origin POST (`Content-Type: text/plain`, no
//! preflight) with a JSON body, and DNS rebinding lets a page on another origin read the
//! answers. So in open mode:
//!
//! - a request with a body must declare the media type its route reads
//!   (`application/json`, or an image type for `/v1/uploads`, which checks that itself): a
//!   simple request's types are refused with 415 before the body is read;
//! - the `Host` header must name a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`): a
//!   rebound name is refused with 421.
//!
//! With API keys neither applies: a page cannot supply the key.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::state::AppState;

pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.config.auth.is_open()
        && let Err(e) = check(request.method(), request.uri().path(), request.headers())
    {
        return e.into_response();
    }
    next.run(request).await
}

fn check(method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        return Err(ApiError::misdirected(format!(
            "this server runs without API keys and answers only requests addressed to a loopback \
             host (localhost, 127.0.0.1, [::1]); got Host {host:?}. Serve other hosts with --api-keys"
        )));
    }
    if method == Method::POST && has_body(headers) && path != "/v1/uploads" {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if media.as_deref() != Some("application/json") {
            return Err(ApiError::unsupported_media(
                "Content-Type",
                format!(
                    "the body must be sent as Content-Type: application/json (got {:?})",
                    media.unwrap_or_default()
                ),
            )
            .with_limit("application/json"));
        }
    }
    Ok(())
}

/// Whether the request carries a body (a declared length above zero, or chunked).
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// `localhost`, an IPv4 loopback address or `[::1]`, each with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1] or [::1]:8080
        Some(rest) => match rest.split_once(']') {
            Some((addr, _port)) => {
                return addr
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok_and(|a| a.is_loopback());
            }
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn loopback_hosts_only() {
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:80",
            "[::2]:80",
            "",
            "[::1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn simple_request_types_are_refused_on_json_routes() {
        let json = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (header::CONTENT_LENGTH, "2"),
        ]);
        assert!(check(&Method::POST, "/v1/jobs", &json).is_ok());
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let h = headers(&[
                (header::HOST, "127.0.0.1:8080"),
                (header::CONTENT_TYPE, ct),
                (header::CONTENT_LENGTH, "2"),
            ]);
            let e = check(&Method::POST, "/v1/jobs", &h).expect_err(ct);
            assert_eq!(
                e.detail.kind,
                super::super::error::ErrorType::UnsupportedMediaType
            );
        }
        // A body-less POST (cancel) and the upload route (checks its image types itself).
        let bare = headers(&[(header::HOST, "localhost:8080")]);
        assert!(check(&Method::POST, "/v1/jobs/x/cancel", &bare).is_ok());
        let png = headers(&[
            (header::HOST, "localhost"),
            (header::CONTENT_TYPE, "image/png"),
            (header::CONTENT_LENGTH, "9"),
        ]);
        assert!(check(&Method::POST, "/v1/uploads", &png).is_ok());
        let rebound = headers(&[(header::HOST, "attacker.example")]);
        let e = check(&Method::GET, "/v1/jobs", &rebound).expect_err("rebound host");
        assert_eq!(
            e.detail.kind,
            super::super::error::ErrorType::MisdirectedRequest
        );
    }
}
