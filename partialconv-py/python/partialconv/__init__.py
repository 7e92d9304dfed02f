"""Image inpainting with partial convolutions (Liu et al., ECCV 2018), on the Rust core.

>>> import partialconv
>>> inpainter = partialconv.Inpainter.load()          # the bundled model, on the CPU
>>> filled = inpainter.predict("photo.jpg", "mask.png")  # numpy uint8, H×W×3

See docs/python.md in the repository.
"""

# The extension links libtorch without carrying it: loading torch first puts the wheel's
# libtorch (the one the extension was built against) into the process, whichever of
# `import torch` and `import partialconv` the user writes first.
import torch as _torch

# libtorch's C++ ABI holds within a minor series only: another series' libtorch would fail
# to load the extension with a missing-symbol error, or load it and crash.
_TORCH_SERIES = "2.11"


def _series(version):
    return ".".join(version.split("+")[0].split(".")[:2])


if _series(_torch.__version__) != _TORCH_SERIES:
    raise ImportError(
        f"partialconv was built against torch {_TORCH_SERIES}.x, but torch "
        f"{_torch.__version__} is installed; install a {_TORCH_SERIES} release "
        f"(pip install 'torch>={_TORCH_SERIES},<2.12') or build partialconv against yours"
    )

from ._partialconv import (  # noqa: E402  (after the version check)
    FineTuner,
    Inpainter,
    Progress,
    __version__,
    import_checkpoint,
)

__all__ = ["FineTuner", "Inpainter", "Progress", "__version__", "import_checkpoint"]
