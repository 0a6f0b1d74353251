"""The compat stand-ins have legacy exo's signatures (recorded in ``tests/exo_rk/exo_facts.py``)."""

from __future__ import annotations

import inspect
import re

import pytest

from exo_rk import compat
from tests.exo_rk import exo_facts

pytestmark = pytest.mark.skipif(compat.HAVE_EXO, reason="exo is installed: compat re-exports exo's own types")


def _params(function) -> str:
    """A signature without annotations, as recorded: ``(self, x, temp=0.0, top_p=1.0)``."""
    sig = inspect.signature(function)
    sig = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                      return_annotation=inspect.Signature.empty)
    return re.sub(r"\s+", "", str(sig)).replace(",", ", ")


@pytest.mark.parametrize("name", sorted(exo_facts.INFERENCE_ENGINE))
def test_inference_engine_methods_match_exo(name):
    method = getattr(compat.InferenceEngine, name)
    assert _params(method) == exo_facts.INFERENCE_ENGINE[name]
    assert inspect.iscoroutinefunction(method)
    assert getattr(method, "__isabstractmethod__", False) == (name in exo_facts.INFERENCE_ENGINE_ABSTRACT)


def test_shard_matches_exo():
    assert tuple(f.name for f in compat.Shard.__dataclass_fields__.values()) == exo_facts.SHARD_FIELDS
    for name, recorded in exo_facts.SHARD.items():
        assert _params(getattr(compat.Shard, name)) == recorded, name
    assert _params(compat.shards_overlap) == exo_facts.SHARDS_OVERLAP
    a, b = compat.Shard("m", 0, 9, 20), compat.Shard("m", 9, 19, 20)
    assert a.overlaps(b) and not a.overlaps(compat.Shard("m", 10, 19, 20))
    assert not a.overlaps(compat.Shard("other", 0, 9, 20))
    assert compat.Shard.from_dict(a.to_dict()) == a


def test_shard_downloader_matches_exo():
    for name, recorded in exo_facts.SHARD_DOWNLOADER.items():
        assert _params(getattr(compat.ShardDownloader, name)) == recorded, name
    assert compat.ShardDownloader.__abstractmethods__ == exo_facts.SHARD_DOWNLOADER_ABSTRACT


async def test_clear_session_empties_the_engines_session():
    from exo_rk.engine import RKLLMInferenceEngine

    engine = RKLLMInferenceEngine(None)
    await engine.save_session("k", 1)
    await engine.clear_session()
    assert engine.session == {} and compat.InferenceEngine.session == {}
