"""`giant export RUN_DIR`: consolidate a DeepSpeed checkpoint into the next stage's artifact."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from giant.commands._args import ArgumentParser

log = logging.getLogger("giant.engine.checkpoint")  # the logger these lines always came from
DESCRIPTION = """`giant export RUN_DIR [--tag step_N|best] [--out DIR]`: consolidate for the next stage. The
    checkpoint loads weights-only: exporting a run dir from elsewhere runs none of its code."""
PATH_HELP = "run dir, its checkpoints/ dir, or one step_* checkpoint dir"
TAG_HELP = ("checkpoint tag step_N, or best: the best evaluation's (checkpoint.export best|both) "
            "(default: latest complete)")
TRUST_HELP = ("load the checkpoint with DeepSpeed's unrestricted unpickler, which runs code stored "
              "in the files (only for run dirs you trust); by default it loads weights only")


def main(argv: Optional[list] = None) -> int:
    p = ArgumentParser(prog="giant export", description=DESCRIPTION)
    p.add_argument("path", help=PATH_HELP)
    p.add_argument("--tag", default=None, help=TAG_HELP)
    p.add_argument("--out", default=None, help="output dir (default: the run dir)")
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    args = p.parse_args(argv)
    from giant.engine.checkpoint import resolve_root
    from giant.engine.export import export_weights

    root, tag = resolve_root(Path(args.path), args.tag)
    out = Path(args.out) if args.out else (root.parent if root.name == "checkpoints" else root)
    weights, model_json = export_weights(root, out, tag, trust_pickle=args.trust_pickle)
    log.info("wrote %s and %s", weights, model_json)
    return 0
