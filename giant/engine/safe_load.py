"""Torch files from elsewhere, loaded without running their code.

`torch.load` unpickles, and a pickle can run any code. giant loads every torch file it reads
itself with `weights_only=True` (tensors, containers and the few plain types below), and while
`giant export` / `giant reshard` run DeepSpeed's loaders, which pass `weights_only=False`, it
forces them to weights-only too with torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD (read at every load).
Resuming a run is the exception: DeepSpeed's engine.load_checkpoint unpickles the run dir's
optimizer state unrestricted (giant.commands._args.TRUST_NOTE), so a run dir from someone else
must be trusted.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from giant.errors import CheckpointError

log = logging.getLogger(__name__)

FORCE, NO_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
# torch.save's legacy (non-zip) format starts with this number, pickled
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C.to_bytes(10, "little")


def torch_file_kind(path: Path) -> str | None:
    """'zip' (torch.save's format since 1.6), 'legacy' (the older pickle stream) or None when
    the file is neither, judged from its header without unpickling anything."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return "zip" if any(n.endswith("data.pkl") for n in z.namelist()) else None
    except (OSError, zipfile.BadZipFile):
        return None
    return "legacy" if head[:1] == b"\x80" and LEGACY_MAGIC in head else None


def numpy_types() -> list:
    """numpy scalars (a float64 metric in a client state) and their dtypes: plain values."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    return [np.dtype, scalar, *dict.fromkeys(d for d in dtypes if d is not np.dtype)]


def deepspeed_types() -> list:
    """What DeepSpeed pickles into its checkpoints besides tensors and containers (0.15-0.19):
    loss-scaler objects, the ZeRO stage enum and ZeRO-1/2's fragment addresses; each only sets
    attributes when unpickled."""
    import importlib

    found = []
    for module, name in (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                         ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: it is not written either
            continue
    return found + numpy_types()


class SavedArgs:
    """What an official training script's pickled `argparse.Namespace` (its `args`) becomes under
    weights-only loading: a plain attribute holder, so reading the file neither runs code nor
    needs argparse in a library module. `vars()` gives its fields, as for a Namespace."""


# the official scripts save `args`; weights-only loading rebuilds it as SavedArgs
OFFICIAL_ARGS = (SavedArgs, "argparse.Namespace")


def _name(obj: Any) -> str:
    return obj[1] if isinstance(obj, tuple) else f"{obj.__module__}.{obj.__qualname__}"


@contextlib.contextmanager
def allowed(types: Iterable) -> Iterator[None]:
    """`types` may be unpickled by weights-only loads inside this block (and only there)."""
    with torch.serialization.safe_globals(list(types)):
        yield


@contextlib.contextmanager
def weights_only_everywhere(types: Iterable) -> Iterator[None]:
    """Every torch.load inside this block, DeepSpeed's included, is weights-only with `types`
    allowed. Process-wide while it lasts: only for commands that do nothing else meanwhile."""
    saved = {k: os.environ.pop(k, None) for k in (FORCE, NO_FORCE)}
    os.environ[FORCE] = "1"
    try:
        with allowed(types):
            yield
    finally:
        os.environ.pop(FORCE, None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def short_reason(exc: BaseException) -> str:
    """The line of a torch unpickling error that says what was refused (torch wraps it in a
    paragraph of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if re.search(r"GLOBAL|Unsupported|Can only build|WeightsUnpickler", line)]
    line = (said or lines or [type(exc).__name__])[0]
    line = re.sub(r"^.*WeightsUnpickler error:\s*", "", line) or type(exc).__name__
    return line.split(". Please use")[0].strip()[:200]


def refused_globals(path: Path, types: Iterable = ()) -> list[str]:
    """The classes / functions a weights-only load of `path` refuses (read from the pickle's
    opcodes, nothing executed); [] if torch cannot tell."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:
        return []
    ok = {_name(t) for t in types}
    try:
        return sorted(set(scan(str(path))) - ok)
    except Exception:  # noqa: BLE001 - a damaged file: the load's own error says more
        return []


def not_torch(path: Path, expected: str) -> CheckpointError:
    what = "empty (0 bytes)" if path.stat().st_size == 0 else \
        "neither a torch.save zip archive nor a torch pickle; wrong file or damaged"
    return CheckpointError(f"{path}: is not a PyTorch checkpoint ({what}); expected {expected}")


def load(path: str | Path, types: Iterable = (), trust_pickle: bool = False,
         expected: str = "a torch checkpoint",
         fix: str = "if you trust the file, pass --trust-pickle") -> Any:
    """torch.load(path) on CPU, weights-only with `types` allowed. With `trust_pickle`, a file
    that needs more is unpickled unrestricted (runs its code); without it that is one error
    line ending in `fix`. A file that is not a torch file at all says so either way."""
    path, types = Path(path), list(types)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'is a directory' if path.is_dir() else 'does not exist'}; "
                              f"expected {expected}")
    if torch_file_kind(path) is None:
        raise not_torch(path, expected)
    try:
        with allowed(types):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have no common type
        # the opcode scan reads zip files; for the legacy format torch's refusal names the type
        refused = refused_globals(path, types) or \
            re.findall(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(exc))
        refused = ["".join(r) if isinstance(r, tuple) else r for r in refused]
        if not refused:
            raise CheckpointError(f"{path}: a damaged PyTorch checkpoint ({short_reason(exc)})") from None
    if not trust_pickle:
        raise CheckpointError(f"{path}: holds Python objects beyond tensors ({', '.join(refused[:4])}), "
                              "which only an unrestricted unpickler loads, running code from the file; "
                              f"{fix}")
    log.warning("%s: unpickling %s unrestricted (--trust-pickle)", path, ", ".join(refused[:4]))
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - whatever the file's own code raises
        raise CheckpointError(f"{path}: cannot be unpickled even with --trust-pickle "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None


def check_files(files: Iterable[Path], types: Iterable = (), trust_pickle: bool = False) -> None:
    """Before DeepSpeed reads a checkpoint's files: each is a torch file, and (unless trusted) a
    weights-only load accepts what it holds; one line naming the file otherwise."""
    types = list(types)
    for f in files:
        if torch_file_kind(f) is None:
            raise not_torch(f, "a DeepSpeed checkpoint file (this checkpoint is damaged: pick another "
                               "with --tag)")
        refused = [] if trust_pickle else refused_globals(f, types)
        if refused:
            raise CheckpointError(
                f"{f}: holds Python objects beyond a DeepSpeed checkpoint's ({', '.join(refused[:4])}), "
                "which only an unrestricted unpickler loads, running code from the file; if you "
                "trust this run dir, re-run with --trust-pickle")


@contextlib.contextmanager
def guard(what: Path) -> Iterator[None]:
    """An unpickling refusal escaping DeepSpeed's loaders becomes one error line."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{what}: a weights-only load refused a file ({short_reason(exc)}); "
                              "if you trust this run dir, re-run with --trust-pickle") from None
