//! `GET /v1/webhook_secret`: the caller's own webhook signing key, derived per tenant from the
//! coordinator's `--webhook-secret` (`signing::Secret::for_tenant`), so a tenant can verify its
//! deliveries and cannot forge another tenant's.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::request::Caller;
use crate::state::AppState;

/// The key the caller's webhook deliveries are signed with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookSecret {
    pub tenant: String,
    /// Standard Webhooks secret (`whsec_<base64>`): give it to your receiver's verifier.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// The caller's webhook signing secret (each tenant has its own).
#[utoipa::path(
    get, path = "/v1/webhook_secret", tag = "jobs",
    responses(
        (status = 200, description = "The secret this tenant's deliveries are signed with",
            body = WebhookSecret),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 409, description = "This coordinator has no --webhook-secret: webhooks are off",
            body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this client",
            body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn webhook_secret(
    State(state): State<AppState>,
    Caller(tenant): Caller,
) -> Result<Json<WebhookSecret>, ApiError> {
    let master = state.config.webhooks.secret.as_ref().ok_or_else(|| {
        ApiError::conflict(
            "webhook_url",
            "webhooks are off on this coordinator: the operator sets --webhook-secret",
        )
    })?;
    Ok(Json(WebhookSecret {
        secret: master.for_tenant(&tenant.id).to_standard_webhooks(),
        tenant: tenant.id,
    }))
}
