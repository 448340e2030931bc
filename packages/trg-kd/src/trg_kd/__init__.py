"""TRG: Knowledge Distillation via Token-level Relationship Graph — losses, token extraction and trainer."""

__version__ = "0.1.0"

__all__: list[str] = []
