"""Forge: LLM agents that write verified, honestly timed GPU kernels for PyTorch operators."""

__version__ = "0.1.0"
