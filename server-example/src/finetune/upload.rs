//! What a `POST /api/v1/finetune` brings: its fields, zips unpacked within the limits, each
//! photo checked, and the split into training and held-out photos.

use std::io::{Cursor, Read};

use bytes::Bytes;

use super::settings::FinetuneSettings;
use crate::error::AppError;
use crate::identity;
use crate::models::{ModelKey, ModelRegistry};

/// Share of the usable photos held out for validation.
pub const HOLDOUT_FRACTION: f64 = 0.15;

/// Longest job `name`, in characters.
pub const MAX_NAME_LEN: usize = 100;

/// One photo of an upload, checked and ready to be written.
pub struct Photo {
    pub(super) bytes: Bytes,
    pub(super) ext: &'static str,
}

/// A checked upload: what [`FineTunes::submit`](super::FineTunes::submit) needs.
pub struct Prepared {
    /// Who the job is for (checked; `anonymous` when none).
    pub user_id: String,
    /// The user's label for the job.
    pub name: Option<String>,
    /// The model to start from.
    pub base: ModelKey,
    /// Training steps.
    pub steps: u64,
    pub(super) photos: Vec<Photo>,
    pub(super) received: usize,
    pub(super) skipped: usize,
}

/// The raw fields of a `POST /api/v1/finetune`.
#[derive(Default)]
pub struct Upload {
    /// (file name, bytes): photos, or zips of photos.
    pub files: Vec<(String, Bytes)>,
    /// The `user_id` field, unchecked.
    pub user_id: Option<String>,
    /// The `base_model` field: `default` or a finished job's id.
    pub base_model: Option<String>,
    /// The `name` field.
    pub name: Option<String>,
    /// The `steps` field, unparsed.
    pub steps: Option<String>,
}

fn too_many_images(limit: usize) -> AppError {
    AppError::TooMuch {
        code: "too_many_images",
        message: format!("a fine-tune job takes at most {limit} photos"),
    }
}

fn too_much_data(limit: usize) -> AppError {
    AppError::TooMuch {
        code: "too_much_data",
        message: format!(
            "the photos of a fine-tune job may total at most {:.0} MB",
            limit as f64 / (1024.0 * 1024.0)
        ),
    }
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Unpacks zips, counting what they unpack to against the limits (a zip bomb stops at the
/// byte limit), and leaves other files as they are.
fn expand(
    files: Vec<(String, Bytes)>,
    s: &FinetuneSettings,
) -> Result<Vec<(String, Bytes)>, AppError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for (name, bytes) in files {
        if !is_zip(&bytes) {
            total += bytes.len();
            out.push((name, bytes));
        } else {
            let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
                AppError::bad_request("bad_zip", format!("{name}: not a readable zip ({e})"))
            })?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| {
                    AppError::bad_request("bad_zip", format!("{name}: entry {i}: {e}"))
                })?;
                let entry_name = entry.name().to_owned();
                let base = entry_name.rsplit('/').next().unwrap_or_default();
                // Folders, and the resource forks and dotfiles that archivers add.
                if entry.is_dir()
                    || base.is_empty()
                    || base.starts_with('.')
                    || entry_name.starts_with("__MACOSX/")
                {
                    continue;
                }
                let room = s.max_bytes.saturating_sub(total);
                let mut buf = Vec::new();
                (&mut entry)
                    .take(room as u64 + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| {
                        AppError::bad_request("bad_zip", format!("{name}: {entry_name}: {e}"))
                    })?;
                if buf.len() > room {
                    return Err(too_much_data(s.max_bytes));
                }
                total += buf.len();
                out.push((format!("{name}/{entry_name}"), buf.into()));
                if out.len() > s.max_images {
                    return Err(too_many_images(s.max_images));
                }
            }
        }
        if total > s.max_bytes {
            return Err(too_much_data(s.max_bytes));
        }
        if out.len() > s.max_images {
            return Err(too_many_images(s.max_images));
        }
    }
    Ok(out)
}

/// Checks an upload (blocking: it decodes every photo): limits, readability, fields.
pub fn prepare(upload: Upload, s: &FinetuneSettings) -> Result<Prepared, AppError> {
    let steps = match upload
        .steps
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => s.default_steps,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=s.max_steps).contains(&n) => n,
            _ => {
                return Err(AppError::bad_request(
                    "bad_argument",
                    format!("`steps` must be a whole number from 1 to {}", s.max_steps),
                ))
            }
        },
    };
    let name = match upload
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
    {
        Some(n) if n.chars().count() > MAX_NAME_LEN || n.chars().any(char::is_control) => {
            return Err(AppError::bad_request(
                "bad_argument",
                format!("`name` must be at most {MAX_NAME_LEN} characters of printable text"),
            ))
        }
        n => n,
    };
    let user_id = identity::user_or_anonymous(upload.user_id)?;
    let base = ModelRegistry::parse(upload.base_model.as_deref())?;
    if upload.files.is_empty() {
        return Err(AppError::missing("images"));
    }
    let files = expand(upload.files, s)?;
    let received = files.len();
    let mut photos = Vec::new();
    let mut skipped = 0;
    for (name, bytes) in files {
        match partialconv::io::decode_image(&bytes, &name, Some(s.max_pixels)) {
            Ok(_) => {
                let ext = match image::guess_format(&bytes) {
                    Ok(image::ImageFormat::Jpeg) => "jpg",
                    Ok(image::ImageFormat::WebP) => "webp",
                    _ => "png",
                };
                photos.push(Photo { bytes, ext });
            }
            // One photo past the pixel limit refuses the job, as it would a single inpaint.
            Err(e @ partialconv::Error::TooLarge { .. }) => return Err(AppError::Image(e)),
            Err(_) => skipped += 1,
        }
    }
    if photos.len() < 2 {
        return Err(AppError::Unprocessable {
            code: "not_enough_images",
            message: format!(
                "{} usable photo(s) of {received} received ({skipped} unreadable); a job needs at least 2",
                photos.len()
            ),
        });
    }
    Ok(Prepared {
        user_id,
        name,
        base,
        steps,
        photos,
        received,
        skipped,
    })
}

/// Indices of the held-out photos: about [`HOLDOUT_FRACTION`] of `n`, spread evenly, and
/// never so many that fewer than 2 remain to train on.
pub fn holdout(n: usize) -> Vec<usize> {
    if n < 3 {
        return Vec::new();
    }
    let k = ((n as f64 * HOLDOUT_FRACTION).round() as usize).clamp(1, n - 2);
    (0..k).map(|j| (2 * j + 1) * n / (2 * k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_about_fifteen_percent_and_leaves_two_to_train() {
        assert!(holdout(2).is_empty());
        assert_eq!(holdout(3), vec![1]);
        assert_eq!(holdout(4).len(), 1);
        let h = holdout(200);
        assert_eq!(h.len(), 30);
        assert!(h.windows(2).all(|w| w[0] < w[1]) && *h.last().unwrap() < 200);
        for n in 3..50 {
            let h = holdout(n);
            assert!(n - h.len() >= 2 && !h.is_empty(), "{n}");
        }
    }
}
