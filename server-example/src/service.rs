//! The inpainting use case shared by `/api/v1/inpaint` and `/reconstruct`: check, infer, keep
//! the images, record the event.

use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use history_sink::{EventKind, HistoryEvent, StoredImage};
use image::metadata::Orientation;
use image::{ImageDecoder, ImageReader};
use partialconv::{SelfEnsemble, Strategy};
use uuid::Uuid;

use crate::codec::OutputFormat;
use crate::error::AppError;
use crate::identity::{check_user_id, ANONYMOUS};
use crate::models::{ModelKey, ModelRegistry};
use crate::pool::{JobInput, JobOutput};
use crate::state::AppState;

/// One inpainting request, from either endpoint.
pub struct InpaintRequest {
    /// The image, as uploaded.
    pub image: Bytes,
    /// The mask, as uploaded.
    pub mask: Bytes,
    /// Whose request it is: the signed-in user, or with `--auth none` the `user_id` field.
    pub user_id: Option<String>,
    /// Whose fine-tuned models the request may use: `None` for anyone's (`--auth none`).
    pub scope: Option<String>,
    /// How to fill.
    pub strategy: Strategy,
    /// `mask_grow`: pixels to grow (or, negative, shrink) the mask by; checked.
    pub mask_grow: i32,
    /// How to encode the result; `None`: in the input's own format.
    pub format: Option<OutputFormat>,
    /// The self-ensemble; `None`: the server's.
    pub ensemble: Option<SelfEnsemble>,
    /// Keep the photo's GPS position in the result's EXIF.
    pub keep_gps: bool,
    /// The caller's event whose result this request edits further.
    pub parent_event_id: Option<Uuid>,
    /// Keep a lossless master of a lossy result, for a client that edits further (the
    /// form's callers); IOPaint's clients and `/reconstruct` never ask for one.
    pub keep_master: bool,
    /// A model id from `GET /api/v1/models`; `None` for the server's own.
    pub model: Option<String>,
    /// False for calls from a web tier, which records the event itself.
    pub record: bool,
}

/// A served request: the result and the event it was recorded as.
pub struct Inpainted {
    /// The result and how it was made.
    pub output: JobOutput,
    /// The history event's id (also sent when no history is kept).
    pub event_id: Uuid,
    /// Where the result is kept (`/images/{key}`), when an image store is configured.
    pub result_key: Option<String>,
    /// Where its lossless master is kept: the result's own key for a PNG.
    pub master_key: Option<String>,
    /// The parent recorded in the event, when `parent_event_id` was one of the caller's.
    pub parent_event_id: Option<Uuid>,
}

