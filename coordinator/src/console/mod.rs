//! The operator console at `/console` (docs/console.md): server-rendered HTML with inline SVG
//! charts and one small inline script of ours (the overview's live queue chart); no build step
//! and no third-party JavaScript.
//!
//! It reads only the admin API: every page is rendered from the answers of the admin handlers
//! (`crate::http::admin`, `crate::http::admin_media`), images load from admin routes, and every
//! button is a form posting to a console action that calls the admin handler of that action (so
//! it is the same audited script). Access is the admin API's: open in open loopback mode, else a
//! session cookie from `/console/login` (signed, bound to the admin key, ended when that key is
//! removed) or an admin key in the `Authorization` header.

mod charts;
mod job_pages;
mod layout;
mod pages;

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;

use crate::admin_auth::AdminDecision;
use crate::http::admin::{self, Admin};
use crate::http::error::ApiError;
use crate::http::request::{auth_failed, unthrottled_client};
use crate::signing;
use crate::state::{AppState, now_ms};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kontext_console";
/// How long a console session lasts.
pub const SESSION_S: u64 = 12 * 3600;

/// The console's routes (merged into the coordinator's router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::overview))
        .route("/console/workers", get(pages::workers))
        .route("/console/jobs", get(job_pages::jobs))
        .route("/console/jobs/{id}", get(job_pages::job))
        .route("/console/chains/{id}", get(pages::chain))
        .route("/console/dead", get(pages::dead_letters))
        .route("/console/usage", get(pages::usage))
        .route("/console/audit", get(pages::audit))
        .route("/console/dead/{id}/requeue", post(requeue_dead))
        .route("/console/dead/{id}/dismiss", post(dismiss_dead))
        .route("/console/workers/{id}/drain", post(drain_worker))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
}

/// The session cookie's value in `headers`, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// Who the console's session cookie in `headers` stands for (`AdminAuth::session_actor`), when
/// it allows anything now.
pub fn session_actor(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let key_id = session_cookie(headers).and_then(|value| {
        signing::verify_console_session(&state.config.url_signing_secret, value, now_ms() / 1000)
    });
    let admin = &state.config.admin;
    (admin.decide_session(key_id) == AdminDecision::Allowed).then(|| admin.session_actor(key_id))
}

/// A console request from an operator: the admin API's own check (header key or open mode),
/// or a valid session cookie; otherwise a redirect to the login page.
pub struct Operator(pub Admin);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if let Some(actor) = session_actor(state, &parts.headers) {
            return Ok(Operator(Admin { actor }));
        }
        match Admin::from_request_parts(parts, state).await {
            Ok(admin) => Ok(Operator(admin)),
            Err(e) if e.status() == StatusCode::UNAUTHORIZED => {
                Err(Redirect::to("/console/login").into_response())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A console action (a form post): an operator, from a page of this console. Browsers send
/// `Origin` with every form post, and a page elsewhere cannot make it ours, so comparing it with
/// `Host` refuses cross-site requests (which a session cookie, or open loopback mode, would
/// otherwise let through).
pub struct Action(pub Admin);

impl FromRequestParts<AppState> for Action {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        let same_origin = matches!((origin, host), (Some(o), Some(h))
            if o.split_once("://").is_some_and(|(_, rest)| rest == h));
        if !same_origin {
            return Err(ApiError::forbidden(
                "Origin",
                "console actions must come from the console's own pages (Origin must match Host); \
                 scripts use the admin API",
            )
            .into_response());
        }
        let Operator(admin) = Operator::from_request_parts(parts, state).await?;
        // The audit log tells the console's buttons from scripts calling the admin API.
        Ok(Action(Admin {
            actor: format!("console {}", admin.actor),
        }))
    }
}

/// After an action: back to `to` with a notice code the page knows how to say.
fn back(to: &str, done: &str) -> Response {
    Redirect::to(&format!("{to}?done={done}")).into_response()
}

async fn requeue_dead(
    State(state): State<AppState>,
    Action(admin): Action,
    Path(id): Path<String>,
) -> Response {
    match admin::requeue_dead(State(state), admin, Path(id)).await {
        Ok((_, reply)) => match &reply.0.new_id {
            Some(new) => back("/console/dead", &format!("requeued:{new}")),
            None => back("/console/dead", "requeued"),
        },
        Err(e) => pages::error_page(&e),
    }
}

async fn dismiss_dead(
    State(state): State<AppState>,
    Action(admin): Action,
    Path(id): Path<String>,
) -> Response {
    match admin::dismiss_dead(State(state), admin, Path(id)).await {
        Ok(_) => back("/console/dead", "dismissed"),
        Err(e) => pages::error_page(&e),
    }
}

async fn drain_worker(
    State(state): State<AppState>,
    Action(admin): Action,
    Path(id): Path<String>,
) -> Response {
    match admin::drain_worker(State(state), admin, Path(id)).await {
        Ok(_) => back("/console/workers", "drain_requested"),
        Err(e) => pages::error_page(&e),
    }
}

async fn login_page(State(state): State<AppState>) -> Response {
    let decision = state.config.admin.decide(None);
    let open = decision == AdminDecision::Allowed;
    layout::page(
        "Sign in",
        "",
        html! {
            h1 { "Sign in" }
            @if open {
                p { "This coordinator runs in open loopback mode: the console needs no key. "
                    a href="/console" { "Go to the overview" } "." }
            } @else if decision == AdminDecision::Disabled {
                p { "The admin API is off, and the console with it: start the coordinator with \
                    --admin-keys." }
            } @else {
                form method="post" action="/console/login" {
                    p { label { "Admin key " input type="password" name="key" autocomplete="off"
                        required; } }
                    button type="submit" { "Sign in" }
                }
                p.muted { "Admin keys are the coordinator's --admin-keys. A session lasts 12 hours \
                    and ends when its key is removed." }
            }
        },
    )
}

#[derive(Deserialize)]
struct Login {
    key: String,
}

/// The client of a login attempt, refused while it is throttled for failed keys (the same
/// throttle as the APIs' authentication).
struct LoginClient(Option<crate::auth_failures::ClientKey>);

impl FromRequestParts<AppState> for LoginClient {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(LoginClient(unthrottled_client(parts, state)?))
    }
}

async fn login(
    State(state): State<AppState>,
    LoginClient(client): LoginClient,
    Form(form): Form<Login>,
) -> Response {
    let Some(key_id) = state.config.admin.key_id(form.key.trim()) else {
        let refusal = auth_failed(&state, client, ApiError::admin_unauthorized());
        if refusal.status() == StatusCode::TOO_MANY_REQUESTS {
            return refusal.into_response();
        }
        return (
            StatusCode::UNAUTHORIZED,
            layout::page(
                "Sign in",
                "",
                html! {
                    h1 { "Sign in" }
                    p.notice { "That is not an admin key of this coordinator." }
                    a href="/console/login" { "Try again" }
                },
            ),
        )
            .into_response();
    };
    let expires = now_ms() / 1000 + SESSION_S;
    let value = signing::console_session(&state.config.url_signing_secret, &key_id, expires);
    let cookie =
        format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={SESSION_S}; HttpOnly; SameSite=Strict");
    let mut response = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(Action(_): Action) -> Response {
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kontext_console=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
    );
    response
}
