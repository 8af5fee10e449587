"""`giant export` / `giant reshard` on a run dir from elsewhere run none of its code: checkpoints
of a real tiny run (ZeRO-0: giant's own load; ZeRO-2: DeepSpeed's zero_to_fp32 and
ds_to_universal) load weights-only, a pickle with a planted __reduce__ is refused without being
executed, and random bytes where a checkpoint file should be are one error line."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from _launch import REPO, env, run_captured, tail
from giant import cli
from giant.engine import checkpoint as ck, export, reshard
from giant.engine import safe_load
from giant.errors import CheckpointError
from giant.interop import load_weights

TAG = "step_00000001"
FILES = {"zero0": "mp_rank_00_model_states.pt", "zero2": "zero_pp_rank_0_mp_rank_00_optim_states.pt"}


class Planted:
    """Unpickled unrestricted, it creates a folder: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def runs(synth_videos, tmp_path_factory):
    """One-step single-rank pre-training runs with ZeRO-0 and ZeRO-2 checkpoints."""
    d = tmp_path_factory.mktemp("untrusted")
    zero0 = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    zero0["zero_optimization"] = {"stage": 0}
    (d / "zero0.json").write_text(json.dumps(zero0))
    out = {}
    for name, ds in (("zero0", d / "zero0.json"), ("zero2", REPO / "ds_configs" / "zero2.json")):
        run = d / name
        proc = run_captured([sys.executable, "launch/pretrain.py", "--ds", str(ds), "--recipe",
                             "launch/recipes/demo_pretrain.yaml", f"data.manifest={synth_videos.train_manifest}",
                             f"stage.run_dir={run}", "model.img_size=32", "model.patch_size=8",
                             "model.num_frames=4", "data.sampling_rate=2", "data.num_sample=1",
                             "data.num_workers=0", "optim.batch_size=1", "optim.total_steps=1",
                             "optim.warmup_steps=1", "checkpoint.every_steps=1", "precision.encoder=fp32",
                             "logging.image_every=0", "logging.progress=false"], 300, cwd=REPO, env=env())
        assert proc.returncode == 0, tail(proc)
        assert (run / "checkpoints" / TAG / FILES[name]).is_file()
        out[name] = run
    return out


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def _error_line(capsys) -> str:
    """The one error line on stderr (DeepSpeed's import-time accelerator notice aside)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("giant ")]
    assert len(lines) == 1, err
    return lines[0]


def test_export_and_reshard_load_every_file_weights_only(runs, tmp_path, monkeypatch):
    calls, real = [], torch.load

    def spy(*args, **kwargs):  # what each load asked for, and whether torch forces weights-only
        calls.append((kwargs.get("weights_only"), os.environ.get(safe_load.FORCE)))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    from giant.commands.export import main as export_main

    for name, run in runs.items():
        assert export_main([str(run), "--out", str(tmp_path / name)]) == 0
    copy = _copy(runs["zero2"], tmp_path / "reshard")
    from giant.commands.reshard import main as reshard_main

    assert reshard_main([str(copy)]) == 0
    assert (copy / "checkpoints" / TAG / ck.UNIVERSAL / "zero").is_dir()
    assert calls and all(asked is True or forced == "1" for asked, forced in calls), calls
    assert any(asked is False for asked, _ in calls)  # DeepSpeed's own loads, forced to weights-only
    assert safe_load.FORCE not in os.environ  # only while giant's loads run
    monkeypatch.undo()
    for name, run in runs.items():  # the same weights as an unrestricted load gives
        safe, _ = load_weights(tmp_path / name)
        trusted = export.consolidated_state_dict(run / "checkpoints", TAG, trust_pickle=True)
        assert safe.keys() == trusted.keys()
        assert all(torch.equal(safe[k], trusted[k].float()) for k in safe)


def test_a_planted_pickle_is_refused_and_never_runs(runs, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "code_ran"
    planted = {}
    for name, run in runs.items():
        run = planted[name] = _copy(run, tmp_path / name)
        f = run / "checkpoints" / TAG / FILES[name]
        state = torch.load(f, weights_only=False)
        state["extra"] = Planted(marker)
        torch.save(state, f)
        assert cli.main(["export", str(run), "--out", str(tmp_path / f"out_{name}")]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"giant export: error: {f}: holds Python objects") and "posix.mkdir" in line
        assert "--trust-pickle" in line and not (tmp_path / f"out_{name}").exists()
    assert cli.main(["reshard", str(planted["zero2"])]) == 2
    assert "posix.mkdir" in _error_line(capsys)
    assert not (planted["zero2"] / "checkpoints" / TAG / ck.UNIVERSAL).exists()
    # were the scan of the pickle's opcodes to miss it, the weights-only loads still refuse it
    monkeypatch.setattr(safe_load, "refused_globals", lambda *args, **kwargs: [])
    for run in planted.values():
        with pytest.raises(CheckpointError):
            export.export_weights(run / "checkpoints", tmp_path / "out")
    with pytest.raises(CheckpointError):
        reshard.convert_universal(planted["zero2"] / "checkpoints", TAG)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["zero0", "zero2"])
def test_random_bytes_for_a_checkpoint_file_are_one_line(runs, name, tmp_path, capsys):
    run = _copy(runs[name], tmp_path / name)
    f = run / "checkpoints" / TAG / FILES[name]
    f.write_bytes(bytes(range(256)) * 64)
    commands = [["export", str(run), "--out", str(tmp_path / "out")]]
    commands += [["reshard", str(run)]] if name == "zero2" else []
    for argv in commands:
        for extra in ([], ["--trust-pickle"]):
            assert cli.main(argv + extra) == 2
            line = _error_line(capsys)
            assert f"{f}: is not a PyTorch checkpoint" in line and "Python objects" not in line
    assert not (tmp_path / "out").exists()
    random_file = tmp_path / "random.pth"
    random_file.write_bytes(bytes(range(256)))
    for command in ("export", "reshard"):
        assert cli.main([command, str(random_file)]) == 2
        assert f"{random_file} is a file; expected a run dir" in _error_line(capsys)


def test_forcing_weights_only_is_scoped(monkeypatch):
    monkeypatch.setenv(safe_load.NO_FORCE, "1")  # the user's own setting comes back afterwards
    monkeypatch.delenv(safe_load.FORCE, raising=False)
    with safe_load.weights_only_everywhere([]):
        assert os.environ[safe_load.FORCE] == "1" and safe_load.NO_FORCE not in os.environ
    assert os.environ[safe_load.NO_FORCE] == "1" and safe_load.FORCE not in os.environ
