//! Thin handlers: parse the request, call [`service`](crate::service), shape the answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, MatchedPath, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use futures_util::Stream;
use history_sink::{HistoryError, HistoryQuery};
use partialconv::{SelfEnsemble, Strategy};
use serde::Deserialize;

use crate::auth::{self, session, Caller, Peer};
use crate::codec::OutputFormat;
use crate::error::{with_limit, AppError};
use crate::finetune::{JobStatus, Upload};
use crate::models::DEFAULT_MODEL;
use crate::service::{self, image_url, InpaintRequest};
use crate::state::AppState;

/// Set by a web tier calling us as its model tier (`--remote-model`): it records the event.
pub const NO_HISTORY_HEADER: &str = "x-partialconv-no-history";

/// A form field's value, trimmed; `None` when absent or blank, which means "the default".
fn given(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

fn parse_strategy(s: Option<&str>) -> Result<Strategy, AppError> {
    match given(s) {
        None => Ok(Strategy::Auto),
        Some(s) => s.parse().map_err(AppError::Image),
    }
}

/// `format`: `None` when absent, for the input's own format.
fn parse_format(s: Option<&str>) -> Result<Option<OutputFormat>, AppError> {
    match given(s) {
        None => Ok(None),
        Some(s) => Ok(Some(s.parse()?)),
    }
}

/// `ensemble`: `single`, `mirror` or `flips`; `None` (the server's) when absent.
fn parse_ensemble(s: Option<&str>) -> Result<Option<SelfEnsemble>, AppError> {
    match given(s) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e: partialconv::Error| AppError::bad_request("bad_argument", e.to_string())),
    }
}

/// `keep_gps`: `true` or `false` (also `1`/`0`), false when absent.
fn parse_bool(s: Option<&str>, field: &str) -> Result<bool, AppError> {
    match given(s) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(AppError::bad_request(
            "bad_argument",
            format!("{field} must be true or false, not `{other}`"),
        )),
    }
}

/// `parent_event_id`: the id of the caller's event this edit continues from.
fn parse_parent(s: Option<&str>) -> Result<Option<uuid::Uuid>, AppError> {
    match given(s) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            AppError::bad_request("bad_argument", "parent_event_id is not an event id (UUID)")
        }),
    }
}

/// `mask_grow`: an integer from −16 to 16 (pixels), 0 when absent.
fn parse_mask_grow(s: Option<&str>) -> Result<i32, AppError> {
    let Some(s) = given(s) else {
        return Ok(0);
    };
    let max = partialconv::imaging::masks::MAX_MASK_GROW as i32;
    s.parse::<i32>()
        .ok()
        .filter(|n| n.abs() <= max)
        .ok_or_else(|| {
            AppError::bad_request(
                "bad_argument",
                format!("mask_grow must be an integer from -{max} to {max} (pixels), not `{s}`"),
            )
        })
}

/// `mask_grow` of a JSON body.
fn checked_mask_grow(n: Option<i64>) -> Result<i32, AppError> {
    parse_mask_grow(n.map(|n| n.to_string()).as_deref())
}

fn text(bytes: Bytes, field: &str) -> Result<String, AppError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| AppError::bad_request("bad_argument", format!("`{field}` is not UTF-8")))
}

/// `POST /api/v1/inpaint`: multipart `image`, `mask` and options, or IOPaint's JSON
/// ([`IopaintRequest`]); answers the image.
pub async fn inpaint(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, AppError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
    if is_json {
        let body = Json::<IopaintRequest>::from_request(req, &state).await;
        return inpaint_iopaint(state, caller, headers, body).await;
    }
    let multipart = Multipart::from_request(req, &state).await;
    inpaint_multipart(state, caller, headers, multipart).await
}

