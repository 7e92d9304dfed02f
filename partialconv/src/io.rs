//! Reading images and masks from files or bytes: format sniffing, EXIF orientation, and a
//! pixel limit checked from the header before any pixel is decoded.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{Error, Result};
use crate::masks::HoleMask;

/// Decodes an image from bytes, rejecting it from its header if it has more than
/// `max_pixels` pixels (a decompression bomb costs nothing then). `what` names the source in
/// errors.
pub fn decode_image(bytes: &[u8], what: &str, max_pixels: Option<u64>) -> Result<DynamicImage> {
    let img_err = |source| Error::Image {
        what: what.to_string(),
        source,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(what, e))?;
    let mut decoder = reader.into_decoder().map_err(img_err)?;
    let (width, height) = decoder.dimensions();
    if let Some(limit) = max_pixels {
        if width as u64 * height as u64 > limit {
            return Err(Error::TooLarge {
                what: what.to_string(),
                width,
                height,
                limit,
            });
        }
    }
    let orientation = decoder.orientation().map_err(img_err)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(img_err)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Reads an image file, EXIF orientation applied.
pub fn read_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, &path.display().to_string(), None)
}

/// Reads a mask file under the crate's mask convention ([`HoleMask::from_image`]).
pub fn read_mask(path: &Path) -> Result<HoleMask> {
    Ok(HoleMask::from_image(&read_image(path)?))
}

/// Encodes as PNG, or JPEG when `path` ends in `.jpg`/`.jpeg` (alpha dropped there).
pub fn write_image(img: &DynamicImage, path: &Path) -> Result<()> {
    let jpeg = matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jpg" | "jpeg")
    );
    let result = if jpeg {
        DynamicImage::ImageRgb8(img.to_rgb8()).save(path)
    } else {
        img.save(path)
    };
    result.map_err(|source| Error::Image {
        what: path.display().to_string(),
        source,
    })
}

/// The regular files of `dir`, sorted by name.
pub fn list_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}
