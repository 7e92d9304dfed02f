"""maturin's PEP 517 hooks, with libtorch taken from the build environment's torch.

torch-sys (the Rust crate that compiles against libtorch) reads LIBTORCH from its
environment, and nothing in Cargo or maturin configuration can compute it. Under pip's build
isolation the right libtorch is the torch 2.11 of `[build-system].requires`, which
only this process can locate, so it sets the variables before maturin starts cargo. They
override the repository's `.cargo/config.toml`, which points at the developer venv instead.
"""

import importlib.util
import os

_spec = importlib.util.find_spec("torch")
if _spec is None or not _spec.submodule_search_locations:
    raise ImportError("partialconv's build needs torch 2.11 (see [build-system].requires)")
os.environ["LIBTORCH"] = _spec.submodule_search_locations[0]
# PyPI's torch 2.11 wheels are built with the C++11 ABI; finding that out by importing
# torch would cost seconds per hook.
os.environ["LIBTORCH_CXX11_ABI"] = "1"
# Would make torch-sys ask whichever `python3` is first on PATH instead.
os.environ.pop("LIBTORCH_USE_PYTORCH", None)

from maturin import (  # noqa: E402  (after the environment is set)
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]
