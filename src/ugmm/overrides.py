"""Command-line overrides checked against the composed config before a run starts.

``model.widht=3`` -> "model.widht is not a key of the config; did you mean model.width?"; an override
Hydra's grammar cannot parse, or a command line that does not compose, is named in one line too. The
entry points call :func:`check_plain_keys` on ``sys.argv`` (after :func:`ugmm.config.check_group_overrides`).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ugmm.config import ConfigError, group_options


def check_plain_keys(args: list[str], config_name: str = "train") -> None:
    """Reject ``key=value`` overrides of keys the composed config does not have, with the closest key.

    ``model.widht=3`` -> "model.widht is not a key of the config; did you mean model.width?". The
    config is composed with the command line's group choices (``data=iris``, ``experiment=...``), so
    keys those options bring count. Keys with ``+``/``~``, ``hydra.*`` and sweeps over groups are left
    to Hydra; so is anything that does not compose here.
    """
    plain, groups = [], []
    plain_check = True
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if key.startswith(("+", "~")) or key.startswith("hydra.") or key == "hydra":
            continue
        if "/" in key or (key.isidentifier() and group_options(key)):  # a group: data=iris, debug=fdr, ...
            value = arg.split("=", 1)[1]
            if "," in value or any(c in value for c in "()[]{}*?$"):
                plain_check = False  # a sweep over options: each job composes its own keys
            groups.append(arg)
        elif "." in key or key.isidentifier():
            plain.append(key)
    from hydra import compose, initialize_config_module

    if plain and plain_check:
        try:
            with initialize_config_module("ugmm.conf", version_base="1.3"):
                cfg = compose(config_name=config_name, overrides=groups)
        except Exception:
            return
        keys = _config_keys(cfg)
        known = set(keys)
        for key in plain:
            if key not in known:
                hint = _key_hint(cfg, key, keys)
                raise ConfigError(f"{key} is not a key of the config; {hint} (a new key: +{key}=...)")
    overrides = [a for a in args if not a.startswith("-")]
    sweeps = ("choice(", "range(", "interval(", "glob(", "tag(", "hparams_search=", "hydra.mode=", "hydra.sweeper")
    if any(a.startswith("-") or any(w in a for w in sweeps) for a in args):
        return  # a multirun (-m, an optuna search) or Hydra's own flags: its sweep syntax is Hydra's to read
    try:  # the whole command line, composed as Hydra will: its errors in one line
        with initialize_config_module("ugmm.conf", version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
    except Exception as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        text = " ".join(lines[:2]) if lines else type(err).__name__
        raise ConfigError(f"{_unparsable(overrides) or 'the command line'}: {text}") from None


def _config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config (nodes and leaves), ``hydra`` excluded."""
    keys = []
    if OmegaConf.is_dict(node):
        for key in node.keys():
            if not prefix and key == "hydra":
                continue
            path = f"{prefix}{key}"
            keys.append(path)
            try:
                child = node._get_node(key)
            except Exception:
                continue
            keys += _config_keys(child, path + ".")
    return keys


def _unparsable(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar cannot parse, if one is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception:
            return override
    return None


def _key_hint(cfg: DictConfig, key: str, keys: list[str]) -> str:
    """The closest existing key (a sibling first, then anywhere by its full or last name) or the choices."""
    import difflib

    parent, _, leaf = key.rpartition(".")
    if parent and parent in keys and OmegaConf.select(cfg, parent) is None:
        return f"{parent} is null here: set it as a whole, e.g. {parent}={{{leaf}: ...}}"
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, keys, n=1, cutoff=0.75
    )
    if not close:
        by_leaf = {}
        for k in keys:
            by_leaf.setdefault(k.rpartition(".")[2], k)
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)]
    if close:
        return f"did you mean {close[0]}?"
    if parent in keys:
        return f"keys under {parent}: " + ", ".join(k.rpartition(".")[2] for k in siblings)
    return "top-level keys: " + ", ".join(k for k in keys if "." not in k)
