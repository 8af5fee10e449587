"""Finetune entry point: `deepspeed --num_gpus N launch/finetune.py --ds DS.json --recipe R.yaml [k=v ...]`.

Also works under torchrun, srun (one task per GPU) and as `python launch/finetune.py` (1 rank).
"""
import sys

from giant.commands.finetune import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
