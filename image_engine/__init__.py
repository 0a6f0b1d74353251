"""image_engine: super-resolution and LCM text-to-image on RKNNLite or onnxruntime."""

__version__ = "0.1.0"