/// The multipart form of `POST /api/v1/inpaint`.
async fn inpaint_multipart(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, AppError> {
    let limit = state.limits.max_upload_mb;
    let mut multipart = multipart?;
    let (mut image, mut mask, mut user_id, mut strategy, mut format, mut model) =
        (None, None, None, None, None, None);
    let (mut mask_grow, mut ensemble, mut keep_gps, mut parent) = (None, None, None, None);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| with_limit(e.into(), limit))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| with_limit(e.into(), limit))?;
        match name.as_str() {
            "image" => image = Some(bytes),
            "mask" => mask = Some(bytes),
            "user_id" => user_id = Some(text(bytes, "user_id")?),
            "strategy" => strategy = Some(text(bytes, "strategy")?),
            "format" => format = Some(text(bytes, "format")?),
            "model" => model = Some(text(bytes, "model")?),
            "mask_grow" => mask_grow = Some(text(bytes, "mask_grow")?),
            "ensemble" => ensemble = Some(text(bytes, "ensemble")?),
            "keep_gps" => keep_gps = Some(text(bytes, "keep_gps")?),
            "parent_event_id" => parent = Some(text(bytes, "parent_event_id")?),
            _ => {} // unknown fields are ignored, for forward compatibility
        }
    }
    let done = service::inpaint(
        &state,
        InpaintRequest {
            image: image.ok_or_else(|| AppError::missing("image"))?,
            mask: mask.ok_or_else(|| AppError::missing("mask"))?,
            user_id: caller.user(user_id)?,
            scope: caller.scope().map(str::to_owned),
            strategy: parse_strategy(strategy.as_deref())?,
            mask_grow: parse_mask_grow(mask_grow.as_deref())?,
            format: parse_format(format.as_deref())?,
            ensemble: parse_ensemble(ensemble.as_deref())?,
            keep_gps: parse_bool(keep_gps.as_deref(), "keep_gps")?,
            parent_event_id: parse_parent(parent.as_deref())?,
            model,
            keep_master: true,
            record: !headers.contains_key(NO_HISTORY_HEADER),
        },
    )
    .await?;
    Ok(image_response(&done))
}

/// The result's bytes, with how it was made in `x-` headers.
fn image_response(done: &service::Inpainted) -> Response {
    let out = &done.output;
    let mut extra = vec![
        ("x-event-id", done.event_id.to_string()),
        ("x-inference-ms", format!("{:.1}", out.inference_ms)),
        ("x-decode-ms", format!("{:.1}", out.decode_ms)),
        ("x-encode-ms", format!("{:.1}", out.encode_ms)),
        ("x-batch-size", out.batch_size.to_string()),
        ("x-strategy", out.strategy.clone()),
        ("x-hole-ratio", format!("{:.6}", out.hole_ratio)),
        ("x-ensemble", out.ensemble.name().to_owned()),
    ];
    if let Some(key) = &done.result_key {
        extra.push(("x-result-url", format!("/images/{key}")));
    }
    if let Some(key) = &done.master_key {
        extra.push(("x-master-url", format!("/images/{key}")));
    }
    if let Some(parent) = done.parent_event_id {
        extra.push(("x-parent-event-id", parent.to_string()));
    }
    let mut response = (
        [
            (header::CONTENT_TYPE, out.content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        out.bytes.clone(),
    )
        .into_response();
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), v);
        }
    }
    response
}

/// IOPaint's request (`iopaint/schema.py`, `InpaintRequest`), as its web client and scripts
/// send it: `image` and `mask` as data URLs or raw base64. Fields of IOPaint's diffusion
/// models (prompts, samplers, seeds, ...) are ignored; ours may be added.
#[derive(Debug, Deserialize)]
pub struct IopaintRequest {
    image: Option<String>,
    mask: Option<String>,
    /// `Original`, `Resize` or `Crop`; absent: our `auto`.
    hd_strategy: Option<String>,
    /// `Resize`'s longer side (IOPaint's default 1280).
    hd_strategy_resize_limit: Option<u32>,
    user_id: Option<String>,
    model: Option<String>,
    /// Ours: pixels to grow (or shrink) the mask by, −16 to 16.
    mask_grow: Option<i64>,
    /// Default: the input's own format (as IOPaint answers), PNG for anything but JPEG.
    format: Option<String>,
    /// Ours: `single`, `mirror` or `flips`.
    ensemble: Option<String>,
    /// Ours: keep the photo's GPS position.
    #[serde(default)]
    keep_gps: bool,
    /// Ours: the caller's event this edit continues from.
    parent_event_id: Option<String>,
}

