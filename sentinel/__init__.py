"""Sentinel: observability and compliance sidecar for self-hosted LLMs."""

__version__ = "0.1.0"
