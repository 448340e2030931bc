"""The run layer: what every trainer of the project does around its own step and evaluation.

- :mod:`~lab_common.runs.folder`: the run folder's rules (a fresh run refuses a non-empty
  ``--out`` unless ``--overwrite``; ``--resume`` restores the checkpoint and checks the
  settings; metrics written after the checkpoint are dropped), the per-rank RNG states;
- :mod:`~lab_common.runs.output`: the one output format (``config.json`` with the evaluated
  split, ``metrics.jsonl`` numbered from 1 with ``val_top1``, one summary line at the end);
- :mod:`~lab_common.runs.shell`: :class:`TrainingRun`, the shell every trainer runs in
  (process group, folder, resume, config, sampler, per-epoch record -> log -> checkpoint -> barrier,
  final weights and curves).
"""

from .folder import (
    ResumeSettingsError,
    check_resume_settings,
    load_optimizer_state,
    prepare_run_dir,
    resume_run_state,
    save_run_state,
    truncate_metrics,
)
from .output import ACCURACY, EVAL_SPLITS, print_summary, summary_line, write_config
from .shell import UNITS, TrainingRun, optimizer_step

__all__ = [
    "ACCURACY",
    "EVAL_SPLITS",
    "ResumeSettingsError",
    "TrainingRun",
    "UNITS",
    "check_resume_settings",
    "load_optimizer_state",
    "prepare_run_dir",
    "print_summary",
    "resume_run_state",
    "save_run_state",
    "summary_line",
    "truncate_metrics",
    "optimizer_step",
    "write_config",
]
