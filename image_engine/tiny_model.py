"""Write a tiny random LCM model set with the real file layout, tensor names and layouts.

The result is shaped like an LCM-Dreamshaper ONNX export (``text_encoder/``, ``unet/``, ``vae_decoder/``
each with ``model.onnx`` + ``config.json``; ``tokenizer/``; ``scheduler/``), so everything that serves a real
model runs on it: the text encoder takes ``input_ids`` (1, 77) int32 and gives ``last_hidden_state``; the
UNet takes ``sample`` (1, 4, h, w), ``timestep`` (1,) int64, ``encoder_hidden_states`` (1, 77, D) and
``timestep_cond`` (1, 256) and gives ``out_sample``; the VAE decoder maps ``latent_sample`` to ``sample``
(1, 3, 8h, 8w). Shapes are fixed like a converted RKNN model. Weights are random (seeded): the images are
noise, but every input changes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from image_engine.clip_tokenizer import BOS, EOS, byte_to_unicode

OPSET = 18
SEQ_LEN = 77
COND_DIM = 256
LATENT_CHANNELS = 4
VAE_SCALE = 8
# Node names as torch's ONNX export gives them (``/<module path>/<Op>``), so that LoRA keys can find the
# layers: the UNet's module paths of a cross-attention key projection, the guidance embedding and conv_out.
_TEXT_PROJ = "/down_blocks.0/attentions.0/transformer_blocks.0/attn2/to_k/MatMul"
_COND_PROJ = "/time_embedding/cond_proj/MatMul"
_CONV_OUT = "/conv_out/Conv"
# Words whose merges make the tiny vocabulary tokenize common prompt words into whole tokens.
_WORDS = ("a", "the", "of", "at", "in", "cinematic", "forest", "sunrise", "sunset", "city", "photograph",
          "futuristic", "portrait", "mountain", "cat", "dog")


def write_tiny_model(directory: str | Path, width: int = 64, height: int = 64, hidden: int = 32,
                     seed: int = 0, rknn_placeholders: bool = False, unet_layers: int = 0) -> Path:
    """Write the model set into ``directory`` (created) and return it.

    ``rknn_placeholders`` also writes a ``model.rknn`` beside each ``model.onnx``: the fake RKNNLite runs
    the sibling ONNX, so the RKNN code path can be exercised off-device. ``unet_layers`` adds that many
    64-channel 3x3 convolutions to the UNet, to make steps take measurable time (queueing, cancellation).
    """
    if width % VAE_SCALE or height % VAE_SCALE or width <= 0 or height <= 0:
        raise ValueError(f"tiny model size must be positive multiples of {VAE_SCALE}, got {width}x{height}")
    try:
        import onnx
    except ImportError:
        raise RuntimeError("writing ONNX models needs the onnx package: pip install 'exo-rk[tools]'") from None
    root = Path(directory)
    rng = np.random.RandomState(seed)
    vocab, merges = _tiny_vocab()
    _write_tokenizer(root / "tokenizer", vocab, merges)
    lh, lw = height // VAE_SCALE, width // VAE_SCALE
    graphs = {
        "text_encoder": (_text_encoder(rng, len(vocab), hidden),
                         {"hidden_size": hidden, "max_position_embeddings": SEQ_LEN, "vocab_size": len(vocab)}),
        "unet": (_unet(rng, lh, lw, hidden, unet_layers),
                 {"in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "sample_size": [lh, lw],
                  "time_cond_proj_dim": COND_DIM, "cross_attention_dim": hidden}),
        "vae_decoder": (_vae_decoder(rng, lh, lw),
                        {"latent_channels": LATENT_CHANNELS, "scaling_factor": 0.18215, "sample_size": height}),
    }
    for name, (graph, config) in graphs.items():
        sub = root / name
        sub.mkdir(parents=True, exist_ok=True)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                       producer_name="image-engine-tiny")
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(sub / "model.onnx"))
        (sub / "config.json").write_text(json.dumps(config, indent=1))
        if rknn_placeholders:
            (sub / "model.rknn").write_bytes(b"RKNN placeholder: the fake RKNNLite runs model.onnx beside it\n")
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "LCMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "original_inference_steps": 50, "set_alpha_to_one": True,
        "prediction_type": "epsilon", "steps_offset": 1, "timestep_scaling": 10.0}, indent=1))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "LatentConsistencyModelPipeline",
                                                        "tiny": True}, indent=1))
    return root


def _tiny_vocab() -> tuple[dict, list[tuple[str, str]]]:
    table = byte_to_unicode()
    chars = [table[b] for b in range(256)]
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: every prefix becomes a token
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                tokens.append(pair[0] + pair[1])
            parts = [parts[0] + parts[1], *parts[2:]]
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _write_tokenizer(path: Path, vocab: dict, merges: list[tuple[str, str]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                     encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    (path / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": SEQ_LEN,
                                                            "do_lower_case": True,
                                                            "tokenizer_class": "CLIPTokenizer"}, indent=1))


def _init(rng: np.random.RandomState, name: str, shape: tuple[int, ...], scale: float):
    from onnx import numpy_helper

    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _text_encoder(rng, vocab_size: int, hidden: int):
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Gather", ["token_embedding", "input_ids"], ["tok"], axis=0),
        helper.make_node("Add", ["tok", "position_embedding"], ["summed"]),
        helper.make_node("Tanh", ["summed"], ["last_hidden_state"]),
        helper.make_node("ReduceMean", ["last_hidden_state", "seq_axis"], ["pooler_output"], keepdims=0),
    ]
    inits = [_init(rng, "token_embedding", (vocab_size, hidden), 1.0),
             _init(rng, "position_embedding", (SEQ_LEN, hidden), 0.3),
             helper.make_tensor("seq_axis", TensorProto.INT64, [1], [1])]
    return helper.make_graph(
        nodes, "text_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, SEQ_LEN])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, SEQ_LEN, hidden]),
         helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, [1, hidden])],
        inits)


def _unet(rng, lh: int, lw: int, hidden: int, layers: int):
    from onnx import TensorProto, helper

    c = LATENT_CHANNELS
    body, body_inits = _conv_stack(rng, layers)
    nodes = [
        # a per-channel bias from the text, the guidance embedding and the timestep
        helper.make_node("ReduceMean", ["encoder_hidden_states", "seq_axis"], ["text_mean"], keepdims=0),
        helper.make_node("MatMul", ["text_mean", "w_text"], ["text_bias"], name=_TEXT_PROJ),
        helper.make_node("MatMul", ["timestep_cond", "w_cond"], ["cond_bias"], name=_COND_PROJ),
        helper.make_node("Cast", ["timestep"], ["t_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["t_float", "t_scale"], ["t_scaled"]),
        helper.make_node("Unsqueeze", ["t_scaled", "last_axis"], ["t_col"]),
        helper.make_node("Mul", ["t_col", "w_time"], ["time_bias"]),
        helper.make_node("Sum", ["text_bias", "cond_bias", "time_bias"], ["bias_flat"]),
        helper.make_node("Reshape", ["bias_flat", "bias_shape"], ["bias"]),
        # spatial mixing: a 3x3 convolution, squashed, plus a share of the input (like a noise estimate)
        *body,
        helper.make_node("Conv", ["features" if layers else "sample", "w_conv", "b_conv"], ["conv"],
                         pads=[1, 1, 1, 1], name=_CONV_OUT),
        helper.make_node("Add", ["conv", "bias"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["squashed"]),
        helper.make_node("Mul", ["sample", "skip"], ["skipped"]),
        helper.make_node("Add", ["squashed", "skipped"], ["out_sample"]),
    ]
    inits = [helper.make_tensor("seq_axis", TensorProto.INT64, [1], [1]),
             _init(rng, "w_text", (hidden, c), 0.5), _init(rng, "w_cond", (COND_DIM, c), 0.05),
             helper.make_tensor("t_scale", TensorProto.FLOAT, [1], [1e-3]),
             helper.make_tensor("last_axis", TensorProto.INT64, [1], [1]),
             _init(rng, "w_time", (1, c), 1.0),
             helper.make_tensor("bias_shape", TensorProto.INT64, [4], [1, c, 1, 1]),
             _init(rng, "w_conv", (c, 64 if layers else c, 3, 3), 0.3 if not layers else 0.02),
             _init(rng, "b_conv", (c,), 0.1), *body_inits,
             helper.make_tensor("skip", TensorProto.FLOAT, [1], [0.5])]
    return helper.make_graph(
        nodes, "unet",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, [1, c, lh, lw]),
         helper.make_tensor_value_info("timestep", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [1, SEQ_LEN, hidden]),
         helper.make_tensor_value_info("timestep_cond", TensorProto.FLOAT, [1, COND_DIM])],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, [1, c, lh, lw])],
        inits)


def _conv_stack(rng, layers: int):
    """``layers`` 64-channel 3x3 convolutions with ReLU from ``sample`` to ``features`` (empty for 0)."""
    from onnx import helper

    nodes, inits, prev, width = [], [], "sample", LATENT_CHANNELS
    for i in range(layers):
        out = "features" if i == layers - 1 else f"hidden_{i}"
        nodes += [helper.make_node("Conv", [prev, f"w_hidden_{i}"], [f"pre_{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"pre_{i}"], [out])]
        inits.append(_init(rng, f"w_hidden_{i}", (64, width, 3, 3), (2.0 / (9 * width)) ** 0.5))
        prev, width = out, 64
    return nodes, inits


def _vae_decoder(rng, lh: int, lw: int):
    from onnx import TensorProto, helper

    block = VAE_SCALE * VAE_SCALE
    nodes = [
        helper.make_node("Conv", ["latent_sample", "w_up", "b_up"], ["features"], kernel_shape=[1, 1]),
        helper.make_node("DepthToSpace", ["features"], ["pixels"], blocksize=VAE_SCALE, mode="DCR"),
        helper.make_node("Tanh", ["pixels"], ["sample"]),
    ]
    inits = [_init(rng, "w_up", (3 * block, LATENT_CHANNELS, 1, 1), 0.2), _init(rng, "b_up", (3 * block,), 0.1)]
    return helper.make_graph(
        nodes, "vae_decoder",
        [helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, [1, LATENT_CHANNELS, lh, lw])],
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, [1, 3, lh * VAE_SCALE, lw * VAE_SCALE])],
        inits)
