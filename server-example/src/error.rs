//! The server's one error type. Every failure becomes JSON `{"error", "code"}` with a status
//! that says whose fault it was; internal details stay in the log, never in the response.

use std::sync::Arc;

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::codec::UnknownFormat;
use crate::pool::error::PoolError;

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Every way a request can fail; [`IntoResponse`] turns it into the JSON answer.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The image or mask is unusable: not an image, truncated, too many pixels, sizes differ.
    #[error(transparent)]
    Image(partialconv::Error),

    /// A malformed request: missing field, bad value, bad data URL.
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable name (`code` in the JSON).
        code: &'static str,
        /// What the client is told.
        message: String,
    },

    /// The body is not the content type this endpoint reads.
    #[error("{0}")]
    UnsupportedMediaType(String),

    /// The body exceeds `--max-upload-mb`.
    #[error("request body exceeds the limit of {limit_mb} MB")]
    BodyTooLarge {
        /// The limit, in megabytes.
        limit_mb: f64,
    },

    /// No such route, image or resource.
    #[error("not found")]
    NotFound,

    /// The inference queue is full; the client should retry later.
    #[error("the server is busy; retry later")]
    Overloaded,

    /// The job did not finish within the request timeout.
    #[error("inference did not finish within {0} s")]
    Timeout(u64),

    /// The model is not loaded (yet, or it failed to load).
    #[error("model not ready: {0}")]
    NotReady(String),

    /// No model has this id (`model` of an inference request, `base_model` of a job).
    #[error("no model `{0}`; GET /api/v1/models lists them")]
    UnknownModel(String),

    /// No fine-tune job has this id.
    #[error("no fine-tune job `{0}`")]
    UnknownJob(String),

    /// `parent_event_id` names no event of the caller's (someone else's is as unknown).
    #[error("no history event `{0}` of yours to continue from (parent_event_id)")]
    UnknownParent(String),

    /// A fine-tune upload past one of its limits (photos per job, unpacked bytes).
    #[error("{message}")]
    TooMuch {
        /// Stable machine-readable name (`code` in the JSON).
        code: &'static str,
        /// What the client is told.
        message: String,
    },

    /// The user already has as many fine-tune jobs queued or running as allowed.
    #[error("user `{user}` already has {limit} fine-tune job(s) queued or running")]
    TooManyJobs {
        /// The user.
        user: String,
        /// Jobs a user may have queued or running.
        limit: usize,
    },

    /// Well-formed but unusable: e.g. fewer than 2 readable photos for a job.
    #[error("{message}")]
    Unprocessable {
        /// Stable machine-readable name (`code` in the JSON).
        code: &'static str,
        /// What the client is told.
        message: String,
    },

    /// The job has already ended, so it cannot be cancelled.
    #[error("{0}")]
    JobFinished(String),

    /// The job is queued or running, so it cannot be deleted.
    #[error("{0}")]
    JobActive(String),

    /// Fine-tuning needs the model in this process, not behind `--remote-model`.
    #[error("fine-tuning and model choice run on the model tier; call it directly")]
    FinetuneUnavailable,

    /// A delete must wait until spooled history has reached its database.
    #[error("history events are still on their way to the database; retry once it is back")]
    HistoryBehind,

    /// The jobs database (`--jobs`) or the file store cannot be reached; the message is
    /// logged, not shown.
    #[error("the fine-tune job store is unavailable; retry shortly")]
    JobsUnavailable(String),

    /// No configured history sink can answer queries.
    #[error("no history sink that can answer queries is configured")]
    HistoryUnavailable,

    /// An error answer from the model tier (`--remote-model`), passed on as it came.
    #[error("{message}")]
    Remote {
        /// The model tier's status.
        status: StatusCode,
        /// The model tier's `code`.
        code: String,
        /// The model tier's `error` message.
        message: String,
    },

    /// No credentials, or ones that sign no one in (unknown, revoked or expired).
    #[error("{0}")]
    Unauthorized(String),

    /// Signed in, but the request names another user.
    #[error("{0}")]
    Forbidden(String),

    /// The caller's `--rate-limit` bucket is empty.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited {
        /// When the bucket has a token again, rounded up.
        retry_after_secs: u64,
    },

    /// Our fault. The message is logged; the client sees a generic one.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// A 400 with a machine-readable `code` and a message for the client.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 400 `missing_field` for a required field the request lacks.
    pub fn missing(field: &str) -> Self {
        Self::bad_request("missing_field", format!("missing field `{field}`"))
    }

    /// A 503 `jobs_unavailable` for a failure of the job database or file store; the
    /// message goes to the log only.
    pub fn jobs(e: impl std::fmt::Display) -> Self {
        let message = e.to_string();
        tracing::error!("fine-tune job store: {message}");
        Self::JobsUnavailable(message)
    }

    /// A 500 whose message (from `e`) goes to the log only.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        use partialconv::Error as E;
        match self {
            Self::Image(E::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Image(E::MaskSize { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Image(e) if e.is_bad_input() => StatusCode::BAD_REQUEST,
            Self::Image(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound
            | Self::UnknownModel(_)
            | Self::UnknownJob(_)
            | Self::UnknownParent(_) => StatusCode::NOT_FOUND,
            Self::TooMuch { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyJobs { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::JobFinished(_) | Self::JobActive(_) => StatusCode::CONFLICT,
            Self::FinetuneUnavailable => StatusCode::NOT_IMPLEMENTED,
            Self::Overloaded | Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::HistoryUnavailable => StatusCode::NOT_IMPLEMENTED,
            Self::HistoryBehind | Self::JobsUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Remote { status, .. } => *status,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable name for the failure (documented in docs/http-api.md).
    pub fn code(&self) -> &str {
        use partialconv::Error as E;
        match self {
            Self::Image(E::TooLarge { .. }) => "image_too_large",
            Self::Image(E::MaskSize { .. }) => "mask_size_mismatch",
            Self::Image(E::InvalidArgument(_)) => "bad_argument",
            Self::Image(e) if e.is_bad_input() => "bad_image",
            Self::Image(_) => "internal",
            Self::BadRequest { code, .. } => code,
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::NotFound => "not_found",
            Self::UnknownModel(_) => "unknown_model",
            Self::UnknownJob(_) => "unknown_job",
            Self::UnknownParent(_) => "unknown_parent",
            Self::TooMuch { code, .. } | Self::Unprocessable { code, .. } => code,
            Self::TooManyJobs { .. } => "too_many_jobs",
            Self::JobFinished(_) => "job_finished",
            Self::JobActive(_) => "job_active",
            Self::FinetuneUnavailable => "finetune_unavailable",
            Self::Overloaded => "overloaded",
            Self::Timeout(_) => "timeout",
            Self::NotReady(_) => "not_ready",
            Self::HistoryUnavailable => "history_unavailable",
            Self::HistoryBehind => "history_behind",
            Self::JobsUnavailable(_) => "jobs_unavailable",
            Self::Remote { code, .. } => code.as_str(),
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<partialconv::Error> for AppError {
    fn from(e: partialconv::Error) -> Self {
        Self::Image(e)
    }
}

/// What a failed inference job means for the client: the same answers the handlers gave
/// when the pool spoke HTTP itself (503 with `Retry-After` for `overloaded` and
/// `not_ready`, 404 `unknown_model`, the image errors' 4xx, 500 `internal`).
impl From<PoolError> for AppError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Overloaded => Self::Overloaded,
            PoolError::NotReady(why) => Self::NotReady(why),
            PoolError::UnknownModel(id) => Self::UnknownModel(id),
            PoolError::Input(e) => Self::Image(e),
            PoolError::Internal(msg) => Self::Internal(msg),
        }
    }
}

/// An unknown `format` field: 400 `bad_argument`.
impl From<UnknownFormat> for AppError {
    fn from(e: UnknownFormat) -> Self {
        Self::bad_request("bad_argument", e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() && !matches!(self, Self::Remote { .. }) {
            match &self {
                // These 5xx messages are safe and useful to show.
                Self::Overloaded
                | Self::Timeout(_)
                | Self::HistoryUnavailable
                | Self::HistoryBehind
                | Self::JobsUnavailable(_)
                | Self::FinetuneUnavailable => self.to_string(),
                Self::NotReady(_) => "the model is not loaded yet".to_owned(),
                _ => "something went wrong".to_owned(),
            }
        } else {
            self.to_string()
        };
        let body = Json(serde_json::json!({ "error": message, "code": self.code() }));
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        match &self {
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        // The real error rides along for `log_app_errors`, which logs it once.
        response.extensions_mut().insert(Arc::new(self));
        response
    }
}

/// Extractor rejections keep their status but speak the same JSON as every other error.
fn from_rejection(status: StatusCode, text: String, limit_mb: Option<f64>) -> AppError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::BodyTooLarge {
            limit_mb: limit_mb.unwrap_or(0.0),
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::UnsupportedMediaType(text),
        s if s.is_client_error() => AppError::bad_request("bad_request", text),
        _ => AppError::Internal(text),
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        from_rejection(r.status(), r.body_text(), None)
    }
}

impl From<MultipartRejection> for AppError {
    fn from(r: MultipartRejection) -> Self {
        // Missing or non-multipart content type: the client sent the wrong kind of body.
        if r.status() == StatusCode::BAD_REQUEST {
            return AppError::UnsupportedMediaType(r.body_text());
        }
        from_rejection(r.status(), r.body_text(), None)
    }
}

impl From<MultipartError> for AppError {
    fn from(e: MultipartError) -> Self {
        from_rejection(e.status(), e.body_text(), None)
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::bad_request("bad_query", r.body_text())
    }
}

/// Fills in the configured limit, which rejections do not know.
pub fn with_limit(e: AppError, limit_mb: f64) -> AppError {
    match e {
        AppError::BodyTooLarge { .. } => AppError::BodyTooLarge { limit_mb },
        e => e,
    }
}
