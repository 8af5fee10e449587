"""Config tree: recipes + dotted overrides, strict keys, clear errors, dump round trip."""
import dataclasses

import pytest
import yaml

from giant.config import dump_config, load_config, parse_overrides, to_dict
from giant.errors import ConfigError
from giant.models import resolve as resolve_model


def test_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# test\nmodel: {name: vit_b}\noptim: {blr: 1.5e-4, betas: [0.9, 0.95]}\n")
    cfg = load_config(recipe, ["optim.blr=3e-4", "mask.ratio=0.75", "engine.activation_checkpointing=first:4"])
    assert cfg.model.name == "vit_b" and cfg.optim.blr == 3e-4 and cfg.mask.ratio == 0.75
    assert cfg.optim.betas == [0.9, 0.95] and isinstance(cfg.optim.blr, float)
    assert cfg.engine.activation_checkpointing == "first:4"


def test_unknown_key_names_file_and_path(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optim: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.optim: unknown key\(s\) \['lrr'\]"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['nope'\]"):
        load_config(None, ["nope.x=1"])


def test_type_and_value_errors(tmp_path):
    with pytest.raises(ConfigError, match="optim.batch_size: expected int"):
        load_config(None, ["optim.batch_size=two"])
    with pytest.raises(ConfigError, match="precision.decoder must be fp32"):
        load_config(None, ["precision.decoder=bf16"])
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        load_config(None, ["engine.activation_checkpointing=some"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["model.name=vit_g", "optim.clip_grad=0.02"])
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["optim"]["clip_grad"] == 0.02
    # the run dir's config.yaml (absolute lr and min_lr resolved) loads back as a recipe
    from giant.engine.schedule import resolve_lrs

    resolved = dataclasses.replace(cfg, optim=resolve_lrs(cfg.optim, 2048))  # videos per step
    dump_config(resolved, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert (again.optim.lr, again.optim.min_lr) == (resolved.optim.lr, resolved.optim.min_lr)
    assert (again.optim.lr, again.optim.min_lr) == pytest.approx((1.2e-3, 8e-5))


def test_yaml_1_2_scalars(tmp_path):
    """`off` must stay a string (YAML 1.1 would make it False) and 1e-3 must be a float."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("engine: {activation_checkpointing: off}\noptim: {blr: 1e-3}\n")
    cfg = load_config(recipe, ["logging.progress=false"])
    assert cfg.engine.activation_checkpointing == "off"
    assert cfg.optim.blr == 1e-3 and cfg.logging.progress is False


def test_every_shipped_recipe_loads_and_states_its_hardware():
    """A recipe that no longer validates (a renamed key, a contradiction) fails here, not on a
    cluster; each starts with a comment naming the hardware and the global batch."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    recipes = sorted(repo.glob("launch/recipes/*.yaml"))
    # every recipe a shipped pipeline runs is among those checked here
    piped = {repo / stage["recipe"] for p in repo.glob("launch/pipelines/*.yaml")
             for stage in yaml.safe_load(p.read_text())["stages"] if "recipe" in stage}
    assert piped and piped <= set(recipes), sorted(piped - set(recipes))
    for path in recipes:
        cfg = load_config(path)
        resolve_model(cfg.model)
        lines = path.read_text().splitlines()
        header = " ".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])
        assert lines[0].startswith("# ") and ("GPU" in header or "CPU" in header), path.name
        assert "batch" in header, path.name
        if cfg.model.num_classes:  # supervised: Mixup mixes each rank's batch with its reverse
            mixing = cfg.finetune.mixup > 0 or cfg.finetune.cutmix > 0
            assert not mixing or cfg.optim.batch_size * cfg.data.num_sample % 2 == 0, path.name


def test_a_run_dirs_config_from_an_older_release_still_loads(tmp_path):
    """logging.tensorboard (retired for logging.report_to) is refused in a recipe but dropped
    from a run's own config.yaml, so `giant evaluate OLD_RUN_DIR` keeps working."""
    from giant.stages.evaluate import _config_from

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("logging: {tensorboard: false, log_every: 3}\nmodel: {name: vit_b}\n")
    with pytest.raises(ConfigError, match=r"config.yaml.logging.tensorboard: replaced by logging.report_to"):
        load_config(run / "config.yaml")
    cfg = load_config(run / "config.yaml", saved=True)
    assert cfg.logging.log_every == 3 and cfg.logging.report_to == ["tensorboard"] and cfg.model.name == "vit_b"
    cfg = _config_from(str(run), None, [])
    assert cfg.logging.log_every == 3 and cfg.checkpoint.init_from == str(run)
