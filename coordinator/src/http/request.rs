//! Reading requests: the caller's tenant (`Caller` extractor), bodies read with a size limit, and
//! JSON parsed so that a type error names the field it is in.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::auth::Tenant;
use crate::auth_failures::ClientKey;
use crate::http_server::PeerAddr;
use crate::state::AppState;

/// The authenticated tenant of a request: `Authorization: Bearer <key>` or BFL's `x-key: <key>`.
#[derive(Debug, Clone)]
pub struct Caller(pub Tenant);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = api_key(&parts.headers);
        if state.config.auth.is_open() {
            return state
                .config
                .auth
                .tenant(key)
                .map(Caller)
                .ok_or_else(ApiError::unauthorized);
        }
        let client = unthrottled_client(parts, state)?;
        match state.config.auth.tenant(key) {
            Some(tenant) => Ok(Caller(tenant)),
            None => Err(auth_failed(state, client, ApiError::unauthorized())),
        }
    }
}

/// The client of a keyed request, refused with 429 while it is over its failed-authentication
/// budget. Requests that did not come through `http_server::serve` (in-process tests) carry no
/// peer address and are not limited.
pub(crate) fn unthrottled_client(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<ClientKey>, ApiError> {
    let client = parts
        .extensions
        .get::<PeerAddr>()
        .map(|p| ClientKey::of(p.0.ip()));
    if let Some(c) = client
        && let Some(wait) = state.auth_failures.blocked_for(c)
    {
        state.metrics.auth_throttled.inc();
        return Err(ApiError::auth_throttled(wait));
    }
    Ok(client)
}

/// A failed authentication: counted against the client's budget; `refusal` (401) unless that
/// failure used the budget up (429).
pub(crate) fn auth_failed(
    state: &AppState,
    client: Option<ClientKey>,
    refusal: ApiError,
) -> ApiError {
    state.metrics.auth_failed.inc();
    match client.and_then(|c| state.auth_failures.failed(c)) {
        Some(wait) => ApiError::auth_throttled(wait),
        None => refusal,
    }
}

/// The presented key: `Authorization: Bearer <key>` or `x-key: <key>`. When both are sent they
/// must name the same key; two different keys are refused (ambiguous credentials), so a wrong key
/// in one header is never hidden by a right one in the other.
pub(super) fn api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let x_key = headers.get("x-key").map(|v| v.to_str().ok().map(str::trim));
    match (bearer, x_key) {
        (Some(b), Some(Some(x))) if b == x => Some(b),
        (Some(_), Some(_)) => None,
        (Some(b), None) => Some(b),
        (None, Some(x)) => x,
        (None, None) => None,
    }
}

/// The whole body, refused with 413 (naming `field` and the limit) past `limit` bytes — checked
/// against Content-Length first, then while reading, so an oversized body is never buffered —
/// and with 408 when it takes longer than `timeout` to arrive.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    timeout: std::time::Duration,
    field: &str,
    what: &str,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        // Read (and drop) a body up to twice the limit before answering, so a client still
        // writing it gets the 413 instead of a broken pipe; nothing is buffered. Larger bodies
        // are refused at once and the connection closed.
        if n <= limit.saturating_mul(2) {
            let mut body = body.into_data_stream();
            let _ = tokio::time::timeout(timeout, async {
                use futures::StreamExt;
                while let Some(Ok(_chunk)) = body.next().await {}
            })
            .await;
        }
        return Err(ApiError::too_large(field, limit, what));
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    // A client trickling its body holds a connection and a buffer: bounded in time too.
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit_usize).collect())
        .await
        .map_err(|_| ApiError::body_timeout(field, what, timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::too_large(field, limit, what))
        }
        Err(e) => Err(ApiError::bad_request(
            field,
            format!("reading the {what} failed: {e}"),
        )),
    }
}

/// A JSON request body: read within the body limits (`read_body`), then parsed (`parse_json`).
pub async fn read_json<T: DeserializeOwned + Serialize>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(T, String), ApiError> {
    let limits = &state.config.limits;
    let bytes = read_body(
        headers,
        body,
        limits.max_body_bytes,
        limits.body_read_timeout,
        "body",
        "request body",
    )
    .await?;
    parse_json(&bytes)
}

/// Parses a JSON object into `T`; returns it with the SHA-256 (hex) of its canonical form (the
/// parsed request serialised with keys sorted, no whitespace), which is what idempotent replays
/// are compared by.
///
/// The body is parsed straight into `T`: no `serde_json::Value` of the whole body is built
/// first, so unknown fields (`"pad": [0, 0, …]`) are skipped without allocating, and a body costs
/// about its own size in memory, not several times it (and skipping nests no deeper on the
/// stack: serde_json ignores values iteratively).
pub fn parse_json<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<(T, String), ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("body", "body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if !matches!(e.inner().classify(), serde_json::error::Category::Data) {
            return ApiError::bad_request("body", format!("body is not valid JSON: {}", e.inner()));
        }
        let field = e.path().to_string();
        let field = if field == "." {
            "body".to_owned()
        } else {
            field
        };
        ApiError::invalid(&field, format!("{field}: {}", e.inner()))
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("body", format!("body is not valid JSON: {e}")))?;
    let value = serde_json::to_value(&parsed).map_err(|e| ApiError::internal(&e))?;
    let canonical = serde_json::to_vec(&sorted_keys(value)).map_err(|e| ApiError::internal(&e))?;
    let hash = hex::encode(Sha256::digest(&canonical));
    Ok((parsed, hash))
}

/// `value` with every object's keys in sorted order (explicitly: serde_json keeps insertion order
/// when any crate in the build enables its `preserve_order` feature).
fn sorted_keys(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted_keys).collect()),
        other => other,
    }
}

/// Query string pairs (percent-decoded).
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        reqwest::Url::parse(&format!("http://q/?{q}"))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// The value of query parameter `name`.
pub fn query_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kontext_proto::validate::JobRequest;

    #[test]
    fn type_errors_name_the_field() {
        let err = parse_json::<JobRequest>(br#"{"prompt": "x", "steps": "many"}"#)
            .expect_err("steps is a string");
        assert_eq!(err.detail.field.as_deref(), Some("steps"));
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let err = parse_json::<JobRequest>(b"[1]").expect_err("not an object");
        assert_eq!(err.detail.field.as_deref(), Some("body"));
    }

    #[test]
    fn syntax_errors_and_trailing_data_are_400() {
        for body in [
            &br#"{"prompt": "x""#[..],
            br#"{"prompt": "x"} {"again": 1}"#,
        ] {
            let err = parse_json::<JobRequest>(body).expect_err("not acceptable JSON");
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{err:?}");
        }
        // Unknown fields are skipped, not built: a large padding array parses.
        let padded = format!(r#"{{"prompt": "x", "pad": [{}0]}}"#, "0,".repeat(100_000));
        let (req, _) = parse_json::<JobRequest>(padded.as_bytes()).expect("padding ignored");
        assert_eq!(req.prompt, "x");
    }

    #[test]
    fn canonical_hash_ignores_whitespace_and_key_order() {
        let (_, a) = parse_json::<JobRequest>(br#"{"prompt":"x","seed":1}"#).expect("valid");
        let (_, b) =
            parse_json::<JobRequest>(b"{ \"seed\": 1,\n \"prompt\": \"x\" }").expect("valid");
        let (_, c) = parse_json::<JobRequest>(br#"{"prompt":"x","seed":2}"#).expect("valid");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
