//! What a photo carries besides its pixels, kept through a fill: the ICC profile, copied
//! verbatim so that a wide-gamut (Display P3) photo keeps its colours, and EXIF (date,
//! camera), minus GPS unless asked, with the orientation reset because decoded pixels are
//! stored upright.
//!
//! The profile is never parsed or converted. EXIF is edited in place, not rebuilt: the
//! only changes are the orientation's value and the GPS directory's removal, so tags this
//! module knows nothing of (maker notes, lens data) come through unchanged.

use std::io::Cursor;

use image::{ImageDecoder, ImageEncoder, ImageReader, Limits};

use crate::error::{Error, Result};

/// Largest EXIF block kept: what one JPEG APP1 segment holds after its `Exif\0\0` prefix.
/// Camera EXIF is a few KB plus a thumbnail, well under it.
pub const MAX_EXIF_BYTES: usize = 65_535 - 2 - 6;

/// Largest ICC profile kept. Display profiles are a few KB, printer profiles a few MB; a
/// larger "profile" is a decompression bomb in a PNG's `iCCP` more likely than a profile.
pub const MAX_ICC_BYTES: usize = 4 << 20;

/// What reading the metadata may allocate: bounds the inflation of a PNG's `iCCP` chunk.
const READ_LIMIT: u64 = 2 * MAX_ICC_BYTES as u64;

/// The ICC profile and EXIF block of a photo, as raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The ICC profile, verbatim.
    pub icc_profile: Option<Vec<u8>>,
    /// The EXIF block: a TIFF structure, without JPEG's `Exif\0\0` prefix.
    pub exif: Option<Vec<u8>>,
}

impl Metadata {
    /// Reads the metadata of an encoded PNG, JPEG or WebP from its headers, without
    /// decoding pixels. An image without metadata gives the empty [`Metadata`]; a profile
    /// over [`MAX_ICC_BYTES`] or EXIF over [`MAX_EXIF_BYTES`] is left out.
    pub fn read(bytes: &[u8]) -> Result<Self> {
        let bad = |source| Error::Image {
            what: "image metadata".into(),
            source,
        };
        let mut limits = Limits::default();
        limits.max_alloc = Some(READ_LIMIT);
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(e.into()))?;
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(bad)?;
        let icc_profile = decoder
            .icc_profile()
            .map_err(bad)?
            .filter(|p| !p.is_empty() && within(p.len(), MAX_ICC_BYTES, "ICC profile"));
        let exif = decoder
            .exif_metadata()
            .map_err(bad)?
            .map(|e| match e.strip_prefix(b"Exif\0\0") {
                Some(tiff) => tiff.to_vec(),
                None => e,
            })
            .filter(|e| !e.is_empty() && within(e.len(), MAX_EXIF_BYTES, "EXIF block"));
        Ok(Self { icc_profile, exif })
    }

    /// The metadata for a result whose pixels are upright: the orientation reset to 1 and,
    /// unless `keep_gps`, the GPS directory removed. EXIF that cannot be edited safely (a
    /// malformed directory) is dropped whole rather than passed on with its location.
    pub fn for_upright_output(self, keep_gps: bool) -> Self {
        let exif = self.exif.and_then(|e| exif::edit(&e, keep_gps));
        Self { exif, ..self }
    }

    /// Hands the metadata to an encoder that will write it. Formats without a place for
    /// one of them leave it out.
    pub fn apply(&self, encoder: &mut impl ImageEncoder) {
        if let Some(icc) = &self.icc_profile {
            let _ = encoder.set_icc_profile(icc.clone());
        }
        if let Some(exif) = &self.exif {
            let _ = encoder.set_exif_metadata(exif.clone());
        }
    }
}

fn within(len: usize, max: usize, what: &str) -> bool {
    if len > max {
        tracing::warn!("left out a {len}-byte {what}: the most kept is {max} bytes");
    }
    len <= max
}

