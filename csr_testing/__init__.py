"""Builders of tiny models from config (random weights, offline tokenizers) for tests and benchmarks."""
