"""`giant reshard PATH`: the universal copy of a ZeRO checkpoint, ahead of a resume on a
different number of ranks."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from giant.commands._args import ArgumentParser
from giant.commands.export import PATH_HELP, TAG_HELP, TRUST_HELP, log

DESCRIPTION = """`giant reshard PATH`: write the universal copy of a checkpoint ahead of a resume on a
    different number of ranks (the resume does it itself otherwise, on rank 0, while the other
    ranks wait). Runs on CPU, no process group; needs about the checkpoint's size again on disk.
    The checkpoint loads weights-only (DeepSpeed's converter included): no code from it runs."""


def main(argv: Optional[list] = None) -> int:
    p = ArgumentParser(prog="giant reshard", description=DESCRIPTION)
    p.add_argument("path", help=PATH_HELP)
    p.add_argument("--tag", default=None, help=TAG_HELP)
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    args = p.parse_args(argv)
    from giant.engine.checkpoint import latest_tag, read_meta, resolve_root
    from giant.engine.reshard import convert_universal
    from giant.errors import CheckpointError

    root, tag = resolve_root(Path(args.path), args.tag)
    tag = tag or latest_tag(root)
    if not tag:
        raise CheckpointError(f"{args.path}: no complete checkpoint to convert")
    meta = read_meta(root / tag)
    if meta.get("zero_stage", 0) == 0:
        raise CheckpointError(f"{root / tag}: a ZeRO-0 checkpoint holds one full copy and resumes on any "
                              "number of ranks as it is")
    dst = convert_universal(root, tag, args.trust_pickle)
    log.info("wrote %s: resume with any number of ranks and a ZeRO-%d config", dst, meta["zero_stage"])
    return 0