/// In-place edits of an EXIF (TIFF) block.
pub mod exif {
    /// IFD0's orientation tag.
    pub const ORIENTATION: u16 = 0x0112;
    /// IFD0's pointer to the GPS directory.
    pub const GPS_IFD: u16 = 0x8825;
    /// IFD1's thumbnail: the offset of a JPEG, and its length.
    const THUMBNAIL: u16 = 0x0201;
    const THUMBNAIL_LEN: u16 = 0x0202;
    /// IFD1's thumbnail in strips instead.
    const STRIP_OFFSETS: u16 = 0x0111;

    /// Sizes in bytes of TIFF's field types 1..=13; 0 for unknown types.
    fn type_size(ty: u16) -> usize {
        match ty {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 => 8,
            _ => 0,
        }
    }

    struct Tiff {
        bytes: Vec<u8>,
        little: bool,
    }

    impl Tiff {
        /// A copy of `tiff` to read and edit, if it starts with a TIFF header.
        fn parse(tiff: &[u8]) -> Option<Self> {
            let little = match tiff.get(0..4)? {
                b"II*\0" => true,
                b"MM\0*" => false,
                _ => return None,
            };
            Some(Self {
                bytes: tiff.to_vec(),
                little,
            })
        }

        fn u16(&self, at: usize) -> Option<u16> {
            let b: [u8; 2] = self.bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
            Some(if self.little {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            })
        }

        fn u32(&self, at: usize) -> Option<u32> {
            let b: [u8; 4] = self.bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
            Some(if self.little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            })
        }

        fn put_u16(&mut self, at: usize, v: u16) {
            let b = if self.little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            self.bytes[at..at + 2].copy_from_slice(&b);
        }

        fn zero(&mut self, from: usize, len: usize) -> Option<()> {
            self.bytes.get_mut(from..from.checked_add(len)?)?.fill(0);
            Some(())
        }

        /// An IFD's entry count and the offset of its first entry, checked to fit.
        fn ifd(&self, offset: usize) -> Option<(usize, usize)> {
            let n = self.u16(offset)? as usize;
            let end = offset.checked_add(2 + 12 * n + 4)?;
            (end <= self.bytes.len()).then_some((n, offset + 2))
        }

        /// The value of `tag` (a SHORT or LONG stored in the entry) in the IFD at `offset`.
        fn value(&self, offset: usize, tag: u16) -> Option<usize> {
            let (n, first) = self.ifd(offset)?;
            (0..n).map(|i| first + 12 * i).find_map(|e| {
                if self.u16(e)? != tag {
                    return None;
                }
                match self.u16(e + 2)? {
                    3 => self.u16(e + 8).map(usize::from),
                    4 => self.u32(e + 8).map(|v| v as usize),
                    _ => None,
                }
            })
        }

