"""Experiment trackers behind one small interface: TensorBoard, Weights & Biases, MLflow.

`logging.report_to` names them; wandb and mlflow are imported only when named (their packages
are the `giant[wandb]` / `giant[mlflow]` extras; giant.config's checks say so before a run
starts). Only rank 0 opens trackers (MetricsLogger is disabled elsewhere). A resumed run
continues the same tracker run: the ids live in RUN_DIR/trackers.json.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from giant.artifact import write_text_atomic
from giant.errors import ConfigError

IDS_FILE = "trackers.json"


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested config → {"optim.lr": 1e-3, ...}: numbers, bools and strings as they are, None
    and lists as their text (what every tracker's hyper-parameter view accepts)."""
    out: dict = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class Tracker:
    """One backend: scalars per step, the config once, then finish."""

    def log(self, step: int, scalars: dict) -> None:
        raise NotImplementedError

    def log_config(self, config: dict, final: dict) -> None:
        """The flattened config with the run's final metrics (called once, at the end)."""

    def finish(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a crashed run logged after its last checkpoint (all of them
        # when it crashed before the first one)
        tb_dir = run_dir / "tensorboard"
        earlier = tb_dir.is_dir() and any(tb_dir.iterdir())
        self.writer = SummaryWriter(log_dir=str(tb_dir), purge_step=resume_step + 1 if earlier else None)

    def log(self, step: int, scalars: dict) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def log_config(self, config: dict, final: dict) -> None:
        """The hparams plugin's summaries written into this run's own event file (add_hparams
        would open a sub-run per call); its metrics are scalar tags this run already has."""
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(config, final):
            self.writer.file_writer.add_summary(summary)

    def finish(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """WANDB_MODE=offline works without a network (sync later with `wandb sync RUN_DIR/wandb`)."""

    def __init__(self, run_dir: Path, name: str, run_id: Optional[str], config: dict):
        wandb = _import("wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "giant"), name=name,
                              dir=str(run_dir), id=run_id, resume="allow" if run_id else None,
                              config=config if run_id is None else None)
        self.id = self.run.id

    def log(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)

    def log_config(self, config: dict, final: dict) -> None:
        self.run.summary.update(final)

    def finish(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    """MLFLOW_TRACKING_URI when set, else a file store in RUN_DIR/mlruns (MLflow 3 keeps the
    file store behind MLFLOW_ALLOW_FILE_STORE; mlflow-skinny has no SQL store to offer)."""

    def __init__(self, run_dir: Path, name: str, run_id: Optional[str], config: dict):
        _import("mlflow")
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client, self.uri = MlflowClient(tracking_uri=uri), uri
        if run_id is None:
            exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "giant")
            exp = self.client.get_experiment_by_name(exp_name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(exp_name)
            self.id = self.client.create_run(exp_id, run_name=name).info.run_id
            self._params(config)
        else:
            self.id = run_id
            self.client.update_run(run_id, status="RUNNING")

    def _params(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in config.items()]
        for i in range(0, len(params), 100):  # the API's batch limit
            self.client.log_batch(self.id, params=params[i:i + 100])

    def log(self, step: int, scalars: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def finish(self) -> None:
        self.client.set_terminated(self.id)


def _import(name: str) -> Any:
    """A broken install (the package is found but does not import) is the same one line."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"logging.report_to names {name}, which does not import ({exc}): "
                          f"pip install 'giant[{name}]'") from None


def open_trackers(names: list, run_dir: Path, name: str, resume_step: int, config: dict) -> list:
    """The named trackers, continuing the runs RUN_DIR/trackers.json records (a fresh start,
    resume_step 0 with no checkpoint, starts new ones)."""
    ids_path = run_dir / IDS_FILE
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    out: list = []
    for kind in names:
        if kind == "tensorboard":
            out.append(TensorBoardTracker(run_dir, resume_step))
            continue
        cls = WandbTracker if kind == "wandb" else MlflowTracker
        tracker = cls(run_dir, name, ids.get(kind), config)
        ids[kind] = tracker.id
        out.append(tracker)
    if set(ids) - {"tensorboard"}:
        write_text_atomic(ids_path, json.dumps(ids, indent=2) + "\n")
    return out
