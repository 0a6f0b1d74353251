"""Tests of the exo image engine (RKNNImageInferenceEngine) against a real image server."""
