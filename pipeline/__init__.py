"""Orchestration: config models, the stage graph, the Ray Data runner, checkpoints, CLI."""
__version__ = "0.1.0"