/// IOPaint's `hd_strategy` in our terms.
fn iopaint_strategy(name: Option<&str>, resize_limit: Option<u32>) -> Result<Strategy, AppError> {
    match name.map(str::trim) {
        None | Some("") => Ok(Strategy::Auto),
        Some("Original") => Ok(Strategy::Original),
        Some("Resize") => Ok(Strategy::Resize {
            long_side: resize_limit.unwrap_or(1280),
        }),
        Some("Crop") => Ok(Strategy::Crop),
        Some(other) => Err(AppError::bad_request(
            "bad_argument",
            format!("unknown hd_strategy `{other}`: expected Original, Resize or Crop"),
        )),
    }
}

/// An image field of IOPaint's JSON: a `data:...;base64,` URL or bare base64.
fn decode_base64_field(value: &str, field: &str) -> Result<Bytes, AppError> {
    if value.starts_with("data:") {
        return decode_data_url(value, field);
    }
    let payload: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(payload.as_bytes())
        .map(Bytes::from)
        .map_err(|e| AppError::bad_request("bad_base64", format!("`{field}`: bad base64 ({e})")))
}

/// The JSON form of `POST /api/v1/inpaint`: IOPaint's shape, answered with the image bytes.
async fn inpaint_iopaint(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<IopaintRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(req) = body.map_err(|e| with_limit(e.into(), state.limits.max_upload_mb))?;
    let image = decode_base64_field(
        req.image
            .as_deref()
            .ok_or_else(|| AppError::missing("image"))?,
        "image",
    )?;
    let mask = decode_base64_field(
        req.mask
            .as_deref()
            .ok_or_else(|| AppError::missing("mask"))?,
        "mask",
    )?;
    let done = service::inpaint(
        &state,
        InpaintRequest {
            image,
            mask,
            user_id: caller.user(req.user_id)?,
            scope: caller.scope().map(str::to_owned),
            strategy: iopaint_strategy(req.hd_strategy.as_deref(), req.hd_strategy_resize_limit)?,
            mask_grow: checked_mask_grow(req.mask_grow)?,
            format: parse_format(req.format.as_deref())?,
            ensemble: parse_ensemble(req.ensemble.as_deref())?,
            keep_gps: req.keep_gps,
            parent_event_id: parse_parent(req.parent_event_id.as_deref())?,
            model: req.model,
            keep_master: false,
            record: !headers.contains_key(NO_HISTORY_HEADER),
        },
    )
    .await?;
    Ok(image_response(&done))
}

/// The JSON body of `POST /reconstruct`: data URLs and options.
#[derive(Debug, Deserialize)]
pub struct ReconstructRequest {
    original: Option<String>,
    mask: Option<String>,
    user_id: Option<String>,
    strategy: Option<String>,
    format: Option<String>,
    model: Option<String>,
    mask_grow: Option<i64>,
    ensemble: Option<String>,
}

/// `data:[<type>][;base64],<payload>` → bytes. Only base64 payloads carry images.
fn decode_data_url(url: &str, field: &str) -> Result<Bytes, AppError> {
    let bad = |why: &str| AppError::bad_request("bad_data_url", format!("`{field}`: {why}"));
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| bad("expected a data: URL"))?;
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| bad("no `,` in the data URL"))?;
    if !meta.ends_with(";base64") {
        return Err(bad("expected a ;base64 data URL"));
    }
    let payload: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(payload.as_bytes())
        .map(Bytes::from)
        .map_err(|e| bad(&format!("bad base64 ({e})")))
}

