"""GP-MAML, GP-ANIL, GP-BOIL: adaptive pseudo-labelling for few-shot MAML-family learners, on torch.func."""

__version__ = "0.1.0"

__all__: list[str] = []
