"""Reading experiment files (YAML or JSON), one or a directory of them, into validated
experiments.

Errors name the file, the field and, for syntax errors, the line and column. Duplicate keys in a
mapping are an error (plain YAML keeps the last one silently, which hides typos and merge
accidents).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from abkit.core.model import Experiment
from abkit.core.policy import Policy
from abkit.core.policy_document import policy_from_dict
from abkit.core.spec import EXPERIMENT_FIELDS, experiment_from_dict
from abkit.errors import ValidationError

POLICY_FIELD = "policy"


@dataclass(frozen=True, slots=True)
class ExperimentFile:
    experiment: Experiment
    policy: Policy | None


class _StrictLoader(yaml.SafeLoader):
    pass


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ValidationError(
                f"line {mark.line + 1}, column {mark.column + 1}",
                f"duplicate key {key!r}; each field may appear once",
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_document(text: str, source: str = "<string>") -> ExperimentFile:
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        raise ValidationError(where, f"YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ValidationError(source, f"YAML syntax error: {exc}") from None
    except ValidationError as exc:
        raise ValidationError(f"{source}, {exc.field}", exc.message) from None
    if not isinstance(doc, Mapping):
        raise ValidationError(source, "must contain one experiment: a mapping with key and arms")
    body = {k: v for k, v in doc.items() if k != POLICY_FIELD}
    try:
        experiment = experiment_from_dict(body, extra_fields=(POLICY_FIELD,))
        policy = None if doc.get(POLICY_FIELD) is None else policy_from_dict(doc[POLICY_FIELD])
    except ValidationError as exc:
        where = f"{source}: {exc.field}" if exc.field else source
        raise ValidationError(where, exc.message) from None
    return ExperimentFile(experiment, policy)


def load_experiment_file(path: str | Path) -> ExperimentFile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError(str(p), "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(str(p), f"cannot read the file: {exc}") from None
    return parse_document(text, str(p))


EXPERIMENT_SUFFIXES = (".yaml", ".yml", ".json")


def experiment_files(directory: str | Path) -> list[Path]:
    """The experiment files of a directory: ``*.yaml``, ``*.yml`` and ``*.json``, sorted by
    name; hidden files and subdirectories are left alone."""
    d = Path(directory)
    try:
        entries = list(d.iterdir())
    except OSError as exc:
        raise ValidationError(str(d), f"cannot read the directory: {exc}") from None
    return sorted(
        (
            p
            for p in entries
            if p.suffix.lower() in EXPERIMENT_SUFFIXES
            and not p.name.startswith(".")
            and p.is_file()
        ),
        key=lambda p: p.name,
    )


def load_experiments(path: str | Path) -> list[tuple[Path, ExperimentFile]]:
    """Every experiment of a file, or of each file of a directory (:func:`experiment_files`),
    with the file it came from. A directory without any is an error (a typo in a path should
    not apply nothing successfully)."""
    p = Path(path)
    if not p.is_dir():
        return [(p, load_experiment_file(p))]
    files = experiment_files(p)
    if not files:
        raise ValidationError(
            str(p), f"no experiment files ({', '.join('*' + s for s in EXPERIMENT_SUFFIXES)}) here"
        )
    return [(f, load_experiment_file(f)) for f in files]


__all__ = [
    "EXPERIMENT_FIELDS",
    "EXPERIMENT_SUFFIXES",
    "ExperimentFile",
    "experiment_files",
    "load_experiment_file",
    "load_experiments",
    "parse_document",
]
