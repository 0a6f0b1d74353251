"""Registration into legacy exo: the .pth import hook, the launcher, and the entry points.

Legacy exo is not installable here (it is not on PyPI), so these tests lay out a stand-in ``exo`` package
with the module paths and the few functions the hook patches, shaped as in exo 5f18faec1, and import it
in a fresh interpreter (the .pth file only runs at interpreter start). The real exo run is documented in
the project notes.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

STAND_IN = {
    "exo/__init__.py": "",
    "exo/inference/__init__.py": "",
    "exo/inference/inference_engine.py": """
        inference_engine_classes = {"tinygrad": "TinygradDynamicShardInferenceEngine"}

        def get_inference_engine(inference_engine_name, shard_downloader):
            raise ValueError(f"Unsupported inference engine: {inference_engine_name}")
    """,
    "exo/models.py": """
        model_cards = {"llama-3.2-1b": {"layers": 16, "repo": {"TinygradDynamicShardInferenceEngine": "x/y"}}}
        pretty_name = {"llama-3.2-1b": "Llama 3.2 1B"}
    """,
    "exo/orchestration/__init__.py": "from .node import Node",
    "exo/orchestration/node.py": """
        from exo.inference.inference_engine import get_inference_engine

        class Node:
            def __init__(self, inference_engine, max_generate_tokens=1024, default_sample_temperature=0.0):
                self.inference_engine = inference_engine
                self.max_generate_tokens = max_generate_tokens
                self.default_sample_temperature = default_sample_temperature

            def get_supported_inference_engines(self):
                return ["tinygrad"]

            async def select_best_inference_engine(self):
                self.inference_engine = "swapped to tinygrad"
    """,
    "exo/main.py": """
        import asyncio, json, sys
        from exo.inference.inference_engine import get_inference_engine
        from exo.models import model_cards, pretty_name
        from exo.orchestration import Node

        flag = "--inference-engine"
        name = sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else "tinygrad"
        out = {"argv": sys.argv[1:]}
        try:
            engine = get_inference_engine(name, None)
        except ValueError as exc:
            out["error"] = str(exc)
        else:
            node = Node(engine, max_generate_tokens=64, default_sample_temperature=0.3)
            asyncio.run(node.select_best_inference_engine())
            out.update(engine=type(engine).__name__, kept=node.inference_engine is engine,
                       supported=node.get_supported_inference_engines(), temperature=engine.exo_temperature,
                       limit=engine.exo_max_tokens,
                       card=model_cards.get("qwen2.5-1.5b-instruct-rkllm"),
                       others_kept="llama-3.2-1b" in model_cards,
                       pretty=pretty_name.get("smollm2-135m-instruct"))
        print("RESULT " + json.dumps(out))
    """,
}


@pytest.fixture
def stand_in_exo(tmp_path) -> Path:
    for rel, text in STAND_IN.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def _run(args, stand_in: Path, **env) -> dict:
    full_env = {**os.environ, "PYTHONPATH": str(stand_in), **env}
    if "EXO_RK_NO_HOOK" not in env:
        full_env.pop("EXO_RK_NO_HOOK", None)
    proc = subprocess.run(
        [sys.executable, *args], env=full_env, capture_output=True, text=True, timeout=120, cwd=stand_in
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, f"no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(line[-1][len("RESULT ") :])


def _pth_installed() -> bool:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return any((Path(d) / "exo_rk_hook.pth").is_file() for d in dirs)


@pytest.mark.skipif(
    not _pth_installed(), reason="package not installed with pip (no exo_rk_hook.pth in site-packages)"
)
def test_pth_hook_registers_rkllm_when_exo_loads(stand_in_exo):
    out = _run(["-m", "exo.main", "--inference-engine", "rkllm", "--disable-tui"], stand_in_exo)
    assert out["engine"] == "RKLLMInferenceEngine"
    assert out["kept"] is True  # the node did not swap it for tinygrad
    assert out["supported"] == ["rkllm"]
    assert out["temperature"] == 0.3  # the node's --default-temp reached the engine
    assert out["limit"] == 64  # and its --max-generate-tokens
    assert out["card"] == {"layers": 28, "repo": {"RKLLMInferenceEngine": "Qwen/Qwen2.5-1.5B-Instruct"}}
    assert out["others_kept"] and out["pretty"]


def test_exo_is_untouched_when_the_hook_is_disabled(stand_in_exo):
    out = _run(["-m", "exo.main", "--inference-engine", "rkllm"], stand_in_exo, EXO_RK_NO_HOOK="1")
    assert out["error"] == "Unsupported inference engine: rkllm"


def test_launcher_registers_rkllm_and_defaults_the_engine(stand_in_exo):
    out = _run(["-m", "exo_rk.exo", "--disable-tui"], stand_in_exo, EXO_RK_NO_HOOK="1")
    assert out["argv"] == ["--disable-tui", "--inference-engine", "rkllm"]
    assert out["engine"] == "RKLLMInferenceEngine" and out["kept"] is True


def test_user_cards_file_extends_exo_cards(stand_in_exo, tmp_path):
    cards = tmp_path / "models.toml"
    cards.write_text(
        '[models."my-qwen"]\nbridge_model = "Qwen2.5-0.5B"\nhf_repo = "Qwen/Qwen2.5-0.5B-Instruct"\n'
        "layers = 24\n"
    )
    script = (
        "import json; from exo.models import model_cards; "
        "print('RESULT ' + json.dumps(model_cards['my-qwen']))"
    )
    out = _run(
        ["-c", "import exo_rk.registration as r; r.install_import_hook(); " + script],
        stand_in_exo,
        RKLLM_MODELS_FILE=str(cards),
    )
    assert out == {"layers": 24, "repo": {"RKLLMInferenceEngine": "Qwen/Qwen2.5-0.5B-Instruct"}}


@pytest.mark.skipif(not _pth_installed(), reason="package not installed with pip (no entry points metadata)")
def test_entry_points_for_exo_forks():
    engines = {ep.name: ep for ep in entry_points(group="exo.inference_engines")}
    models = {ep.name: ep for ep in entry_points(group="exo.models")}
    assert engines["rkllm"].load().__name__ == "RKLLMInferenceEngine"
    assert "smollm2-135m-instruct" in models["rkllm"].load()


PACKAGE = Path(__file__).resolve().parents[2] / "exo_rk"
PTH_SOURCE = PACKAGE / "exo_rk_hook.pth"
CHECKOUT_SCRIPT = """
import importlib, json, sys
sys.path.extend(sys.argv[1:3])          # site-packages: its libraries and an installed exo_rk
exec(open(sys.argv[3]).read())           # what site does with exo_rk_hook.pth at start-up
before = "exo_rk" in sys.modules
sys.path.insert(0, sys.argv[4])          # what `python -m exo.main` does after start-up: the checkout first
import exo.inference.inference_engine as engines
import exo_rk, exo_rk.registration as registration
importlib.reload(engines)                # exo's module re-executed: the patch must come back
print("RESULT " + json.dumps({"imported_at_start": before, "exo_rk": exo_rk.__file__,
      "patched_after_reload": registration.is_patched(engines.get_inference_engine),
      "rkllm_known": engines.inference_engine_classes.get("rkllm")}))
"""


def test_the_hook_waits_for_exo_so_a_checkouts_package_wins_and_survives_reload(stand_in_exo, tmp_path):
    """The .pth imports nothing of the package at start-up; when exo loads from a checkout that also holds
    exo_rk, the checkout's copy is the one patched in; ``importlib.reload`` of exo's module is patched again."""
    installed = tmp_path / "site"
    installed.mkdir()
    (installed / "exo_rk").symlink_to(PACKAGE)
    (stand_in_exo / "exo_rk").symlink_to(PACKAGE)
    libraries = next(p for p in sys.path if p.endswith("site-packages"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EXO_RK_NO_HOOK")}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", CHECKOUT_SCRIPT, libraries, str(installed), str(PTH_SOURCE),
         str(stand_in_exo)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, f"no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(line[-1][len("RESULT "):])
    assert out["imported_at_start"] is False
    assert Path(out["exo_rk"]).parent == stand_in_exo / "exo_rk"
    assert out["patched_after_reload"] is True and out["rkllm_known"] == "RKLLMInferenceEngine"
