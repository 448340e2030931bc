"""The trainer options: shared names, range-checked types, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "add_run_arguments",
    "check_model_name",
    "config_from_args",
    "positive_int",
    "non_negative_int",
    "HelpFormatter",
    "positive_float",
    "non_negative_float",
    "run_console",
    "start_options",
]

C = TypeVar("C")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where it says nothing: switches
    (``--amp``, ``--no-progress``) and ``None`` (the help text says what unset means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if switch or action.default is None:
            return action.help
        return super()._get_help_string(action)


#: Option -> (dataclass field, help). ``--epochs``/``--iterations`` are chosen per trainer.
_RUN_OPTIONS: dict[str, tuple[str, str]] = {
    "--out": ("out", "output folder: checkpoints, metrics.jsonl, curves"),
    "--batch-size": ("batch_size", "batch size per process (a torchrun job multiplies it)"),
    "--seed": ("seed", "random seed"),
    "--device": ("device", "auto, cpu, cuda or cuda:N"),
    "--workers": ("workers", "DataLoader worker processes per training process"),
    "--data-root": (
        "data_root",
        "dataset folder (default: $LAB_DATASETS, else ../shared/datasets beside the checkout)",
    ),
}


def _checked_number(kind: type, low: float, inclusive: bool, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


#: argparse ``type=`` callables that reject out-of-range numbers with the flag's name.
positive_int = _checked_number(int, 0, False, "a positive integer")
non_negative_int = _checked_number(int, 0, True, "an integer >= 0")
positive_float = _checked_number(float, 0.0, False, "a number > 0")
non_negative_float = _checked_number(float, 0.0, True, "a number >= 0")


def add_run_arguments(
    parser: argparse.ArgumentParser,
    defaults: Any,
    *,
    duration: str = "epochs",
    data_root_required: bool = False,
) -> argparse._ArgumentGroup:
    """Add the shared run options to ``parser`` with defaults from ``defaults``.

    Args:
        defaults: an instance of the trainer's config dataclass; only the options whose
            field it has are added (``workers`` and ``amp`` are optional).
        duration: ``"epochs"`` or ``"iterations"``, the field that sets the run's length.
    """
    if duration not in ("epochs", "iterations"):
        raise ValueError(f"duration must be 'epochs' or 'iterations', got {duration!r}")
    names = {f.name for f in dataclasses.fields(defaults)}
    g = parser.add_argument_group("run (same options in every trainer of the project)")
    g.add_argument(
        f"--{duration}",
        type=positive_int,
        default=getattr(defaults, duration),
        help=f"training length in {duration}",
    )
    types = {"batch_size": positive_int, "workers": non_negative_int, "seed": int}
    for option, (name, help_text) in _RUN_OPTIONS.items():
        if name not in names:
            continue
        required = name == "data_root" and data_root_required
        g.add_argument(
            option,
            dest=name,
            type=types.get(name, str),
            default=None if required else getattr(defaults, name),
            required=required,
            help=help_text.split(" (default:")[0] if required else help_text,
        )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from the run's last checkpoint in --out",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous run's files in --out (other files and the inputs stay)",
    )
    g.add_argument(
        "--allow-changed",
        nargs="+",
        default=(),
        metavar="SETTING",
        help=f"with --resume: settings that may differ from the checkpoint's (e.g. {duration} lr)",
    )
    if "download" in names:
        g.add_argument(
            "--download",
            action="store_true",
            help="fetch a missing named dataset with torchvision into --data-root",
        )
    if "amp" in names:
        g.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    if "channels_last" in names:
        g.add_argument(
            "--channels-last",
            action="store_true",
            help="models and batches in channels-last memory layout (faster convolutions on "
            "CPUs and tensor-core GPUs; the same numbers up to rounding)",
        )
    if "progress" in names:
        g.add_argument(
            "--no-progress",
            dest="progress",
            action="store_false",
            help="no progress bars or progress lines",
        )
    return g


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """Build the dataclass ``cls`` from the namespace fields it declares (plus ``overrides``)."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    for f in dataclasses.fields(cls):
        if isinstance(f.default, tuple) and isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    values.update(overrides)
    return cls(**values)


def check_model_name(
    name: str, is_model: Callable[[str], bool], option: str = "--model", hint: str = ""
) -> None:
    """Raise a one-line ``ValueError`` if ``is_model(name)`` (``timm.is_model``, passed in:
    this layer does not depend on timm) says timm has no model called ``name``.

    ``option`` names where the name came from (e.g. ``"--teacher"``); ``hint`` says how to list
    the project's own models (e.g. ``"timm.list_models('lavit*') lists the LaViT variants"``).
    """
    if not isinstance(name, str) or not is_model(name):
        raise ValueError(
            f"unknown model {name!r} ({option}): timm has no model of that name; "
            f"{hint + ', ' if hint else ''}timm.list_models() lists all models"
        )


def start_options(args: argparse.Namespace) -> dict[str, Any]:
    """How a run starts (``resume``, ``overwrite``, ``allow_changed``), as ``train(...)`` keywords."""
    return {"resume": args.resume, "overwrite": args.overwrite, "allow_changed": args.allow_changed}


#: errors :func:`run_console` reports as one line with status 2.
_USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    ImportError,
)
_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+")


def _worker_error(err: BaseException) -> str | None:
    """The last line of the original exception a ``DataLoader`` worker raised (torch re-raises
    it with the worker's traceback in the message), or ``None`` for any other error."""
    text = str(err)
    if not _WORKER.search(text):
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1]


def run_console(
    main: Callable[[Sequence[str] | None], Any],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
) -> int:
    """Run a trainer's ``main(argv)`` as a console script; return its exit status.

    0 on success whatever ``main`` returns; on a user error (``ValueError``,
    ``FileNotFoundError``, ``FileExistsError``, ``NotADirectoryError``, ``PermissionError``,
    including :class:`lab_common.CheckpointError`, or an ``ImportError`` of a missing
    optional dependency) one line ``<prog>: error: <message>`` on stderr and status 2; on a
    run that failed after it started (``FloatingPointError``: a non-finite loss) the same line
    and status 1; interrupted by Ctrl-C, status 130. An error raised in a ``DataLoader`` worker
    is the same one line, the original exception's last line rather than the traceback torch
    embeds in it, with the status of its type (1 for another type, e.g. a corrupt image's
    ``OSError``). Any other exception keeps its traceback.
    ``prog`` is the console script's name (default: the basename of ``sys.argv[0]``).
    """
    if prog is None:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "lab"
    try:
        main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        worker = _worker_error(err)
        if isinstance(err, _USER_ERRORS):
            print(f"{prog}: error: {worker or err}", file=sys.stderr)
            return 2
        if worker is not None or isinstance(err, FloatingPointError):
            print(f"{prog}: error: {worker or err}", file=sys.stderr)
            return 1
        raise
    return 0
