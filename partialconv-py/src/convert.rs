//! Python arguments to core types and back. uint8 RGB(A) images and H×W masks reach the
//! core as ndarray views of the numpy buffer (one ndarray version for numpy and the core, so
//! no conversion in between); the core copies them once into the image it owns. Results go
//! to numpy without a copy.

use std::path::PathBuf;

use image::{DynamicImage, ImageBuffer, Pixel};
use numpy::{
    dtype, Element, IntoPyArray, PyArray2, PyArray3, PyArrayDescrMethods, PyArrayDyn,
    PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use tch::Device;

use partialconv::imaging::array::{image_from_array, image_to_array as core_image_to_array};
use partialconv::{io, Error, HoleMask, MaskView, Strategy};

use crate::py_err;

/// `"auto" | "original" | "resize" | "resize:N" | "crop"`, parsed by the core.
pub struct StrategyArg(pub Strategy);

impl<'py> FromPyObject<'_, 'py> for StrategyArg {
    type Error = PyErr;
    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        let s: String = obj.extract()?;
        s.parse().map(Self).map_err(py_err)
    }
}

/// `"auto" | "cpu" | "cuda" | "cuda:N"`, checked against the machine by the core.
pub struct DeviceArg(pub Device);

impl<'py> FromPyObject<'_, 'py> for DeviceArg {
    type Error = PyErr;
    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        let s: String = obj.extract()?;
        partialconv::inpainter::parse_device(&s)
            .map(Self)
            .map_err(py_err)
    }
}

/// The inverse of [`DeviceArg`].
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        d => format!("{d:?}").to_lowercase(),
    }
}

/// An image argument: pixels now, or a file decoded later (with the GIL released) exactly as
/// the CLI decodes it.
pub enum ImageArg {
    Pixels(DynamicImage),
    File(PathBuf),
}

impl ImageArg {
    pub fn load(self) -> partialconv::Result<DynamicImage> {
        match self {
            ImageArg::Pixels(img) => Ok(img),
            ImageArg::File(path) => io::read_image(&path),
        }
    }
}

impl<'py> FromPyObject<'_, 'py> for ImageArg {
    type Error = PyErr;
    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        match classify(&obj)? {
            Source::Array(a) => array_to_image(&a, "image").map(ImageArg::Pixels),
            Source::Path(p) => Ok(ImageArg::File(p)),
            Source::Pil => {
                let a = pil_to_array(&obj, false)?;
                array_to_image(&a, "image").map(ImageArg::Pixels)
            }
            Source::Other => Err(PyTypeError::new_err(format!(
                "image must be a numpy.ndarray (uint8 H×W×3 or H×W×4), a PIL.Image.Image or \
                 a path, not {}",
                type_name(&obj)
            ))),
        }
    }
}

/// A mask argument; see [`ImageArg`]. The core's mask convention applies to all of them.
pub enum MaskArg {
    Holes(HoleMask),
    File(PathBuf),
}

impl MaskArg {
    /// The holes, scaled to `size` first when `resize` is set and the sizes differ (the
    /// CLI's `--resize-mask`).
    pub fn load(&self, size: (u32, u32), resize: bool) -> partialconv::Result<HoleMask> {
        let holes = match self {
            MaskArg::Holes(h) => h.clone(),
            MaskArg::File(path) => io::read_mask(path)?,
        };
        Ok(if resize && holes.dimensions() != size {
            holes.resize_conservative(size.0, size.1)
        } else {
            holes
        })
    }

    /// A size mismatch names the mask file, as the CLI's message does.
    pub fn name_error(&self, e: Error) -> Error {
        match (self, e) {
            (MaskArg::File(path), e @ Error::MaskSize { .. }) => Error::InvalidArgument(format!(
                "{}: {e} {}",
                path.display(),
                crate::RESIZE_MASK_HINT
            )),
            (_, e) => e,
        }
    }
}

impl<'py> FromPyObject<'_, 'py> for MaskArg {
    type Error = PyErr;
    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        match classify(&obj)? {
            Source::Array(a) => array_to_mask(&a).map(MaskArg::Holes),
            Source::Path(p) => Ok(MaskArg::File(p)),
            Source::Pil => array_to_mask(&pil_to_array(&obj, true)?).map(MaskArg::Holes),
            Source::Other => Err(PyTypeError::new_err(format!(
                "mask must be a numpy.ndarray (bool or uint8 H×W), a PIL.Image.Image or a \
                 path, not {}",
                type_name(&obj)
            ))),
        }
    }
}

enum Source<'py> {
    Array(Bound<'py, PyUntypedArray>),
    Path(PathBuf),
    Pil,
    Other,
}

fn classify<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Source<'py>> {
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        return Ok(Source::Array(a.clone()));
    }
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        return Ok(Source::Path(obj.extract()?));
    }
    // Only an object of a loaded PIL can be a PIL image; never import PIL for the check.
    let modules = obj.py().import("sys")?.getattr("modules")?;
    if let Some(pil) = modules.get_item("PIL.Image").ok().filter(|m| !m.is_none()) {
        if obj.is_instance(&pil.getattr("Image")?)? {
            return Ok(Source::Pil);
        }
    }
    Ok(Source::Other)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A PIL image as an array whose shape and dtype say what the image crate would decode the
