"""CLKD: Class-aware Logit Knowledge Distillation — loss, distiller and trainer."""

__version__ = "0.1.0"

__all__: list[str] = []