        /// Zeroes an IFD and every value it stores outside its entries.
        fn erase_ifd(&mut self, offset: usize) -> Option<()> {
            let (n, first) = self.ifd(offset)?;
            for i in 0..n {
                let e = first + 12 * i;
                let size = type_size(self.u16(e + 2)?).checked_mul(self.u32(e + 4)? as usize)?;
                if size > 4 {
                    let at = self.u32(e + 8)? as usize;
                    self.zero(at, size)?;
                }
            }
            self.zero(offset, 2 + 12 * n + 4)
        }
    }

    /// `tiff` with the orientation set to 1 (upright), the thumbnail directory (IFD1) and its
    /// image erased, since the thumbnail shows the photo before the edit, and, unless
    /// `keep_gps`, the GPS directory erased and its IFD0 entry removed. `None` when the block
    /// is not a TIFF structure this can edit safely.
    pub fn edit(tiff: &[u8], keep_gps: bool) -> Option<Vec<u8>> {
        let mut t = Tiff::parse(tiff)?;
        let ifd0 = t.u32(4)? as usize;
        let (n, first) = t.ifd(ifd0)?;
        let mut gps = None;
        for i in 0..n {
            let e = first + 12 * i;
            match t.u16(e)? {
                // A SHORT stored in the entry itself.
                ORIENTATION if t.u16(e + 2)? == 3 => t.put_u16(e + 8, 1),
                // Two GPS directories is no EXIF a camera writes; keep neither.
                GPS_IFD if gps.is_some() => return None,
                GPS_IFD => gps = Some((i, t.u32(e + 8)? as usize)),
                _ => {}
            }
        }
        let next = first + 12 * n;
        let ifd1 = t.u32(next)? as usize;
        if ifd1 != 0 {
            // A thumbnail in strips rather than one JPEG is rare: drop the block for it.
            if t.value(ifd1, STRIP_OFFSETS).is_some() {
                return None;
            }
            let thumbnail = t.value(ifd1, THUMBNAIL).zip(t.value(ifd1, THUMBNAIL_LEN));
            if let Some((at, len)) = thumbnail {
                t.zero(at, len)?;
            }
            t.erase_ifd(ifd1)?;
            t.bytes[next..next + 4].fill(0);
        }
        if let (Some((i, offset)), false) = (gps, keep_gps) {
            t.erase_ifd(offset)?;
            // Close the gap: the later entries and the next-IFD offset move up one slot.
            let e = first + 12 * i;
            let end = first + 12 * n + 4;
            t.bytes.copy_within(e + 12..end, e);
            t.zero(end - 12, 12)?;
            t.put_u16(ifd0, (n - 1) as u16);
        }
        Some(t.bytes)
    }

    /// Whether IFD0 of `tiff` points to a GPS directory.
    pub fn has_gps(tiff: &[u8]) -> bool {
        let Some(t) = Tiff::parse(tiff) else {
            return false;
        };
        let Some((n, first)) = t.u32(4).and_then(|o| t.ifd(o as usize)) else {
            return false;
        };
        (0..n).any(|i| t.u16(first + 12 * i) == Some(GPS_IFD))
    }
}

#[cfg(test)]
mod tests {
    use super::exif::*;

    /// A big- or little-endian TIFF: IFD0 with Make (outside the entry), Orientation 6 and
    /// a GPS pointer; the GPS IFD with a latitude (three RATIONALs, outside the entry).
    fn tiff(little: bool) -> Vec<u8> {
        let p16 = |v: u16| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let p32 = |v: u32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let mut b = Vec::new();
        b.extend_from_slice(if little { b"II*\0" } else { b"MM\0*" });
        b.extend_from_slice(&p32(8));
        // IFD0 at 8: 3 entries → ends at 8 + 2 + 36 + 4 = 50.
        b.extend_from_slice(&p16(3));
        let entry = |b: &mut Vec<u8>, tag: u16, ty: u16, count: u32, value: [u8; 4]| {
            b.extend_from_slice(&p16(tag));
            b.extend_from_slice(&p16(ty));
            b.extend_from_slice(&p32(count));
            b.extend_from_slice(&value);
        };
        entry(&mut b, 0x010f, 2, 8, p32(50)); // Make, 8 ASCII bytes at 50
        let mut orient = [0u8; 4];
        orient[..2].copy_from_slice(&p16(6));
        entry(&mut b, ORIENTATION, 3, 1, orient);
        entry(&mut b, GPS_IFD, 4, 1, p32(58));
        b.extend_from_slice(&p32(0));
        // Make's bytes at 50..58, then the GPS IFD at 58: 1 entry, so it ends at 58 + 18 = 76,
        // and the latitude at 76..100.
        b.extend_from_slice(b"Camera1\0");
        b.extend_from_slice(&p16(1));
        entry(&mut b, 0x0002, 5, 3, p32(76));
        b.extend_from_slice(&p32(0));
        for v in [52u32, 1, 31, 1, 12, 1] {
            b.extend_from_slice(&p32(v));
        }
        b
    }

