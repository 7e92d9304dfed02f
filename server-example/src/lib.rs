//! `server-example`: partialconv over HTTP, with a web page at `/` and user history.
//!
//! [`app`] builds the whole router from an [`AppState`]; `main.rs` only parses flags, binds
//! and serves. See `docs/http-api.md` for the API.

#![warn(missing_docs)]

pub mod auth;
pub mod backend;
pub mod codec;
pub mod config;
mod db;
pub mod error;
pub mod finetune;
pub mod history;
pub mod identity;
pub mod metrics;
pub mod models;
pub mod owners;
pub mod pool;
pub mod routes;
pub mod service;
pub mod state;
pub mod threads;
pub mod web;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use config::Config;
pub use error::AppError;
pub use state::{AppState, StartupError};

/// Response headers a browser page on another origin may read.
const EXPOSED: &[&str] = &[
    "x-event-id",
    "x-inference-ms",
    "x-decode-ms",
    "x-encode-ms",
    "x-batch-size",
    "x-strategy",
    "x-hole-ratio",
    "x-result-url",
    "x-master-url",
    "x-ensemble",
    "x-parent-event-id",
];

/// The page's scripts and styles are files of this origin, never inline; images and results
/// are this origin's or the page's own `blob:` URLs; no one may frame it (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; connect-src 'self' blob:; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Every route, in one place.
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits.max_upload_bytes;
    let cors = cors_layer(&state.limits.cors_origins);
    let inference = Router::new()
        .route("/api/v1/inpaint", post(routes::inpaint))
        .route("/reconstruct", post(routes::reconstruct))
        .route_layer(middleware::from_fn_with_state(state.clone(), routes::admit));
    // Photos for a job come in one request, so it gets its own, larger body limit (the
    // innermost limit wins).
    let finetune = Router::new()
        .route(
            "/api/v1/finetune",
            post(routes::finetune_submit).get(routes::finetune_list),
        )
        .layer(DefaultBodyLimit::max(state.limits.finetune_max_bytes));
    // Everything but the page, health and the API description needs a caller (`auth`).
    let protected = Router::new()
        .merge(inference)
        .merge(finetune)
        .route(
            "/api/v1/finetune/{job_id}",
            get(routes::finetune_status).delete(routes::finetune_cancel),
        )
        .route(
            "/api/v1/finetune/{job_id}/events",
            get(routes::finetune_events),
        )
        .route("/api/v1/models", get(routes::models))
        .route(
            "/api/v1/models/{id}",
            axum::routing::delete(routes::delete_model),
        )
        .route("/images/{key}", get(routes::image))
        .route(
            "/api/v1/history",
            get(routes::history).delete(routes::delete_history),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            routes::authenticate,
        ));
    let metrics = Router::new()
        .route("/metrics", get(routes::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            routes::metrics_gate,
        ));
    let router = Router::new()
        .merge(protected)
        .merge(metrics)
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/app.css", get(web::style))
        .route("/api/v1/openapi.json", get(routes::openapi))
        .route(
            "/api/v1/session",
            get(routes::session_status)
                .post(routes::sign_in)
                .delete(routes::sign_out),
        )
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(middleware::from_fn_with_state(state.clone(), routes::track))
        .layer(TraceLayer::new_for_http());
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            // Session cookies never go cross-origin: CORS callers send tokens.
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers(
                EXPOSED
                    .iter()
                    .copied()
                    .map(HeaderName::from_static)
                    .collect::<Vec<_>>(),
            ),
    )
}
