"""layerprune: LLM layer pruning as a job (score, remove, heal, evaluate, export)."""

__version__ = "0.1.0"
