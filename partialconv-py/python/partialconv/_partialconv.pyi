"""Type stubs for the native module; import from `partialconv` itself."""

import os
import pathlib
from typing import Callable, Literal, Sequence, TypedDict, Union, final

import numpy as np
import numpy.typing as npt

try:
    from PIL.Image import Image as _PILImage
except ImportError:  # pillow is optional
    _PILImage = object  # type: ignore[misc,assignment]

__version__: str
__all__ = ["FineTuner", "Inpainter", "Progress", "__version__", "import_checkpoint"]

_StrPath = Union[str, os.PathLike[str]]
_ImageLike = Union[npt.NDArray[np.uint8], npt.NDArray[np.uint16], _PILImage, _StrPath]
"""uint8 H×W×3 (RGB) or H×W×4 (RGBA); also H×W grey, H×W×2 grey+alpha and uint16. Or a
PIL image, or the path of an image file (decoded as the CLI decodes it)."""
_MaskLike = Union[npt.NDArray[np.bool_], npt.NDArray[np.uint8], _PILImage, _StrPath]
"""bool H×W (True = hole) or uint8 H×W (≥ 128 = hole); a PIL image or a file: luma ≥ 128
is a hole, or, for an image with a not fully opaque alpha channel, alpha ≥ 1."""
_Strategy = Union[Literal["auto", "original", "resize", "crop"], str]
"""`"auto"`, `"original"`, `"resize"` (long side 512), `"resize:N"` or `"crop"`."""
_Device = Union[Literal["auto", "cpu", "cuda"], str]
"""`"auto"` (a GPU when CUDA is present), `"cpu"`, `"cuda"` or `"cuda:N"`."""

@final
class Inpainter:
    """A model ready to fill holes. Safe to share between threads; the GIL is released
    while it computes."""

    @staticmethod
    def load(
        path: _StrPath | None = None,
        device: _Device = "cpu",
        blend: Literal["telea", "paste"] = "telea",
        ensemble: Literal["single", "mirror", "flips"] = "flips",
        precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto",
    ) -> Inpainter:
        """Loads the safetensors model at `path`, else `$PARTIALCONV_MODEL`, else the model
        bundled into the build.

        `blend="telea"` takes the first pixels of each hole from Telea's fast marching,
        fading into the network's fill 6 px in; `"paste"` uses the network's fill alone.
        `ensemble` averages the fills of flipped views of the image: `"flips"` the image
        flipped left–right, upside down and both (four passes, the best score; see the model
        card), `"mirror"` the image and its mirror image (two), `"single"` one pass (2.4×
        faster on a CPU). `precision` is the kind the network's convolutions compute in:
        `"bf16"` is about twice as fast on a CPU with AVX512-BF16 or AMX, `"fp16"` is for
        CUDA, `"auto"` picks one of them where it is native, else fp32; everything around
        the convolutions stays fp32.

        Raises FileNotFoundError (no such file), ValueError (not a model, bad device) or
        RuntimeError (no model bundled and none given)."""
    @property
    def device(self) -> str:
        """`"cpu"` or `"cuda:N"`."""
    @property
    def blend(self) -> str:
        """`"telea"` or `"paste"`."""
    @property
    def ensemble(self) -> str:
        """`"single"`, `"mirror"` or `"flips"`."""
    @property
    def precision(self) -> str:
        """`"fp32"`, `"bf16"` or `"fp16"` (`"auto"` resolved)."""
    def predict(
        self,
        image: _ImageLike,
        mask: _MaskLike,
        strategy: _Strategy = "auto",
        resize_mask: bool = False,
        mask_grow: int = 0,
    ) -> npt.NDArray[np.uint8]:
        """The image with its holes filled, uint8 H×W×3, or H×W×4 when the input has alpha
        (kept as it was). Pixels outside the holes are returned unchanged.

        `resize_mask` scales a mask of another size to the image (the CLI's
        `--resize-mask`); otherwise a size mismatch raises ValueError. `mask_grow` grows
        the mask by that many pixels (a disk; negative shrinks it), from -16 to 16, as the
        CLI's `--mask-grow`; outside that range it raises ValueError."""
    def predict_batch(
        self,
        images: Sequence[_ImageLike],
        masks: Sequence[_MaskLike],
        strategy: _Strategy = "auto",
    ) -> list[npt.NDArray[np.uint8]]:
        """`predict` for each pair; same-size items under `original` share one forward
        pass. The results equal `predict`'s."""

