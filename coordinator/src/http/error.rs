//! `ApiError`: the one error type of every handler, and its one mapping to an HTTP answer:
//! `(StatusCode, Json {"error": {type, field?, message, limit?, errors?}})`.
//!
//! Every 4xx names the field it is about (a JSON field, a header such as `Idempotency-Key`, `id`
//! for path ids, `body` for the request body) and, where one applies, the limit. 5xx answers carry
//! a generic message; the cause is logged once, here.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kontext_proto::QueueError;
use kontext_proto::validate::{FieldError, ValidationErrors};
use kontext_storage::StorageError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": {"type": "invalid_request", "field": "steps",
    "message": "steps must be between 1 and 100 (got 150)", "limit": "1..=100"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Machine-readable class of an error. Each has one HTTP status (`StatusCode::from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// 422: the request is well-formed but a field's value is not acceptable.
    InvalidRequest,
    /// 400: the request cannot be read (malformed JSON, header or query).
    BadRequest,
    /// 401: missing or unknown API key.
    Unauthorized,
    /// 403: a signed URL's signature is missing, wrong or expired (never for tenancy).
    Forbidden,
    /// 404: no such thing, or another tenant's (existence must not leak).
    NotFound,
    /// 409: the request does not fit the resource's current state (e.g. a canceled chain).
    Conflict,
    /// 409: the job has no result yet.
    NotReady,
    /// 408: the body did not arrive within the server's time limit.
    RequestTimeout,
    /// 413
    PayloadTooLarge,
    /// 415
    UnsupportedMediaType,
    /// 421: open (keyless) mode answers only requests addressed to a loopback host name.
    MisdirectedRequest,
    /// 429: the tenant's in-flight limit is reached.
    TooManyRequests,
    /// 503: the queue or the object store is unavailable; retry shortly.
    Unavailable,
    /// 500
    Internal,
}

impl ErrorType {
    /// The wire name (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::NotReady => "not_ready",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MisdirectedRequest => "misdirected_request",
            Self::TooManyRequests => "too_many_requests",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl From<&ErrorType> for StatusCode {
    fn from(kind: &ErrorType) -> Self {
        match kind {
            ErrorType::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::BadRequest => StatusCode::BAD_REQUEST,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorType::Forbidden => StatusCode::FORBIDDEN,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::Conflict | ErrorType::NotReady => StatusCode::CONFLICT,
            ErrorType::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorType::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            ErrorType::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorType::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// The field, header or part of the request the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
    /// The bound that was broken, e.g. "1..=100" or "..=1048576 bytes".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Every problem when there was more than one (validation reports all fields at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<FieldError>,
}

/// An error on its way to becoming a response; its status follows from `detail.kind`.
#[derive(Debug)]
pub struct ApiError {
    /// Boxed so `Result<_, ApiError>` stays small on the happy path.
    pub detail: Box<ErrorDetail>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(kind: ErrorType, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            detail: Box::new(ErrorDetail {
                kind,
                field: field.map(str::to_owned),
                message: message.into(),
                limit: None,
                errors: Vec::new(),
            }),
            retry_after_s: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        (&self.detail.kind).into()
    }

    pub fn with_limit(mut self, limit: impl Into<String>) -> Self {
        self.detail.limit = Some(limit.into());
        self
    }

    /// 422: the request is well-formed but a field's value is not acceptable.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidRequest, Some(field), message)
    }

    /// 400: the request cannot be read (malformed JSON, header or query).
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorType::BadRequest, Some(field), message)
    }

    /// 401 on an admin route (`http::admin`).
    pub fn admin_unauthorized() -> Self {
        Self::new(
            ErrorType::Unauthorized,
            Some("Authorization"),
            "missing or unknown admin key: send \"Authorization: Bearer <admin key>\"",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorType::Unauthorized,
            Some("Authorization"),
            "missing or unknown API key: send \"Authorization: Bearer <key>\" or \"x-key: <key>\"",
        )
    }

    /// 404 for ids that don't exist *or belong to another tenant* (never 403: existence must
    /// not leak).
    pub fn not_found(field: &str, what: &str) -> Self {
        Self::new(
            ErrorType::NotFound,
            Some(field),
            format!("{what} not found"),
        )
    }

    /// 409: the request does not fit the resource's current state (e.g. a canceled chain).
    pub fn conflict(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorType::Conflict, Some(field), message)
    }

    /// 403 for signed URLs whose signature is missing, wrong or expired (never for tenancy).
    pub fn forbidden(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorType::Forbidden, Some(field), message)
    }

    pub fn too_large(field: &str, limit_bytes: u64, what: &str) -> Self {
        Self::new(
            ErrorType::PayloadTooLarge,
            Some(field),
            format!("{what} is larger than the limit of {limit_bytes} bytes"),
        )
        .with_limit(format!("..={limit_bytes} bytes"))
    }

    /// 408: the body took longer than `limit` to arrive.
    pub fn body_timeout(field: &str, what: &str, limit: std::time::Duration) -> Self {
        Self::new(
            ErrorType::RequestTimeout,
            Some(field),
            format!("the {what} did not arrive within {} s", limit.as_secs_f64()),
        )
        .with_limit(format!("..={} s", limit.as_secs_f64()))
    }

    pub fn unsupported_media(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorType::UnsupportedMediaType, Some(field), message)
    }

    /// 421: the Host header names no loopback host (open mode).
    pub fn misdirected(message: impl Into<String>) -> Self {
        Self::new(ErrorType::MisdirectedRequest, Some("Host"), message)
    }

    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(ErrorType::NotReady, Some("id"), message)
    }

    pub fn too_many(in_flight: u64, limit: u32) -> Self {
        let mut e = Self::new(
            ErrorType::TooManyRequests,
            Some("max_in_flight"),
            format!(
                "this tenant has {in_flight} jobs queued or running; the limit is {limit}: \
                 wait for some to finish"
            ),
        )
        .with_limit(format!("..={limit} jobs in flight"));
        e.retry_after_s = Some(1);
        e
    }

    /// 429: the tenant holds as many jobs, chains or turns as it may over the retention period.
    pub fn too_many_retained(
        kind: kontext_proto::RetainedKind,
        retained: u64,
        adding: u64,
        limit: u32,
    ) -> Self {
        let field = format!("max_retained_{kind}");
        let mut e = Self::new(
            ErrorType::TooManyRequests,
            Some(&field),
            format!(
                "this tenant holds {retained} {kind} created within the job retention period and \
                 this request adds {adding}; the limit is {limit}: older ones stop counting as \
                 the retention period passes them"
            ),
        )
        .with_limit(format!("..={limit} {kind}"));
        e.retry_after_s = Some(60);
        e
    }

    /// 429: this client failed to authenticate too often; no key is looked at until `wait` ends.
    pub fn auth_throttled(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = Self::new(
            ErrorType::TooManyRequests,
            Some("Authorization"),
            format!(
                "too many failed authentications from this address; retry in {secs} s with a \
                 valid key"
            ),
        );
        e.retry_after_s = Some(secs);
        e
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorType::Unavailable, None, message);
        e.retry_after_s = Some(1);
        e
    }

    /// 500; `cause` is logged, the client sees a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            ErrorType::Internal,
            None,
            "internal error; the coordinator's log has the details",
        )
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(v: ValidationErrors) -> Self {
        let first = v.errors.first().cloned().unwrap_or_else(|| FieldError {
            field: "body".into(),
            message: "invalid request".into(),
            limit: None,
        });
        let message = v
            .errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let mut e = Self::invalid(&first.field, message);
        e.detail.limit = first.limit;
        if v.errors.len() > 1 {
            e.detail.errors = v.errors;
        }
        e
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::IdempotencyConflict => Self::invalid(
                "Idempotency-Key",
                "Idempotency-Key was used before with a different request body; use a new key \
                 for a different request",
            ),
            QueueError::TooManyInFlight { in_flight, limit } => Self::too_many(in_flight, limit),
            QueueError::TooManyRetained {
                kind,
                retained,
                adding,
                limit,
            } => Self::too_many_retained(kind, retained, adding, limit),
            QueueError::InvalidCursor(c) => Self::bad_request(
                "cursor",
                format!("cursor {c:?} was not returned by this API"),
            ),
            QueueError::NotFound(_) => Self::not_found("id", "job"),
            QueueError::ChainNotFound(_) => Self::not_found("id", "chain"),
            QueueError::ChainConflict(msg) => Self::conflict("id", msg),
            QueueError::Saturated { what, limit } => Self::unavailable(format!(
                "all {limit} {what} of this coordinator are in use by event followers and \
                 waiting requests; retry shortly, or poll without waiting"
            )),
            QueueError::Backend(_) => {
                tracing::error!(error = %e, "queue unavailable");
                Self::unavailable("the job queue is unavailable; retry shortly")
            }
            other => Self::internal(&other),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if e.is_transient() {
            tracing::error!(error = %e, "storage unavailable");
            return Self::unavailable("object storage is unavailable; retry shortly");
        }
        Self::internal(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(ErrorBody {
                error: *self.detail,
            }),
        )
            .into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// Fallback for unknown routes, so they answer in the same JSON shape.
pub async fn no_route() -> ApiError {
    ApiError::new(ErrorType::NotFound, Some("path"), "no such route")
}