    #[test]
    fn gps_is_erased_and_orientation_reset_in_both_byte_orders() {
        for little in [true, false] {
            let t = tiff(little);
            assert!(has_gps(&t));
            let out = edit(&t, false).unwrap();
            assert_eq!(out.len(), t.len());
            assert!(!has_gps(&out));
            let n = if little {
                u16::from_le_bytes([out[8], out[9]])
            } else {
                u16::from_be_bytes([out[8], out[9]])
            };
            assert_eq!(n, 2, "one entry fewer");
            // The latitude's values and the GPS directory are zeroed.
            assert!(out[58..100].iter().all(|&b| b == 0));
            // Make is untouched, the orientation is now 1.
            assert_eq!(&out[50..58], b"Camera1\0");
            let orient = if little {
                u16::from_le_bytes([out[10 + 12 + 8], out[10 + 12 + 9]])
            } else {
                u16::from_be_bytes([out[10 + 12 + 8], out[10 + 12 + 9]])
            };
            assert_eq!(orient, 1);
        }
    }

    #[test]
    fn the_thumbnail_of_the_unedited_photo_is_erased() {
        let mut t = b"II*\0\x08\0\0\0".to_vec();
        // IFD0 at 8: Make ("Cam\0", in the entry), then IFD1 at 26.
        t.extend_from_slice(&[1, 0, 0x0f, 0x01, 2, 0, 4, 0, 0, 0]);
        t.extend_from_slice(b"Cam\0");
        t.extend_from_slice(&26u32.to_le_bytes());
        // IFD1 at 26: the thumbnail JPEG at 56, 8 bytes long.
        t.extend_from_slice(&[2, 0]);
        t.extend_from_slice(&[0x01, 0x02, 4, 0, 1, 0, 0, 0, 56, 0, 0, 0]);
        t.extend_from_slice(&[0x02, 0x02, 4, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&[0xff, 0xd8, 1, 2, 3, 4, 0xff, 0xd9]);
        assert_eq!(t.len(), 64);
        let out = edit(&t, false).unwrap();
        assert_eq!(&out[18..22], b"Cam\0", "IFD0 kept");
        assert_eq!(&out[22..26], &[0; 4], "no next IFD");
        assert!(
            out[26..].iter().all(|&b| b == 0),
            "IFD1 and the thumbnail zeroed"
        );
    }

    #[test]
    fn oversized_metadata_is_left_out() {
        use image::ImageEncoder;
        let png = |icc: usize, exif: usize| {
            let mut buf = Vec::new();
            let mut enc = image::codecs::png::PngEncoder::new(&mut buf);
            let mut tiff = b"II*\0\x08\0\0\0\0\0\0\0\0\0".to_vec();
            tiff.resize(exif, 0);
            enc.set_icc_profile(vec![7; icc]).unwrap();
            enc.set_exif_metadata(tiff).unwrap();
            enc.write_image(&[0; 12], 2, 2, image::ExtendedColorType::Rgb8)
                .unwrap();
            super::Metadata::read(&buf).unwrap()
        };
        let small = png(1000, 1000);
        assert_eq!(small.icc_profile.map(|p| p.len()), Some(1000));
        assert_eq!(small.exif.map(|e| e.len()), Some(1000));
        let big = png(super::MAX_ICC_BYTES + 1, super::MAX_EXIF_BYTES + 1);
        assert_eq!((big.icc_profile, big.exif), (None, None));
    }

    #[test]
    fn keep_gps_keeps_it() {
        let t = tiff(true);
        let out = edit(&t, true).unwrap();
        assert!(has_gps(&out));
        assert_eq!(&out[58..], &t[58..]);
    }

    #[test]
    fn malformed_exif_is_refused_not_passed_on() {
        let mut t = tiff(true);
        assert_eq!(edit(b"not a tiff", false), None);
        t.truncate(40); // IFD0 runs past the end
        assert_eq!(edit(&t, false), None);
        let mut t = tiff(true);
        t[10 + 24 + 8] = 250; // GPS pointer past the end
        assert_eq!(edit(&t, false), None);
    }
}
