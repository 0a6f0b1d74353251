"""Signatures of legacy exo (commit 5f18faec1) the compat stand-ins must match, read from exo's source:
``exo/inference/inference_engine.py``, ``exo/inference/shard.py``, ``exo/download/shard_download.py``,
``exo/inference/dummy_inference_engine.py`` (for ``sample``: see ``exo_rk.compat``)."""

INFERENCE_ENGINE = {
    "encode": "(self, shard, prompt)",
    "sample": "(self, x, temp=0.0, top_p=1.0)",  # DummyInferenceEngine's; the node calls sample(x, temp=...)
    "decode": "(self, shard, tokens)",
    "infer_tensor": "(self, request_id, shard, input_data, inference_state=None)",
    "load_checkpoint": "(self, shard, path)",
    "save_checkpoint": "(self, shard, path)",
    "save_session": "(self, key, value)",
    "clear_session": "(self)",
    "infer_prompt": "(self, request_id, shard, prompt, inference_state=None)",
}
INFERENCE_ENGINE_ABSTRACT = {"encode", "sample", "decode", "infer_tensor", "load_checkpoint"}
INFERENCE_ENGINE_ASYNC = set(INFERENCE_ENGINE)

SHARD_FIELDS = ("model_id", "start_layer", "end_layer", "n_layers")
SHARD = {
    "is_first_layer": "(self)",
    "is_last_layer": "(self)",
    "get_layer_count": "(self)",
    "to_dict": "(self)",
    "from_dict": "(data)",  # a plain function in the class body, called as Shard.from_dict(d)
    "overlaps": "(self, other)",
}
SHARDS_OVERLAP = "(shard1, shard2)"

SHARD_DOWNLOADER = {
    "ensure_shard": "(self, shard, inference_engine_name)",
    "get_shard_download_status": "(self, inference_engine_name)",
}
SHARD_DOWNLOADER_ABSTRACT = {"ensure_shard", "on_progress", "get_shard_download_status"}
