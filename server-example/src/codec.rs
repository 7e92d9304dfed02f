//! How a result is encoded for the client: the output formats, their names and content
//! types, and the encoders, which carry the photo's ICC profile and EXIF through.

use std::io::Cursor;
use std::str::FromStr;

use image::{DynamicImage, ImageEncoder};
use partialconv::imaging::metadata::Metadata;

/// JPEG quality of results: high enough that a fill is not the photo's weakest part.
pub const JPEG_QUALITY: u8 = 95;

/// The result's encoding: the request's `format` field, else the input's own format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Lossless PNG.
    #[default]
    Png,
    /// JPEG at [`JPEG_QUALITY`], 4:4:4 (no chroma subsampling), without alpha.
    Jpeg,
}

impl OutputFormat {
    /// The format a photo comes back in when the request names none: JPEG for a JPEG, PNG
    /// for anything else. A WebP comes back as PNG: the `image` crate only writes lossless
    /// WebP, which is larger than the PNG, and no lossy encoder (libwebp) is linked.
    pub fn of_input(bytes: &[u8]) -> Self {
        match image::guess_format(bytes) {
            Ok(image::ImageFormat::Jpeg) => Self::Jpeg,
            _ => Self::Png,
        }
    }

    /// Whether encoding in this format loses detail, so that edits continue from a lossless
    /// master instead.
    pub fn is_lossy(self) -> bool {
        self == Self::Jpeg
    }

    /// The `Content-Type` of a result in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
        }
    }

    /// The name a request uses for this format (`png`, `jpeg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
        }
    }
}

/// A `format` that names no [`OutputFormat`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format `{0}`: expected png or jpeg")]
pub struct UnknownFormat(pub String);

impl FromStr for OutputFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            _ => Err(UnknownFormat(s.to_owned())),
        }
    }
}

/// Encodes `img` as `format`, with `metadata` (already made fit for the output, see
/// [`Metadata::for_upright_output`]). PNG uses fast compression: at 512×512 the default
/// level costs a tenth of the model time.
pub fn encode(
    img: &DynamicImage,
    format: OutputFormat,
    metadata: &Metadata,
) -> Result<Vec<u8>, image::ImageError> {
    use image::codecs::{jpeg::JpegEncoder, png};
    let mut buf = Vec::new();
    match format {
        OutputFormat::Png => {
            let mut encoder = png::PngEncoder::new_with_quality(
                Cursor::new(&mut buf),
                png::CompressionType::Fast,
                png::FilterType::Adaptive,
            );
            metadata.apply(&mut encoder);
            let (w, h) = (img.width(), img.height());
            encoder.write_image(img.as_bytes(), w, h, img.color().into())?;
        }
        OutputFormat::Jpeg => {
            // The `image` crate's JPEG encoder samples chroma at full resolution (4:4:4).
            let mut encoder = JpegEncoder::new_with_quality(Cursor::new(&mut buf), JPEG_QUALITY);
            metadata.apply(&mut encoder);
            let rgb = img.to_rgb8();
            encoder.write_image(
                rgb.as_raw(),
                rgb.width(),
                rgb.height(),
                image::ExtendedColorType::Rgb8,
            )?;
        }
    }
    Ok(buf)
}

/// Re-encodes a lossless master (a PNG this server wrote, metadata included) as `format`:
/// how a web tier makes the download from the master its model tier sends.
pub fn transcode(master: &[u8], format: OutputFormat) -> Result<Vec<u8>, image::ImageError> {
    if format == OutputFormat::Png {
        return Ok(master.to_vec());
    }
    let metadata = Metadata::read(master).unwrap_or_default();
    let img = image::load_from_memory_with_format(master, image::ImageFormat::Png)?;
    encode(&img, format, &metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_is_4_4_4_at_quality_95_with_the_metadata() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(32, 16, |x, y| {
            image::Rgb([x as u8 * 8, y as u8 * 16, 77])
        }));
        let meta = Metadata {
            icc_profile: Some(b"not parsed, only copied".to_vec()),
            exif: Some(b"II*\0\x08\0\0\0\0\0\0\0\0\0".to_vec()),
        };
        let jpeg = encode(&img, OutputFormat::Jpeg, &meta).unwrap();
        // SOF0: precision, height, width, 3 components, each (id, HV sampling, table).
        let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        let comps = &jpeg[sof + 10..sof + 19];
        assert_eq!([comps[1], comps[4], comps[7]], [0x11, 0x11, 0x11]);
        assert_eq!(Metadata::read(&jpeg).unwrap(), meta);
        let png = encode(&img, OutputFormat::Png, &meta).unwrap();
        assert_eq!(Metadata::read(&png).unwrap(), meta);
        let again = transcode(&png, OutputFormat::Jpeg).unwrap();
        assert_eq!(Metadata::read(&again).unwrap(), meta);
    }
}