/// The seed's contract, kept for its clients. Unlike the seed, every request gets its own
/// event id and result key, the aspect ratio is kept, and the result is composited.
pub async fn reconstruct(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<ReconstructRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let Json(req) = body.map_err(|e| with_limit(e.into(), state.limits.max_upload_mb))?;
    let original = req.original.ok_or_else(|| AppError::missing("original"))?;
    let mask = req.mask.ok_or_else(|| AppError::missing("mask"))?;
    // The seed's clients read PNG unless they ask otherwise.
    let format = parse_format(req.format.as_deref())?.unwrap_or(OutputFormat::Png);
    let done = service::inpaint(
        &state,
        InpaintRequest {
            image: decode_data_url(&original, "original")?,
            mask: decode_data_url(&mask, "mask")?,
            user_id: caller.user(req.user_id)?,
            scope: caller.scope().map(str::to_owned),
            strategy: parse_strategy(req.strategy.as_deref())?,
            mask_grow: checked_mask_grow(req.mask_grow)?,
            format: Some(format),
            ensemble: parse_ensemble(req.ensemble.as_deref())?,
            keep_gps: false,
            parent_event_id: None,
            keep_master: false,
            model: req.model,
            record: true,
        },
    )
    .await?;
    let out = &done.output;
    let result_url = match &done.result_key {
        Some(key) => format!("/images/{key}"),
        // No image store (`--images none`): the result travels in the answer.
        None => format!(
            "data:{};base64,{}",
            out.content_type,
            base64::engine::general_purpose::STANDARD.encode(&out.bytes)
        ),
    };
    Ok(Json(serde_json::json!({
        "result_url": result_url,
        "event_id": done.event_id,
        "width": out.width,
        "height": out.height,
        "strategy": out.strategy,
        "inference_ms": out.inference_ms,
    })))
}

/// `GET /images/{key}`: a kept image, cacheable forever (by the browser alone when users
/// sign in).
pub async fn image(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, AppError> {
    let store = state.images.as_ref().ok_or(AppError::NotFound)?;
    let cache = match &caller {
        Caller::Open => "public, max-age=31536000, immutable",
        Caller::User(me) => {
            // Someone else's image is as absent as one that does not exist.
            let owners = state.owners.as_ref().ok_or(AppError::NotFound)?;
            if !owners.owns(me, &key).await.map_err(AppError::internal)? {
                return Err(AppError::NotFound);
            }
            "private, max-age=31536000, immutable"
        }
    };
    match store.get(&key).await {
        Ok(Some((bytes, content_type))) => Ok((
            [
                (header::CONTENT_TYPE, content_type),
                // Content-addressed: a key's bytes never change.
                (header::CACHE_CONTROL, cache.to_owned()),
            ],
            bytes,
        )
            .into_response()),
        Ok(None) => Err(AppError::NotFound),
        Err(HistoryError::InvalidKey(_)) => Err(AppError::bad_request(
            "bad_key",
            "image keys are <sha256 hex>.<png|jpg|webp>",
        )),
        Err(e) => Err(AppError::internal(e)),
    }
}

/// Query of `GET /api/v1/history`.
#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    user_id: Option<String>,
    limit: Option<u32>,
    before: Option<String>,
}

