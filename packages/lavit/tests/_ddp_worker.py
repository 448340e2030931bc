"""Run under ``torchrun``: train with lavit.train's CLI arguments, then save this rank's params."""

import os
import sys

import torch

from lavit.train import build_parser, train

if __name__ == "__main__":
    args = build_parser().parse_args(sys.argv[1:])
    model = train(args)
    torch.save(model.state_dict(), os.path.join(args.output, f"rank{os.environ['RANK']}.pt"))
