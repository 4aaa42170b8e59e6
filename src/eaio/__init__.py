"""EAIO — Energy AI Optimizer: local-first building-energy telemetry, MCP servers and agents."""

__version__ = "0.1.0"
__all__ = ["__version__"]