/// `GET /api/v1/history`: a user's events, newest first, paged with `before`.
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let Query(p) = params?;
    let sink = state
        .history
        .as_ref()
        .filter(|s| s.can_query())
        .ok_or(AppError::HistoryUnavailable)?;
    let user_id = caller
        .user(p.user_id)?
        .ok_or_else(|| AppError::missing("user_id"))?;
    let before = p
        .before
        .filter(|b| !b.is_empty())
        .map(|b| {
            b.parse().map_err(|_| {
                AppError::bad_request("bad_argument", "`before` is not an event id (UUID)")
            })
        })
        .transpose()?;
    let query = HistoryQuery {
        limit: p.limit.unwrap_or(20),
        before,
        ..HistoryQuery::for_user(user_id)
    };
    let events = sink.query(&query).await.map_err(|e| match e {
        HistoryError::UnknownCursor(_) => AppError::bad_request("bad_argument", e.to_string()),
        e => AppError::internal(e),
    })?;
    let next_before = (events.len() as u32 == query.effective_limit())
        .then(|| events.last().map(|e| e.event_id))
        .flatten();
    let events: Vec<serde_json::Value> = events
        .into_iter()
        .map(|ev| {
            let urls = [
                (
                    "original_url",
                    ev.original_uri.as_deref().and_then(image_url),
                ),
                ("mask_url", ev.mask_uri.as_deref().and_then(image_url)),
                ("result_url", ev.result_uri.as_deref().and_then(image_url)),
            ];
            let mut v = serde_json::to_value(&ev).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                for (k, url) in urls {
                    if let Some(url) = url {
                        obj.insert(k.to_owned(), url.into());
                    }
                }
            }
            v
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "events": events, "next_before": next_before }),
    ))
}

/// `DELETE /api/v1/history`: deletes the caller's history events and the images that no one
/// else owns. A history that is only a log (Kafka) cannot delete; the answer says so.
pub async fn delete_history(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let Query(p) = params?;
    let user = caller
        .user(p.user_id)?
        .ok_or_else(|| AppError::missing("user_id"))?;
    let events = match state.history.as_ref().filter(|h| h.can_query()) {
        Some(h) => Some(h.delete_user(&user).await.map_err(|e| match e {
            HistoryError::FlushTimeout(_) => AppError::HistoryBehind,
            e => AppError::internal(e),
        })?),
        None => None,
    };
    let mut images = 0;
    if let (Some(owners), Some(store)) = (&state.owners, &state.images) {
        for key in owners
            .remove_user(&user)
            .await
            .map_err(AppError::internal)?
        {
            match store.delete(&key).await {
                Ok(()) => images += 1,
                Err(e) => tracing::error!("deleting image {key}: {e}"),
            }
        }
    }
    Ok(Json(serde_json::json!({
        "user_id": user,
        "events_deleted": events,
        "images_deleted": images,
    })))
}

/// Multipart: `images` (repeatable; photos or zips of photos), `user_id`, `base_model`,
/// `name`, `steps`. Limits and decoding are checked before the job is queued.
pub async fn finetune_submit(
    State(state): State<AppState>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let jobs = state.finetune()?;
    let _upload = jobs.admit_upload()?;
    let limit_mb = state.limits.finetune_max_bytes as f64 / (1024.0 * 1024.0);
    let max_images = jobs.settings().max_images;
    let mut multipart = multipart?;
    let mut upload = Upload::default();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| with_limit(e.into(), limit_mb))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let bytes = field
            .bytes()
            .await
            .map_err(|e| with_limit(e.into(), limit_mb))?;
        match name.as_str() {
            "images" | "images[]" => {
                let n = upload.files.len();
                upload
                    .files
                    .push((file_name.unwrap_or_else(|| format!("images[{n}]")), bytes));
                if upload.files.len() > max_images {
                    return Err(AppError::TooMuch {
                        code: "too_many_images",
                        message: format!("a fine-tune job takes at most {max_images} photos"),
                    });
                }
            }
            "user_id" => upload.user_id = Some(text(bytes, "user_id")?),
            "base_model" => upload.base_model = Some(text(bytes, "base_model")?),
            "name" => upload.name = Some(text(bytes, "name")?),
            "steps" => upload.steps = Some(text(bytes, "steps")?),
            _ => {}
        }
    }
    upload.user_id = caller.user(upload.user_id.take())?;
    let prepared = jobs.prepare(upload, caller.scope()).await?;
    let status = jobs.submit(prepared).await?;
    let id = status.job_id;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "job_id": id,
            "state": status.state,
            "status_url": format!("/api/v1/finetune/{id}"),
            "events_url": format!("/api/v1/finetune/{id}/events"),
        })),
    ))
}

