"""Evaluate entry point: `deepspeed --num_gpus N launch/evaluate.py RUN_DIR [--recipe R.yaml] [k=v ...]`.

Also works under torchrun, srun (one task per GPU) and as `python launch/evaluate.py` (1 rank).
"""
import sys

from giant.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
