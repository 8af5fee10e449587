"""Recipe YAML + dotted overrides → a validated RunConfig, and back to a dict / YAML file."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from giant.config.checks import validate
from giant.config.schema import RunConfig, yaml_load
from giant.errors import ConfigError


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: null is not allowed here")
    if base is Any:
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is bool and isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    if (base is list or typing.get_origin(base) is list) and isinstance(value, (list, tuple)):
        return list(value)
    name = getattr(base, "__name__", str(base))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys raise with their dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    retired = [k for k in unknown if k in getattr(cls, "RETIRED", {})]
    if retired:  # a key an older release had: say what replaced it
        raise ConfigError(f"{where}.{retired[0]}: {cls.RETIRED[retired[0]]}")
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        sub = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, sub)
        else:
            kwargs[key] = _coerce(value, tp, sub)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: '{dotted}' goes through a non-section key '{part}'")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`['optim.lr=1e-3', 'model.name=vit_b']` → nested dict (values parsed as YAML scalars)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml_load(raw) if raw != "" else "", f"override '{item}'")
    return tree


def merge_trees(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested mappings merged key by key (a recipe under its overrides)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path, what: str, shipped: str) -> Any:
    """A recipe's or pipeline's YAML; bytes that are not UTF-8 text or not YAML are one line
    naming the file (`what` names it, `shipped` is where the good ones are)."""
    try:
        return yaml_load(path.read_text()) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}); a {what} is YAML "
                          f"(see {shipped})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: invalid YAML: {exc}") from exc


def drop_retired(cls: type, tree: Any) -> Any:
    """`tree` without the keys an older release had (cls.RETIRED, in any section): a run dir's
    own config.yaml, written by that release, must still load; a recipe is told instead."""
    if not isinstance(tree, dict):
        return tree
    hints = typing.get_type_hints(cls)
    retired = getattr(cls, "RETIRED", {})
    return {k: drop_retired(hints[k], v) if k in hints and dataclasses.is_dataclass(hints[k]) else v
            for k, v in tree.items() if k not in retired}


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None,
                saved: bool = False) -> RunConfig:
    """Recipe YAML (may be None) + dotted overrides → validated RunConfig. saved: the recipe is
    a run's own config.yaml (keys an older giant wrote are dropped, not refused)."""
    tree: dict = {}
    where = "config"
    if recipe:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist (see launch/recipes/ for the shipped ones)")
        tree = read_yaml(path, "recipe", "launch/recipes/")
        tree = drop_retired(RunConfig, tree) if saved else tree
        where = str(path)
    extra = parse_overrides(overrides or [])
    from_dict(RunConfig, extra, "override")  # a mistyped override is named as one, not as the recipe's
    tree = merge_trees(tree, extra)
    cfg = from_dict(RunConfig, tree, where)
    if cfg.mask.encoder == "adaptive" and cfg.model.sampler == "none":
        cfg.model.sampler = "adaptive"  # the mask strategy implies the model part
    validate(cfg)
    return cfg


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
