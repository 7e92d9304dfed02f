"""Image inpainting with partial convolutions (Liu et al., ECCV 2018), on the Rust core.

>>> import partialconv
>>> inpainter = partialconv.Inpainter.load()          # the bundled model, on the CPU
>>> filled = inpainter.predict("photo.jpg", "mask.png")  # numpy uint8, H×W×3

See docs/python.md in the repository.
"""

# The extension links libtorch without carrying it: loading torch first puts the wheel's
# libtorch (the one the extension was built against) into the process, whichever of
# `import torch` and `import partialconv` the user writes first.
import torch as _torch  # noqa: F401

from ._partialconv import (
    FineTuner,
    Inpainter,
    Progress,
    __version__,
    import_checkpoint,
)

__all__ = ["FineTuner", "Inpainter", "Progress", "__version__", "import_checkpoint"]
