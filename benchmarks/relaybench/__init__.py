"""Helpers of `python -m benchmarks.relay`: servers, SSE client workers, process stats."""
