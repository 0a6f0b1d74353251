"""The settings models: precedence, aliases, config files, the bridge's own image names, README drift."""

from __future__ import annotations

import argparse

import pytest

from exo_rk.model_cards import load_cards
from exo_rk.settings import PROGRAM as EXO
from image_engine.config import PROGRAM as IMAGE
from rk_common.settings import SettingsError
from rk_common.settings_doc import drifted, render
from rkllama_bridge.config import PROGRAM as BRIDGE
from rkllama_bridge.config import image_env_for_bridge, warn_ignored_image_names
from tests.support import REPO


def parse(program, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    program.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def exo_file(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('connect_timeout = 7\nservers = ["board-1:8080", "board-2:9090"]\n'
                    '[models."my-qwen"]\nhf_repo = "Qwen/Qwen2.5-0.5B-Instruct"\nlayers = 24\n')
    return path


def test_flag_beats_env_beats_file_beats_default(exo_file):
    env = {"RKLLM_CONNECT_TIMEOUT": "8"}
    assert EXO.load(parse(EXO, "--config", str(exo_file), "--connect-timeout", "9"), env).connect_timeout == 9
    assert EXO.load(parse(EXO, "--config", str(exo_file)), env).connect_timeout == 8
    assert EXO.load(parse(EXO, "--config", str(exo_file)), {}).connect_timeout == 7
    assert EXO.load(parse(EXO), {}).connect_timeout == EXO.model().connect_timeout == 5


def test_a_config_file_holds_settings_and_model_cards(exo_file):
    settings = EXO.load(None, {"EXO_RK_CONFIG": str(exo_file)})
    assert settings.servers == ("http://board-1:8080", "http://board-2:9090")
    assert settings.models_file == exo_file
    assert load_cards(settings.models_file)["my-qwen"].layers == 24


def test_yaml_files_work_and_unknown_keys_are_refused(tmp_path):
    good = tmp_path / "bridge.yaml"
    good.write_text("runtime: sim\npreload: [a, b]\nkeep_alive: 10m\nsr_num_workers: 3\nimages: false\n")
    config = BRIDGE.load(parse(BRIDGE, "--config", str(good)), {})
    assert (config.runtime, config.preload, config.keep_alive) == ("sim", ("a", "b"), "10m")
    assert config.sr.num_workers == 3 and config.images is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("queue_maxx: 3\n")
    with pytest.raises(SettingsError, match="unknown setting 'queue_maxx'"):
        BRIDGE.load(parse(BRIDGE, "--config", str(bad)), {})


def test_prefixed_names_win_over_their_seed_aliases():
    settings = EXO.from_env({"EXO_RK_TOKEN": "new", "RKLLM_TOKEN": "old", "RKLLM_MODE": "ONESHOT"})
    assert settings.token == "new" and settings.mode == "oneshot"
    assert EXO.from_env({"RKLLAMA_BRIDGE_TOKEN": "shared"}).token == "shared"
    image = IMAGE.from_env({"PORT": "4300", "SR_QUEUE_MAX": "5", "QUEUE_MAX": "6", "IMAGE_ENGINE_QUEUE_MAX": "7"})
    assert (image.port, image.sr.queue_max, image.generate.queue_max) == (4300, 5, 7)


def test_the_bridge_reads_its_image_settings_under_its_own_prefix_only(caplog):
    generic = {"QUEUE_MAX": "1", "NUM_WORKERS": "2", "SR_QUEUE_MAX": "3", "MODEL_ROOT": "/elsewhere", "PORT": "1"}
    config = BRIDGE.from_env(generic)
    defaults = BRIDGE.model()
    assert (config.generate, config.sr, config.port) == (defaults.generate, defaults.sr, defaults.port)
    assert sorted(warn_ignored_image_names(generic)) == ["MODEL_ROOT", "NUM_WORKERS", "QUEUE_MAX", "SR_QUEUE_MAX"]
    assert "RKLLAMA_BRIDGE_IMAGE_MODEL_ROOT" in caplog.text
    config = BRIDGE.from_env(image_env_for_bridge(generic))
    assert (config.generate.queue_max, config.generate.num_workers, config.sr.queue_max) == (1, 2, 3)
    assert str(config.generate.model_root) == "/elsewhere" and config.port == defaults.port


def test_the_historical_flags_still_parse():
    argv = ["--models", "/m", "--runtime", "sim", "--host", "0.0.0.0", "--port", "0", "--token", "t",
            "--queue-max", "0", "--instances", "2", "--preload", "a", "--preload", "b", "--port-file", "/p",
            "--keep-alive", "-1", "--max-memory-mb", "900", "--state-file", "/s", "--no-restore",
            "--no-prefix-reuse", "--npu-concurrent", "--no-images", "--request-timeout", "2.5",
            "--sim-profile", "instant", "--sim-decode-tok-s", "0", "--rkllm-abi", "1.2", "--log-level", "DEBUG"]
    c = BRIDGE.load(parse(BRIDGE, *argv), {})
    assert (str(c.models_dir), c.queue_max, c.instances, c.preload, c.keep_alive) == ("/m", 0, 2, ("a", "b"), "-1")
    assert (c.restore, c.prefix_reuse, c.npu_concurrent, c.images) == (False, False, True, False)
    assert (c.request_timeout, c.sim_decode_tok_s, c.rkllm_abi, c.log_level) == (2.5, 0.0, "1.2", "DEBUG")
    gateway = EXO.load(parse(EXO, "--bridge", "a:1", "--bridge", "b:2", "--api-token", "x", "--mode", "stream",
                             "--default-model", "m", "--port", "0"), {})
    assert gateway.servers == ("http://a:1", "http://b:2") and (gateway.api_token, gateway.port) == ("x", 0)
    image = IMAGE.load(parse(IMAGE, "--threads", "3", "--port", "0", "--token", "t"), {})
    assert (image.http_threads, image.port, image.token) == (3, 0, "t")


@pytest.mark.parametrize("program, env, message", [
    (EXO, {"RKLLM_REQUEST_TTL": "100"}, "request_ttl (100 s) is shorter than first_token_timeout"),
    (EXO, {"RKLLM_TOKEN_TIMEOUT": "400"}, "request_ttl (360 s) is shorter than token_timeout"),
    (EXO, {"EXO_RK_REQUEST_TIMEOUT": "60"}, "request_timeout (60 s) is shorter than first_token_timeout"),
    (EXO, {"RKLLM_HEALTH_INTERVAL": "30"}, "health_max_backoff"),
    (BRIDGE, {"RKLLAMA_BRIDGE_SR_MAX_UPLOAD_BYTES": str(50 * 2**20)}, "does not fit under max_body_bytes"),
    (BRIDGE, {"RKLLAMA_BRIDGE_KEEP_ALIVE": "soon"}, "RKLLAMA_BRIDGE_KEEP_ALIVE must be a duration"),
    (IMAGE, {"SR_INPUT_SIZE": "32", "SR_OUTPUT_SIZE": "33"}, "SR_OUTPUT_SIZE"),
    (IMAGE, {"DEFAULT_SIZE": "big"}, "DEFAULT_SIZE must be WIDTHxHEIGHT"),
])
def test_contradictory_or_malformed_settings_are_refused_in_one_line(program, env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        program.from_env(env)
    assert "\n" not in str(caught.value)


def test_a_bridge_upload_limit_left_at_its_default_follows_the_body_cap():
    assert BRIDGE.from_env({"RKLLAMA_BRIDGE_MAX_BODY_BYTES": str(2**20)}).sr.max_upload_bytes == 2**20 - 64 * 1024
    assert IMAGE.from_env({}).sr.max_upload_bytes == 50 * 2**20  # the standalone program keeps the seed's


def test_the_defaults_are_coherent():
    for program in (EXO, BRIDGE, IMAGE):
        program.build({})  # validate() runs: the defaults never contradict each other


def test_every_setting_has_help_and_unique_names():
    for program in (EXO, BRIDGE, IMAGE):
        names = [name for leaf in program.leaves for name in program.env_names(leaf)]
        assert len(names) == len(set(names)), program.name
        assert all(leaf.spec.help for leaf in program.leaves), program.name


def test_readme_settings_tables_match_the_models():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.count("<!-- settings-table ") == 3
    assert drifted(text) == [], "run: python -m rk_common.settings_doc"


def test_a_stale_table_is_detected_and_regenerated():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    stale = text.replace("| `queue_max` | `--queue-max` | `RKLLAMA_BRIDGE_QUEUE_MAX` | 8 |",
                         "| `queue_max` | `--queue-max` | `RKLLAMA_BRIDGE_QUEUE_MAX` | 9 |")
    assert stale != text
    assert drifted(stale) == ["rkllama_bridge.config:PROGRAM"]
    assert render(stale) == text
