"""The trainer layer: the command-line dialect every console script of the project shares.

Each trainer keeps its settings in a frozen dataclass; argparse only builds it.
:func:`add_run_arguments` adds the shared options (same names, same meanings in
``lavit-train``, ``clkd-train``, ``trg-kd-train`` and ``gp-maml-train``) with defaults read
from that dataclass, :class:`HelpFormatter` shows the defaults in ``--help``, :func:`config_from_args` turns the
parsed namespace back into the
dataclass, and :func:`run_console` makes a console script exit 0 on success, 2 with one clear
line on a user error and 1 with one clear line on a run that diverged (a non-finite loss).

Shared options (``--batch-size`` is per process: a ``torchrun`` job of ``P`` processes
trains on ``P × batch-size`` images a step)::

    --out DIR  --resume  --overwrite  --allow-changed SETTING...  --epochs N | --iterations N
    --batch-size N  --seed N  --device {auto,cpu,cuda,cuda:N}  --amp  --workers N
    --no-progress  --data-root DIR

``--resume``, ``--overwrite`` and ``--allow-changed`` are how a run is started, not settings
of the run: they are not config fields (see :mod:`lab_common.runs.folder` for their rules).
"""

from .options import (
    HelpFormatter,
    add_run_arguments,
    check_model_name,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_console,
    start_options,
)

__all__ = [
    "HelpFormatter",
    "add_run_arguments",
    "check_model_name",
    "config_from_args",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "run_console",
    "start_options",
]
