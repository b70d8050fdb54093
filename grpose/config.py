"""YAML configs: load and merge files, apply dotted overrides, instantiate ``target``/``params`` nodes.

Composition. A config file may start with a ``defaults:`` list of other YAML files it is built on::

    defaults:
      - ../sd15.yaml@model.params     # the SD1.5 backbone, mounted under model.params
      - ../data/humanart.yaml         # merged at the root
    model:
      params:
        adapter: ...

Each entry is ``PATH`` or ``PATH@dotted.key``: PATH is relative to the including file, ``@key`` mounts the
included file's content at that key (without it, at the root). Included files are loaded the same way (they may
have their own ``defaults``), merged in list order, and the including file's own content is merged last, so it
overrides what it includes (OmegaConf merge: dicts merge key by key, lists and scalars are replaced). The
``defaults`` key itself is removed. So one SD hyperparameter is one edit in configs/sd15.yaml, and the resolved
config a run writes (train.py saves ``config.yaml`` with interpolations resolved) is complete on its own.

Within a file, OmegaConf interpolation shares values: configs/data/*.yaml define a dataset's root and image size
once (``dataset:``) and the train/validation/test nodes refer to them (``${dataset.root}``); ``test`` is
``${data.params.validation}``. An override of a node that is an interpolation (``data.params.test.params.x=1``)
replaces that node by a copy of its target with the override applied.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

DEFAULTS_KEY = "defaults"  # the list of files a config file is built on


class ConfigError(ValueError):
    """A config file, override or node is wrong; the message names the file or the YAML path."""


def load_config(*paths: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Load YAML files (each with its ``defaults`` expanded), merge them in order, apply ``key.sub=value`` overrides."""
    if not paths:
        raise ConfigError("load_config needs at least one YAML file")
    config = OmegaConf.merge(*(_load_file(Path(path), ()) for path in paths))
    return apply_overrides(config, overrides)


def _load_file(path: Path, including: tuple[Path, ...]) -> DictConfig:
    """One YAML file with its ``defaults`` list expanded (see the module docstring)."""
    if not path.is_file():
        hint = f" (included by {including[-1]})" if including else ""
        raise ConfigError(
            f"config file not found: {path}{hint} (pass an existing YAML file, e.g. configs/grpose/tiny.yaml)"
        )
    if path.resolve() in including:
        chain = " -> ".join(str(p) for p in (*including, path.resolve()))
        raise ConfigError(f"config files include each other in a cycle: {chain}")
    try:
        config = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends; re-raised with the file name
        raise ConfigError(f"could not parse config file {path}: {err}") from err
    if not isinstance(config, DictConfig):
        raise ConfigError(f"config file {path} is not a mapping at the top level")
    defaults = config.pop(DEFAULTS_KEY, [])
    if not isinstance(defaults, ListConfig | list) or not all(isinstance(e, str) for e in defaults):
        raise ConfigError(f"{path}: '{DEFAULTS_KEY}' must be a list of 'file.yaml' or 'file.yaml@dotted.key' strings")
    parts = []
    for entry in defaults:
        file, _, key = entry.partition("@")
        included = _load_file(path.parent / file, (*including, path.resolve()))
        for name in reversed(key.split(".") if key else []):
            included = OmegaConf.create({name: included})
        parts.append(included)
    return OmegaConf.merge(*parts, config)


def split_overrides(paths: Sequence[str], overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Config paths and overrides of a command line whose ``--config`` list swallowed trailing ``key=value`` items.

    ``train.py --config a.yaml key=value`` parses ``key=value`` as a config path (argparse's ``nargs="+"``); an
    item holding "=" is never a YAML path here, so it goes back to the overrides, in command-line order.
    """
    moved = [p for p in paths if "=" in p]
    return [p for p in paths if "=" not in p], [*moved, *overrides]


def apply_overrides(config: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply dotted command-line overrides such as ``model.params.alpha=3`` (values are parsed as YAML)."""
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
    if overrides:
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist(overrides))
        except Exception as err:
            raise ConfigError(f"could not apply overrides {overrides}: {err}") from err
    return config


def _locate(target: str, yaml_path: str) -> Any:
    """Import ``package.module.Name`` and return ``Name``."""
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ConfigError(f"{yaml_path}.target = {target!r} is not a dotted path like 'grpose.model.GRPose'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{yaml_path}.target = {target!r}: cannot import module {module_name!r} ({err})") from err
    if not hasattr(module, attr):
        raise ConfigError(f"{yaml_path}.target = {target!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _check_params(fn: Any, params: dict[str, Any], yaml_path: str) -> None:
    """Raise a ConfigError naming the YAML path for unknown or missing constructor arguments."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    parameters = signature.parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = {n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"}
    unknown = sorted(set(params) - named)
    if unknown and not accepts_kwargs:
        raise ConfigError(
            f"{yaml_path}.params: unknown parameter(s) {unknown} for {fn.__module__}.{fn.__qualname__}; "
            f"accepted: {sorted(named)}"
        )
    missing = sorted(
        n
        for n, p in parameters.items()
        if n in named and p.default is inspect.Parameter.empty and n not in params and p.kind is not p.POSITIONAL_ONLY
    )
    if missing:
        raise ConfigError(f"{yaml_path}.params: missing required parameter(s) {missing} for {fn.__qualname__}")


def to_container(node: Any) -> Any:
    """Resolve an OmegaConf node to plain Python containers (other values pass through)."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def instantiate(node: Any, yaml_path: str = "<config>", recursive: bool = True, **extra: Any) -> Any:
    """Build the object described by ``{target: dotted.Name, params: {...}}``.

    With ``recursive`` nested ``target`` nodes inside params are instantiated first (depth first); without it
    they are passed on as plain dicts (e.g. datasets a DataModule builds lazily). ``extra`` keyword arguments are
    added to (and override) the node's params.
    """
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict) or "target" not in node:
        raise ConfigError(f"{yaml_path} has no 'target' key; expected {{target: package.Class, params: {{...}}}}")
    unknown_keys = set(node) - {"target", "params"}
    if unknown_keys:
        raise ConfigError(f"{yaml_path}: unexpected key(s) {sorted(unknown_keys)} next to target/params")
    fn = _locate(node["target"], yaml_path)
    params = dict(node.get("params") or {})
    if recursive:
        params = {k: _instantiate_nested(v, f"{yaml_path}.params.{k}") for k, v in params.items()}
    params.update(extra)
    _check_params(fn, params, yaml_path)
    try:
        return fn(**params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # a wrong value type or range in the config (e.g. batch_size=abc)
        raise ConfigError(
            f"{yaml_path}: building {node['target']} failed: {err} (check the values under {yaml_path}.params)"
        ) from err


def _instantiate_nested(value: Any, yaml_path: str) -> Any:
    if isinstance(value, dict) and "target" in value and set(value) <= {"target", "params"}:
        return instantiate(value, yaml_path)
    return value
