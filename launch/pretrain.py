"""Pre-training entry point: `deepspeed --num_gpus N launch/pretrain.py --ds DS.json --recipe R.yaml [k=v ...]`.

Also works under torchrun, srun (one task per GPU) and as `python launch/pretrain.py` (1 rank).
"""
import sys

from giant.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
