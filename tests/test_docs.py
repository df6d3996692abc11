"""Every ``python train.py ...`` / ``python eval.py ...`` command quoted in README.md and docs/*.md composes
and validates, so the docs cannot drift from the configs (in-process: ``hydra.compose``, no training)."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO
from ugmm.config import check_group_overrides, legacy_plus_trainer, validate_eval_config, validate_train_config
from ugmm_helpers import make_cfg

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"python (train|eval)\.py((?:[^`#\n]|\\\n)*)")
# table cells quoting a run's overrides (the ablation tables of docs/results.md)
OVERRIDES_CELL = re.compile(r"`(experiment=[^`]*)`")
PLACEHOLDERS = {"<seed>": "0", "=S": "=0", "<run>": "run", "<overrides>": ""}


def doc_commands() -> list[tuple[str, str, str]]:
    """``(where, script, arguments)`` of every command in the docs (line continuations joined)."""
    found = []
    for path in DOCS:
        text = path.read_text().replace("\\\n", " ")
        for number, line in enumerate(text.splitlines(), 1):
            for match in COMMAND.finditer(line):
                found.append((f"{path.name}:{number}", match.group(1), match.group(2).strip()))
            for match in OVERRIDES_CELL.finditer(line):
                found.append((f"{path.name}:{number}:cell", "train", match.group(1)))
    return found


def overrides_of(arguments: str) -> tuple[list[str], list[str]]:
    """The command line as the precheck sees it, and the overrides one composed job gets.

    Flags (``-m``, ``--cfg job``) and ``hydra...`` settings are Hydra's own; a multirun sweep
    ``key=a,b`` composes as its first value; sweeper expressions (``choice(...)``) are left out.
    """
    for placeholder, value in PLACEHOLDERS.items():
        arguments = arguments.replace(placeholder, value)
    args = legacy_plus_trainer(shlex.split(arguments))
    job, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in ("--cfg", "-c", "--package", "-p") and not skip
            continue
        key, _, value = arg.partition("=")
        if key.startswith("hydra") or "(" in value:
            continue
        if "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]
        job.append(f"{key}={value}")
    return args, job


COMMANDS = doc_commands()


def test_the_docs_quote_commands():
    scripts = {script for _, script, _ in COMMANDS}
    assert len(COMMANDS) > 30 and scripts == {"train", "eval"}


@pytest.mark.parametrize(("where", "script", "arguments"), COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_doc_command_composes(where, script, arguments):
    args, job = overrides_of(arguments)
    check_group_overrides(args)
    if script == "train":
        validate_train_config(make_cfg(job))
    else:
        validate_eval_config(make_cfg(job, config_name="eval"))