/// same file to: `L`, `LA`, `RGB`, `RGBA` and 16-bit grey as they are, palette and other
/// modes expanded to RGB(A) as the PNG decoder expands them. A `1` mask stays bool.
fn pil_to_array<'py>(img: &Bound<'py, PyAny>, mask: bool) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = img.py();
    let asarray = py.import("numpy")?.getattr("asarray")?;
    let mode: String = img.getattr("mode")?.extract()?;
    let arr = match mode.as_str() {
        "L" | "LA" | "RGB" | "RGBA" => asarray.call1((img,))?,
        "1" if mask => asarray.call1((img,))?,
        "1" => asarray.call1((img.call_method1("convert", ("L",))?,))?,
        m if m.starts_with("I;16") => {
            let kwargs = PyDict::new(py);
            kwargs.set_item("dtype", "uint16")?;
            asarray.call((img,), Some(&kwargs))?
        }
        m => {
            let alpha = m.contains(['A', 'a']) || img.getattr("info")?.contains("transparency")?;
            let rgb = img.call_method1("convert", (if alpha { "RGBA" } else { "RGB" },))?;
            asarray.call1((rgb,))?
        }
    };
    Ok(arr.cast_into::<PyUntypedArray>()?)
}

fn bad_value(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

/// `(height, width, channels)` of an `H×W` or `H×W×C` array.
fn image_shape(a: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<(u32, u32, usize)> {
    let (h, w, c) = match *a.shape() {
        [h, w] => (h, w, 1),
        [h, w, c] => (h, w, c),
        _ => {
            return Err(bad_value(format!(
                "{what} must be H×W or H×W×C, got shape {:?}",
                a.shape()
            )))
        }
    };
    let side = |n: usize| {
        u32::try_from(n).map_err(|_| bad_value(format!("{what}: side {n} is too large")))
    };
    Ok((side(h)?, side(w)?, c))
}

/// The elements in row-major order, whatever the array's strides.
fn pixels<T: Element + Copy>(a: &Bound<'_, PyUntypedArray>) -> PyResult<Vec<T>> {
    let a = a.cast::<PyArrayDyn<T>>()?;
    let ro = a
        .try_readonly()
        .map_err(|e| bad_value(format!("array is not readable: {e}")))?;
    let view = ro.as_array();
    Ok(match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    })
}

fn buffer<P: Pixel>(w: u32, h: u32, data: Vec<P::Subpixel>) -> ImageBuffer<P, Vec<P::Subpixel>> {
    ImageBuffer::from_raw(w, h, data).expect("shape checked against the buffer")
}

fn array_to_image(a: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<DynamicImage> {
    let py = a.py();
    let (h, w, c) = image_shape(a, what)?;
    let dt = a.dtype();
    let channels_err = || {
        bad_value(format!(
            "{what} must have 1, 2, 3 or 4 channels (grey, grey+alpha, RGB, RGBA), got {c}"
        ))
    };
    if dt.is_equiv_to(&dtype::<u8>(py)) && a.ndim() == 3 && matches!(c, 3 | 4) {
        let a = a.cast::<PyArray3<u8>>()?;
        let ro = a
            .try_readonly()
            .map_err(|e| bad_value(format!("{what}: array is not readable: {e}")))?;
        image_from_array(ro.as_array()).map_err(py_err)
    } else if dt.is_equiv_to(&dtype::<u8>(py)) {
        let d = pixels::<u8>(a)?;
        Ok(match c {
            1 => DynamicImage::ImageLuma8(buffer(w, h, d)),
            2 => DynamicImage::ImageLumaA8(buffer(w, h, d)),
            3 => DynamicImage::ImageRgb8(buffer(w, h, d)),
            4 => DynamicImage::ImageRgba8(buffer(w, h, d)),
            _ => return Err(channels_err()),
        })
    } else if dt.is_equiv_to(&dtype::<u16>(py)) {
        let d = pixels::<u16>(a)?;
        Ok(match c {
            1 => DynamicImage::ImageLuma16(buffer(w, h, d)),
            2 => DynamicImage::ImageLumaA16(buffer(w, h, d)),
            3 => DynamicImage::ImageRgb16(buffer(w, h, d)),
            4 => DynamicImage::ImageRgba16(buffer(w, h, d)),
            _ => return Err(channels_err()),
        })
    } else {
        Err(bad_value(format!(
            "{what} must be uint8 (or uint16), got {}",
            dt.str()?
        )))
    }
}

fn array_to_mask(a: &Bound<'_, PyUntypedArray>) -> PyResult<HoleMask> {
    if a.dtype().is_equiv_to(&dtype::<bool>(a.py())) {
        let (h, w, c) = image_shape(a, "mask")?;
        if c != 1 || a.ndim() != 2 {
            return Err(bad_value(format!(
                "a bool mask must be H×W, got shape {:?}",
                a.shape()
            )));
        }
        // Read as bytes: numpy calls any non-zero byte True (PIL's mode-"1" arrays hold 255),
        // and such a byte is not a valid Rust `bool`.
        let bytes = a
            .call_method1("view", ("uint8",))?
            .cast_into::<PyUntypedArray>()?;
        let holes = pixels::<u8>(&bytes)?.into_iter().map(|b| b != 0).collect();
        return Ok(HoleMask::from_bools(w, h, holes));
    }
    if a.ndim() == 2 && a.dtype().is_equiv_to(&dtype::<u8>(a.py())) {
        let a = a.cast::<PyArray2<u8>>()?;
        let ro = a
            .try_readonly()
            .map_err(|e| bad_value(format!("mask: array is not readable: {e}")))?;
        return Ok(HoleMask::from(MaskView::Luma(ro.as_array())));
    }
    // Other uint8 and uint16 masks go through the same rule as a decoded mask file.
    Ok(HoleMask::from_image(&array_to_image(a, "mask")?))
}

/// The core's output as `H×W×3` or `H×W×4` uint8, without copying the pixels.
pub fn image_to_array(py: Python<'_>, img: DynamicImage) -> Bound<'_, PyArray3<u8>> {
    core_image_to_array(img).into_pyarray(py)
}