class _LossTerms(TypedDict):
    valid: float
    hole: float
    perceptual: float
    style: float
    tv: float

class _BucketMetrics(TypedDict):
    hole_ratio: tuple[float, float]
    psnr: float
    ssim: float
    l1: float
    count: int

class _Metrics(TypedDict):
    mean_psnr: float
    buckets: list[_BucketMetrics]

@final
class Progress:
    """What the `FineTuner.run` callback receives after each step."""

    step: int
    """Steps done."""
    total: int
    """Steps the run will do."""
    loss: float
    """Total loss of this step."""
    terms: _LossTerms
    stage: int
    """1, or 2 once the encoder's batch norm is frozen."""
    elapsed: float
    """Seconds since `run` started."""
    eta: float
    """Estimated seconds left."""
    metrics: _Metrics | None
    """Validation metrics per hole-ratio bucket, on steps that ran validation."""

class _TrainSummary(TypedDict):
    steps: int
    final_loss: float
    wall_s: float
    stopped: bool
    """True when the callback returned False."""
    metrics: _Metrics | None
    """The last validation's."""

@final
class FineTuner:
    """Trains a model on a folder of photos, from scratch or from `base` (a model file, or
    `"bundled"` for the bundled model; the CLI's `partialconv train`; every option is the flag of the same name, and None keeps the
    CLI's default). Loads the photos, and resumes from `run_dir`'s checkpoint if there is
    one."""

    def __new__(
        cls,
        data: _StrPath,
        out: _StrPath,
        *,
        base: _StrPath | None = None,
        val_data: _StrPath | None = None,
        masks: _StrPath | None = None,
        run_dir: _StrPath | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        train_size: int | None = None,
        photo_side: int | None = None,
        width: int | None = None,
        layer_size: int | None = None,
        lr: float | None = None,
        lr_stage2: float | None = None,
        stage2_at: int | None = None,
        vgg: _StrPath | None = None,
        checkpoint_every: int | None = None,
        val_every: int | None = None,
        val_size: int | None = None,
        max_val_images: int | None = None,
        seed: int | None = None,
        device: _Device | None = None,
        half: bool = False,
        loader_threads: int | None = None,
        max_minutes: float | None = None,
        style_weight: float | None = None,
        perceptual_weight: float | None = None,
        hole_weight: float | None = None,
        hole_mse_weight: float | None = None,
        snapshot_every: int | None = None,
        bf16: bool = False,
    ) -> FineTuner: ...
    @property
    def out(self) -> pathlib.Path:
        """Where the trained model is written."""
    @property
    def run_dir(self) -> pathlib.Path:
        """Checkpoints, log.csv, progress.png, sample grids; a new FineTuner with the same
        run_dir resumes from its checkpoint."""
    @property
    def skipped_images(self) -> int: ...
    @property
    def step(self) -> int: ...
    def run(self, callback: Callable[[Progress], bool | None] | None = None) -> _TrainSummary:
        """Trains to `steps` and writes the model to `out`.

        `callback(progress)` runs after every step; returning False stops early, with a
        checkpoint saved. An exception in the callback (or Ctrl-C) saves a checkpoint and
        propagates."""

def import_checkpoint(src: _StrPath, dst: _StrPath, half: bool = False) -> None:
    """Converts a PyTorch checkpoint of the public reimplementation to safetensors (the
    CLI's `partialconv import`)."""
