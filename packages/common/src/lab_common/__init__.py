"""Small shared utilities for the lavit, clkd, trg-kd and gp-maml packages."""

__version__ = "0.1.0"

__all__: list[str] = []
