"""Tests of LCM text-to-image: scheduler, tokenizer, pipeline and the HTTP service."""
