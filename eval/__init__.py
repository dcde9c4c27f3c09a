"""Evaluation scripts and helpers (perplexity, benchmarks), run as `python -m eval.<name>`."""
