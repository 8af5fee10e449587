"""Distillation entry point: `deepspeed --num_gpus N launch/distill.py --ds DS.json --recipe R.yaml [k=v ...]`.

Also works under torchrun, srun (one task per GPU) and as `python launch/distill.py` (1 rank);
`--teacher` / `--student` take a size (vitg, vitb, ...) or a path (see `distill --help`).
"""
import sys

from giant.commands.distill import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
