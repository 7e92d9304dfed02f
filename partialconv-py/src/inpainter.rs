//! `partialconv.Inpainter`.

use std::path::PathBuf;

use image::GenericImageView;
use numpy::PyArray3;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use partialconv::{Blend, Error, Precision, SelfEnsemble, Strategy};

use crate::convert::{device_name, image_to_array, DeviceArg, ImageArg, MaskArg, StrategyArg};
use crate::py_err;

/// A model ready to fill holes. Threads share it: the core's `Inpainter` is `Sync`, and each
/// call releases the GIL, so predictions in several Python threads run at the same time.
#[pyclass(module = "partialconv", frozen)]
pub struct Inpainter {
    inner: partialconv::Inpainter,
}

#[pymethods]
impl Inpainter {
    /// Loads `path`, else `$PARTIALCONV_MODEL`, else the model bundled into the build.
    #[staticmethod]
    // The text signatures show Python's view of the defaults, not the Rust values.
    #[pyo3(
        signature = (path = None, device = DeviceArg(tch::Device::Cpu), blend = "telea", ensemble = "flips", precision = "auto"),
        text_signature = "(path=None, device='cpu', blend='telea', ensemble='flips', precision='auto')"
    )]
    fn load(
        py: Python<'_>,
        path: Option<PathBuf>,
        device: DeviceArg,
        blend: &str,
        ensemble: &str,
        precision: &str,
    ) -> PyResult<Self> {
        let blend: Blend = blend.parse().map_err(py_err)?;
        let ensemble: SelfEnsemble = ensemble.parse().map_err(py_err)?;
        let precision: Precision = precision.parse().map_err(py_err)?;
        let inner = py
            .detach(|| partialconv::Inpainter::load_with(path.as_deref(), device.0, precision))
            .map_err(py_err)?
            .with_blend(blend)
            .with_ensemble(ensemble);
        Ok(Self { inner })
    }

    /// The kind the convolutions compute in: `"fp32"`, `"bf16"` or `"fp16"`.
    #[getter]
    fn precision(&self) -> String {
        self.inner.precision().to_string()
    }

    /// How fills meet the photo: `"telea"` or `"paste"`.
    #[getter]
    fn blend(&self) -> String {
        self.inner.blend().to_string()
    }

    /// Which flipped views each fill averages: `"single"`, `"mirror"` or `"flips"`.
    #[getter]
    fn ensemble(&self) -> String {
        self.inner.ensemble().to_string()
    }

    /// The device the model runs on: `"cpu"` or `"cuda:N"`.
    #[getter]
    fn device(&self) -> String {
        device_name(self.inner.device())
    }

    fn __repr__(&self) -> String {
        let c = self.inner.meta().config;
        format!(
            "Inpainter(device='{}', layer_size={}, width={})",
            self.device(),
            c.layer_size,
            c.width
        )
    }

    /// Fills the holes of `image`; pixels outside them come back unchanged.
    #[pyo3(
        signature = (image, mask, strategy = StrategyArg(Strategy::Auto), resize_mask = false, mask_grow = 0),
        text_signature = "(self, image, mask, strategy='auto', resize_mask=False, mask_grow=0)"
    )]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        image: ImageArg,
        mask: MaskArg,
        strategy: StrategyArg,
        resize_mask: bool,
        mask_grow: i32,
    ) -> PyResult<Bound<'py, PyArray3<u8>>> {
        let filled = py
            .detach(|| {
                let img = image.load()?;
                let holes = mask.load(img.dimensions(), resize_mask)?.grown(mask_grow)?;
                self.inner
                    .predict(&img, &holes, strategy.0)
                    .map_err(|e| mask.name_error(e))
            })
            .map_err(py_err)?;
        Ok(image_to_array(py, filled))
    }

    /// Fills many images; same-size items under `original` share one forward pass.
    #[pyo3(
        signature = (images, masks, strategy = StrategyArg(Strategy::Auto)),
        text_signature = "(self, images, masks, strategy='auto')"
    )]
    fn predict_batch<'py>(
        &self,
        py: Python<'py>,
        images: Vec<ImageArg>,
        masks: Vec<MaskArg>,
        strategy: StrategyArg,
    ) -> PyResult<Vec<Bound<'py, PyArray3<u8>>>> {
        if images.len() != masks.len() {
            return Err(PyValueError::new_err(format!(
                "{} images but {} masks",
                images.len(),
                masks.len()
            )));
        }
        let filled = py
            .detach(|| {
                let mut items = Vec::with_capacity(images.len());
                for (i, (image, mask)) in images.into_iter().zip(&masks).enumerate() {
                    let img = image.load()?;
                    let holes = mask.load(img.dimensions(), false)?;
                    if holes.dimensions() != img.dimensions() {
                        // The core checks this too, but could not say which item.
                        let e = mask_size_error(img.dimensions(), holes.dimensions());
                        let e = mask.name_error(e);
                        return Err(Error::InvalidArgument(format!("item {i}: {e}")));
                    }
                    items.push((img, holes));
                }
                self.inner.predict_batch(&items, strategy.0)
            })
            .map_err(py_err)?;
        Ok(filled
            .into_iter()
            .map(|img| image_to_array(py, img))
            .collect())
    }
}

fn mask_size_error((image_w, image_h): (u32, u32), (mask_w, mask_h): (u32, u32)) -> Error {
    Error::MaskSize {
        image_w,
        image_h,
        mask_w,
        mask_h,
    }
}