/// Query of `GET /api/v1/finetune`.
#[derive(Debug, Deserialize)]
pub struct JobsParams {
    user_id: Option<String>,
}

/// `GET /api/v1/finetune`: every job, or one user's.
pub async fn finetune_list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<JobsParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let Query(p) = params?;
    let user = caller.user(p.user_id)?;
    let jobs = state.finetune()?.list(user.as_deref()).await?;
    Ok(Json(serde_json::json!({ "jobs": jobs })))
}

/// `GET /api/v1/finetune/{job_id}`: a job's status.
pub async fn finetune_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, AppError> {
    Ok(Json(state.finetune()?.status(&id, caller.scope()).await?))
}

/// How long `DELETE` waits for a running job to save its checkpoint and stop.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// `DELETE /api/v1/finetune/{job_id}`: cancels a job; 200 once over, 202 while it stops.
pub async fn finetune_cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobStatus>), AppError> {
    let status = state
        .finetune()?
        .cancel(&id, caller.scope(), CANCEL_WAIT)
        .await?;
    // 202 while a long step is still finishing; the status or the events say when it has.
    let code = if status.state.is_over() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(status)))
}

/// `status` events with the job's JSON status, at every change, ending with the final one.
pub async fn finetune_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let (rx, closing) = state.finetune()?.subscribe(&id, caller.scope()).await?;
    let stream = futures_util::stream::unfold(
        (rx, closing, true, false),
        |(mut rx, mut closing, first, over)| async move {
            if over || *closing.borrow() {
                return None;
            }
            if !first {
                tokio::select! {
                    changed = rx.changed() => changed.ok()?,
                    _ = closing.wait_for(|c| *c) => return None,
                }
            }
            let status = rx.borrow_and_update().clone();
            let over = status.state.is_over();
            let event = Event::default()
                .event("status")
                .json_data(&status)
                .unwrap_or_else(|_| Event::default().event("status"));
            Some((Ok(event), (rx, closing, false, over)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The server's model and every finished job's that the caller may use (its own, when
/// signed in).
pub async fn models(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, AppError> {
    let jobs = state.finetune()?;
    let mut list = Vec::new();
    let info = state.backend.model_info().await;
    list.push(serde_json::json!({
        "id": DEFAULT_MODEL,
        "kind": "default",
        "name": info.as_ref().map(|i| i.model_id.clone()),
        "base": null,
        "model_version": info.as_ref().map(|i| i.model_version.clone()),
        "created_at": null,
        "data": info.as_ref().map(|i| i.config["training"].clone()),
        "validation": null,
        "loaded": info.is_some(),
    }));
    let loaded = state.models.loaded();
    for job in jobs
        .finished()
        .await?
        .into_iter()
        .filter(|j| caller.may_see(&j.user_id))
    {
        list.push(serde_json::json!({
            "id": job.job_id,
            "kind": "finetuned",
            "name": job.name,
            "base": job.base_model,
            "created_at": job.finished_at,
            "user_id": job.user_id,
            "steps": job.total_steps,
            "data": job.images,
            "validation": job.validation,
            "loaded": loaded.contains(&job.job_id),
        }));
    }
    Ok(Json(serde_json::json!({ "models": list })))
}

/// `DELETE /api/v1/models/{id}`: deletes one of the caller's fine-tuned models (a job that
/// is over), with its photos and checkpoints.
pub async fn delete_model(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    let status = state.finetune()?.delete(&id, caller.scope()).await?;
    Ok(Json(
        serde_json::json!({ "deleted": status.job_id, "state": status.state }),
    ))
}

/// `GET /api/v1/session`: how this server signs people in, and who the request is from
/// (`null` when no one). Public, so that the page knows whether to ask for a token.
pub async fn session_status(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let user = match state
        .auth
        .identify(&axum::http::Method::GET, &headers, peer)
    {
        Ok(Caller::User(u)) => Some(u),
        _ => None,
    };
    Json(serde_json::json!({ "auth": state.auth.mode_name(), "user": user }))
}

/// The body of `POST /api/v1/session`.
#[derive(Debug, Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /api/v1/session`: exchanges an API token for a session cookie (`--auth tokens`).
pub async fn sign_in(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, AppError> {
    if state.auth.mode_name() != "tokens" {
        return Err(AppError::bad_request(
            "no_sign_in",
            format!(
                "this server signs no one in here (--auth {})",
                state.auth.mode_name()
            ),
        ));
    }
    // Login CSRF: another site must not sign the browser in as someone else.
    if headers.contains_key(header::ORIGIN) && !auth::same_origin(&headers) {
        return Err(AppError::Forbidden(
            "a cross-site sign-in is refused".into(),
        ));
    }
    let Json(SignIn { token }) = body?;
    let (signed_in, value) = state
        .auth
        .sign_in(token.trim())
        .ok_or_else(|| AppError::Unauthorized("the token is unknown, revoked or expired".into()))?;
    let secure = state.auth.is_https(&headers, peer) || !auth::is_loopback_host(&headers);
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session::COOKIE,
        session::LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let body = Json(serde_json::json!({
        "user": signed_in.user,
        "expires": signed_in.expires.to_rfc3339(),
    }));
    Ok(([(header::SET_COOKIE, cookie)], body).into_response())
}

/// `DELETE /api/v1/session`: signs the browser out (the cookie is cleared).
pub async fn sign_out() -> Response {
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        session::COOKIE
    );
    (
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({ "signed_out": true })),
    )
        .into_response()
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the model is loaded (503 until then), with the history sinks' state.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    let info = state.backend.readiness().await?;
    let mut body = serde_json::json!({ "status": "ready", "model": info });
    // Only sinks that spool have a delivery state worth reporting (SQLite writes directly).
    let spools = state
        .history
        .as_ref()
        .map(|h| h.spool_stats())
        .unwrap_or_default();
    if !spools.is_empty() {
        body["history"] = crate::history::readiness(&spools);
    }
    Ok(Json(body))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (depth, capacity, workers) = state.backend.load();
    let mut text = state.metrics.render(depth, capacity, workers);
    if let Some(sink) = &state.history {
        crate::metrics::render_spools(&mut text, &sink.spool_stats());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `GET /api/v1/openapi.json`: the API description.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../static/openapi.json"),
    )
}

/// Any other path: 404 in the usual JSON.
pub async fn not_found() -> AppError {
    AppError::NotFound
}

/// A known path with another method: 405 in the usual JSON.
pub async fn method_not_allowed() -> Response {
    let body = Json(serde_json::json!({
        "error": "method not allowed",
        "code": "method_not_allowed",
    }));
    (StatusCode::METHOD_NOT_ALLOWED, body).into_response()
}

/// Refuses inference requests beyond `AppState::admission` before their bodies are read, so
/// a flood of uploads cannot exhaust memory while waiting for a queue slot.
pub async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.admission.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            state
                .metrics
                .rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            AppError::Overloaded.into_response()
        }
    }
}

/// Counts every answer for `/metrics` and logs the real cause of errors, which the client
/// does not see.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    if let Some(err) = response.extensions().get::<Arc<AppError>>() {
        if status.is_server_error() {
            tracing::error!(%method, %route, %status, "{err}");
        } else {
            tracing::info!(%method, %route, %status, "{err}");
        }
    }
    state.metrics.record_request(
        method.as_str(),
        &route,
        status.as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Middleware of every route that is not public: finds the [`Caller`] (401 without one),
/// applies the rate limit (429), and hands the caller to the handler.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = auth::peer(&req);
    let auth = &state.auth;
    let caller = match auth.identify(req.method(), req.headers(), peer) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = auth.admit(&caller, auth.client_ip(req.headers(), peer)) {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Middleware of `/metrics`: public with `--public-metrics` (or `--auth none`), else signed
/// in like the rest of the API.
pub async fn metrics_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.auth.public_metrics {
        return next.run(req).await;
    }
    authenticate(State(state), req, next).await
}
