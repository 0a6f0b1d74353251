"""rkllama_bridge: the on-device server that owns RKLLM handles and RKNN contexts."""

__version__ = "0.1.0"
