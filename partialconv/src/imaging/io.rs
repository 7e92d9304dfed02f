//! Reading images and masks from files or bytes: format sniffing, EXIF orientation, and a
//! pixel limit checked from the header before any pixel is decoded.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{Error, Result};
use crate::imaging::masks::HoleMask;

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

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// A JPEG 16 wide and 8 tall, red on the left half and blue on the right, with an EXIF
    /// orientation tag spliced in after the SOI marker.
    fn jpeg_with_orientation(orientation: u16) -> Vec<u8> {
        let img = RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        // Big-endian TIFF header, one IFD entry: tag 0x0112 (Orientation), SHORT, count 1.
        let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut app1 = vec![0xff, 0xe1];
        app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn is_red(p: &Rgb<u8>) -> bool {
        p[0] > 200 && p[2] < 60
    }

    #[test]
    fn exif_orientation_is_applied() {
        let upright = decode_image(&jpeg_with_orientation(1), "upright", None)
            .unwrap()
            .to_rgb8();
        assert_eq!(upright.dimensions(), (16, 8));
        assert!(is_red(upright.get_pixel(2, 4)) && !is_red(upright.get_pixel(13, 4)));

        // 6: the camera was turned, the picture must be rotated 90° clockwise, so the left
        // (red) half ends up on top.
        let rotated = decode_image(&jpeg_with_orientation(6), "rotated", None)
            .unwrap()
            .to_rgb8();
        assert_eq!(rotated.dimensions(), (8, 16));
        assert!(is_red(rotated.get_pixel(4, 2)) && !is_red(rotated.get_pixel(4, 13)));

        // 3: upside down, so red moves to the right.
        let flipped = decode_image(&jpeg_with_orientation(3), "flipped", None)
            .unwrap()
            .to_rgb8();
        assert_eq!(flipped.dimensions(), (16, 8));
        assert!(!is_red(flipped.get_pixel(2, 4)) && is_red(flipped.get_pixel(13, 4)));
    }

    #[test]
    fn the_pixel_limit_is_checked_before_decoding() {
        let bytes = jpeg_with_orientation(1);
        match decode_image(&bytes, "big", Some(16 * 8 - 1)) {
            Err(Error::TooLarge {
                width: 16,
                height: 8,
                ..
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(decode_image(&bytes, "fits", Some(16 * 8)).is_ok());
    }
}