/// Image size from the header alone (EXIF rotation applied), so that bad input, decompression
/// bombs and mismatched masks are refused before any pixel is decoded or any job queued.
pub fn probe(bytes: &[u8], what: &str, max_pixels: u64) -> Result<(u32, u32), AppError> {
    if bytes.is_empty() {
        return Err(AppError::bad_request(
            "empty_field",
            format!("field `{what}` is empty"),
        ));
    }
    let img_err = |source| {
        AppError::Image(partialconv::Error::Image {
            what: what.to_owned(),
            source,
        })
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(AppError::internal)?;
    if reader.format().is_none() {
        return Err(AppError::bad_request(
            "bad_image",
            format!("{what}: not a PNG, JPEG or WebP image"),
        ));
    }
    let mut decoder = reader.into_decoder().map_err(img_err)?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > max_pixels {
        return Err(AppError::Image(partialconv::Error::TooLarge {
            what: what.to_owned(),
            width: w,
            height: h,
            limit: max_pixels,
        }));
    }
    let rotated = matches!(
        decoder.orientation().map_err(img_err)?,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    Ok(if rotated { (h, w) } else { (w, h) })
}

fn content_type_of(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        Ok(image::ImageFormat::WebP) => "image/webp",
        _ => "image/png",
    }
}

/// Checks the request, runs it, keeps the images and records the event.
pub async fn inpaint(state: &AppState, req: InpaintRequest) -> Result<Inpainted, AppError> {
    let started = Instant::now();
    let max_pixels = state.limits.max_pixels;
    let dimensions = probe(&req.image, "image", max_pixels)?;
    let mask_dimensions = probe(&req.mask, "mask", max_pixels)?;
    if dimensions != mask_dimensions {
        return Err(AppError::Image(partialconv::Error::MaskSize {
            image_w: dimensions.0,
            image_h: dimensions.1,
            mask_w: mask_dimensions.0,
            mask_h: mask_dimensions.1,
        }));
    }
    let user_id = check_user_id(req.user_id)?;
    let model = resolve_model(state, req.model.as_deref(), req.scope.as_deref()).await?;
    let parent = match req.parent_event_id {
        // A web tier has checked the parent before calling its model tier.
        Some(id) if req.record => check_parent(state, id, user_id.as_deref()).await?,
        other => other,
    };
    let input = JobInput {
        image: req.image.clone(),
        mask: req.mask.clone(),
        strategy: req.strategy,
        mask_grow: req.mask_grow,
        format: req
            .format
            .unwrap_or_else(|| OutputFormat::of_input(&req.image)),
        ensemble: req.ensemble,
        keep_gps: req.keep_gps,
        master: req.keep_master && req.record && state.images.is_some(),
        parent_event_id: parent,
        dimensions,
        model,
        user: user_id.clone(),
    };
    let timeout = state.limits.timeout;
    let output = tokio::time::timeout(timeout, state.backend.infer(input))
        .await
        .map_err(|_| {
            state.metrics.timed_out.fetch_add(1, Ordering::Relaxed);
            AppError::Timeout(timeout.as_secs())
        })??;

    let mut event = HistoryEvent::inpaint(user_id.as_deref().unwrap_or(ANONYMOUS));
    let event_id = event.event_id;
    if !req.record {
        return Ok(Inpainted {
            output,
            event_id,
            result_key: None,
            master_key: None,
            parent_event_id: parent,
        });
    }
    let stored = match &state.images {
        Some(store) => {
            let put = |bytes: Bytes, ct: &'static str| async move {
                store
                    .put(bytes, ct)
                    .await
                    .map_err(|e| tracing::warn!("storing an image failed: {e}"))
                    .ok()
            };
            let master = async {
                match &output.master {
                    Some(bytes) => put(bytes.clone(), "image/png").await,
                    None => None,
                }
            };
            let (original, mask, result, master) = tokio::join!(
                put(req.image.clone(), content_type_of(&req.image)),
                put(req.mask.clone(), content_type_of(&req.mask)),
                put(output.bytes.clone(), output.content_type),
                master,
            );
            Some((original, mask, result, master))
        }
        None => None,
    };
    if let (Some(owners), Some(user), Some((o, m, r, master))) = (&state.owners, &user_id, &stored)
    {
        let keys: Vec<&str> = [o, m, r, master]
            .into_iter()
            .flatten()
            .map(|s| s.key.as_str())
            .collect();
        if let Err(e) = owners.add(user, &keys).await {
            tracing::error!("recording who owns the images failed: {e}");
        }
    }
    let uri = |s: &Option<StoredImage>| s.as_ref().map(|s| s.uri.clone());
    let result_key = stored
        .as_ref()
        .and_then(|(_, _, r, _)| r.as_ref().map(|r| r.key.clone()));
    let master_key = match &stored {
        Some((_, _, _, Some(master))) => Some(master.key.clone()),
        // A PNG is its own master.
        _ if output.content_type == OutputFormat::Png.content_type() => result_key.clone(),
        _ => None,
    };
    if let Some(sink) = &state.history {
        if let Some((o, m, r, _)) = &stored {
            event = event.with_images(uri(o), uri(m), uri(r));
        }
        if let Some(parent) = parent {
            event = event.with_parent(parent);
        }
        event = event
            .with_dimensions(output.width, output.height)
            .with_hole_ratio(output.hole_ratio.clamp(0.0, 1.0))
            .with_strategy(output.strategy.clone())
            .with_latency_ms(started.elapsed().as_millis() as u64);
        if let Some(info) = state.backend.model_info().await {
            let id = match model {
                ModelKey::Default => info.model_id,
                tuned => tuned.to_string(),
            };
            event = event
                .with_model(id, info.model_version)
                .with_device(info.device);
        }
        crate::history::record(sink, event, &state.metrics).await;
    }
    Ok(Inpainted {
        output,
        event_id,
        result_key,
        master_key,
        parent_event_id: parent,
    })
}

/// The parent to record for `parent_event_id`: the id, when it is one of the caller's
/// inpainting events. Another user's event is as unknown as a missing one (404), so ids
/// cannot be probed. When the history cannot answer (none kept, Kafka only, the database
/// down) the edit goes on without the link: the photo matters more than its lineage, and an
/// unchecked link is never recorded.
async fn check_parent(
    state: &AppState,
    id: Uuid,
    user: Option<&str>,
) -> Result<Option<Uuid>, AppError> {
    let Some(sink) = state.history.as_ref().filter(|h| h.can_query()) else {
        tracing::info!(%id, "parent_event_id not recorded: this server's history cannot be read");
        return Ok(None);
    };
    match sink.get(id).await {
        Ok(Some(ev))
            if ev.user_id == user.unwrap_or(ANONYMOUS) && ev.kind == EventKind::Inpaint =>
        {
            Ok(Some(id))
        }
        Ok(_) => Err(AppError::UnknownParent(id.to_string())),
        Err(e) => {
            tracing::warn!(%id, "parent_event_id not recorded: reading the history failed: {e}");
            Ok(None)
        }
    }
}

/// The model a request names; another user's fine-tuned model is as unknown as one that does
/// not exist. A fine-tuned model is copied here from the job store before the request is
/// queued. A web tier (`--remote-model`) has no models: it passes any well-formed id on, and
/// the model tier answers 404 for unknown ones.
async fn resolve_model(
    state: &AppState,
    id: Option<&str>,
    scope: Option<&str>,
) -> Result<ModelKey, AppError> {
    let key = ModelRegistry::parse(id)?;
    if let (ModelKey::Tuned(uuid), Some(jobs)) = (key, &state.finetune) {
        jobs.usable_model(uuid, scope).await?;
    }
    Ok(key)
}

/// `/images/{key}` for a store URI (`file:///…/<key>` or `s3://bucket/…/<key>`).
pub fn image_url(uri: &str) -> Option<String> {
    let key = uri.rsplit('/').next()?;
    history_sink::image_store::validate_key(key).ok()?;
    Some(format!("/images/{key}"))
}
