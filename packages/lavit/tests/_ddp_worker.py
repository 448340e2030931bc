"""Run under ``torchrun``: train from ``lavit-train`` arguments, then save this rank's params."""

import os
import sys

import torch

from lab_common.cli import config_from_args
from lavit.train import TrainConfig, build_parser, train

if __name__ == "__main__":
    args = build_parser().parse_args(sys.argv[1:])
    cfg = config_from_args(TrainConfig, args)
    model = train(cfg, resume=args.resume)
    torch.save(model.state_dict(), os.path.join(cfg.out, f"rank{os.environ['RANK']}.pt"))
