"""``abkit experiment apply -f DIR``: a directory of experiment files applied in one
transaction (all or nothing), with a diff; ``--dry-run`` changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from abkit.cli.base import ExitCode
from abkit.store.sql import SqlStore
from tests.cli_support import ROOT, abkit

EXAMPLE = (ROOT / "examples" / "ranker-experiment.yaml").read_text()
SEARCH: dict[str, Any] = {
    "key": "search-v3",
    "name": "Search v3",
    "model": "search",
    "arms": [
        {"key": "control", "model_version": "search-v2", "weight": 0.5, "control": True},
        {"key": "candidate", "model_version": "search-v3", "weight": 0.5},
    ],
    "policy": {"primary": {"metric": "clicks", "kind": "count"}, "look_interval": "5m"},
}
BANNER = (
    "key: banner\narms:\n  - {key: a, model_version: b1, weight: 0.5, control: true}\n"
    "  - {key: b, model_version: b2, weight: 0.5}\n"
)


def experiments_dir(tmp_path: Path) -> Path:
    d = tmp_path / "experiments"
    d.mkdir()
    (d / "ranker.yaml").write_text(EXAMPLE)
    (d / "search.json").write_text(json.dumps(SEARCH))
    (d / "banner.yml").write_text(BANNER)
    (d / "README.md").write_text("not an experiment")  # other files are left alone
    (d / ".draft.yaml").write_text("key: [broken")  # and hidden ones
    (d / "archive").mkdir()  # and subdirectories
    (d / "archive" / "old.yaml").write_text("key: [broken")
    return d


def store_state(url: str) -> dict[str, Any]:
    """Everything apply may write: experiments, their audit trails, the model registry."""
    store = SqlStore.from_url(url)
    try:
        with store.transaction() as tx:
            records = tx.experiments.list()
            return {
                "experiments": records,
                "trails": {r.key: tx.decisions.list(r.key) for r in records},
                "models": tx.models.versions(),
            }
    finally:
        store.close()


def test_a_directory_is_applied_file_by_file_with_a_diff(sql_url: str, tmp_path: Path) -> None:
    d = experiments_dir(tmp_path)
    out = abkit("experiment", "apply", "-f", str(d), url=sql_url).stdout.splitlines()
    assert out == [
        f"experiment banner created; status draft, revision 1  [{d / 'banner.yml'}]",
        f"experiment ranker-v2 created; status draft, revision 1  [{d / 'ranker.yaml'}]",
        f"experiment search-v3 created; status draft, revision 1  [{d / 'search.json'}]",
        "3 experiment(s) were applied: 3 created",
    ]
    again = abkit("experiment", "apply", "-f", str(d), url=sql_url).stdout
    assert again.count(" unchanged; ") == 3 and again.endswith("applied: 3 unchanged\n")
    # Ramp the ranker, rename the search experiment, start everything.
    (d / "ranker.yaml").write_text(EXAMPLE.replace("coverage: 0.05 ", "coverage: 0.25 "))
    (d / "search.json").write_text(json.dumps({**SEARCH, "name": "Search v3 (fresher index)"}))
    out = abkit("experiment", "apply", "-f", str(d), "--start", url=sql_url).stdout.splitlines()
    assert out == [
        f"experiment banner unchanged; status running, revision 2  [{d / 'banner.yml'}]",
        "  status: draft -> running",
        f"experiment ranker-v2 updated (coverage); status running, revision 3  "
        f"[{d / 'ranker.yaml'}]",
        "  coverage: 0.05 -> 0.25",
        "  status: draft -> running",
        f"experiment search-v3 updated (name); status running, revision 3  [{d / 'search.json'}]",
        '  name: "Search v3" -> "Search v3 (fresher index)"',
        "  status: draft -> running",
        "3 experiment(s) were applied: 2 updated, 1 unchanged",
    ]
    state = store_state(sql_url)
    assert [r.experiment.status.value for r in state["experiments"]] == ["running"] * 3
    assert [e.action for e in state["trails"]["ranker-v2"]] == ["create", "update", "start"]
    assert state["trails"]["ranker-v2"][1].reason == "changed: coverage"


def test_dry_run_prints_the_diff_and_changes_nothing(sql_url: str, tmp_path: Path) -> None:
    d = experiments_dir(tmp_path)
    before = store_state(sql_url)
    out = abkit("experiment", "apply", "-f", str(d), "--dry-run", url=sql_url).stdout
    assert out.splitlines()[0] == "dry run: nothing is written"
    assert "experiment ranker-v2 would be created; status draft" in out
    assert out.endswith("3 experiment(s) would be applied: 3 created\n")
    assert store_state(sql_url) == before == {"experiments": [], "trails": {}, "models": []}
    # Applied for real, then a dry run of changes, with --start.
    abkit("experiment", "apply", "-f", str(d), url=sql_url)
    doc = yaml.safe_load(EXAMPLE)
    doc["policy"]["look_interval"] = "30m"
    doc["overrides"] = {"qa-user-1": "candidate", "qa-user-2": "control"}
    (d / "ranker.yaml").write_text(yaml.safe_dump(doc))
    before = store_state(sql_url)
    dry = abkit("experiment", "apply", "-f", str(d), "--dry-run", "--start", url=sql_url).stdout
    assert store_state(sql_url) == before
    assert "experiment ranker-v2 would be updated (overrides, policy.look_interval)" in dry
    assert (
        '  overrides: {"qa-user-1": "candidate"} -> '
        '{"qa-user-1": "candidate", "qa-user-2": "control"}'
    ) in dry
    assert "  policy.look_interval: 900 -> 1800\n" in dry
    assert dry.count("  status: draft -> running") == 3
    assert dry.endswith("3 experiment(s) would be applied: 1 updated, 2 unchanged\n")
    # The same change, applied: the dry run said exactly what happens.
    real = abkit("experiment", "apply", "-f", str(d), "--start", url=sql_url).stdout
    assert (
        real.count("  status: draft -> running") == 3
        and "  policy.look_interval: 900 -> 1800" in real
    )


def test_a_refused_file_applies_none_of_them(sql_url: str, tmp_path: Path) -> None:
    d = experiments_dir(tmp_path)
    abkit("experiment", "apply", "-f", str(d), "--start", url=sql_url)
    before = store_state(sql_url)
    # An allowed change (a ramp) next to a refused one (new weights for a running experiment).
    (d / "ranker.yaml").write_text(EXAMPLE.replace("coverage: 0.05 ", "coverage: 0.25 "))
    arms = [{**arm, "weight": w} for arm, w in zip(SEARCH["arms"], (0.4, 0.6), strict=True)]
    (d / "search.json").write_text(json.dumps({**SEARCH, "arms": arms}))
    result = abkit("experiment", "apply", "-f", str(d), url=sql_url, check=False)
    assert result.returncode == ExitCode.REFUSED == 4
    assert (
        f"error: {d / 'search.json'}: experiment 'search-v3' is running: its arms" in result.stderr
    )
    assert result.stderr.rstrip().endswith("; nothing was applied")
    assert result.stdout == ""
    assert store_state(sql_url) == before  # the ramp of the ranker was not applied either
    dry = abkit("experiment", "apply", "-f", str(d), "--dry-run", url=sql_url, check=False)
    assert dry.returncode == 4 and "search.json" in dry.stderr  # a dry run refuses it too


def test_an_invalid_file_applies_none_and_names_file_and_field(
    sql_url: str, tmp_path: Path
) -> None:
    d = experiments_dir(tmp_path)
    (d / "zz-broken.yaml").write_text(BANNER.replace("key: banner", "key: zz\ncoverge: 0.5"))
    result = abkit("experiment", "apply", "-f", str(d), url=sql_url, check=False)
    assert result.returncode == ExitCode.INVALID_INPUT == 2
    assert f"{d / 'zz-broken.yaml'}: coverge: unknown field" in result.stderr
    assert "did you mean 'coverage'" in result.stderr
    assert store_state(sql_url)["experiments"] == []


def test_conflicts_between_files_name_the_file(sql_url: str, tmp_path: Path) -> None:
    d = experiments_dir(tmp_path)
    (d / "search-copy.yaml").write_text(yaml.safe_dump(SEARCH))
    twice = abkit("experiment", "apply", "-f", str(d), url=sql_url, check=False)
    assert twice.returncode == 2
    assert (
        f"{d / 'search.json'}: key: experiment 'search-v3' is also declared in "
        f"{d / 'search-copy.yaml'}"
    ) in twice.stderr
    (d / "search-copy.yaml").unlink()
    # Two experiments whose layer segments overlap: the second file is at fault.
    layered = "layer: {key: ranking, start: 0.0, end: 0.6}\n"
    (d / "banner.yml").write_text(BANNER + layered)
    (d / "ranker.yaml").write_text(EXAMPLE + layered.replace("0.0, end: 0.6", "0.5, end: 1.0"))
    overlap = abkit("experiment", "apply", "-f", str(d), "--start", url=sql_url, check=False)
    assert overlap.returncode == 2
    assert f"{d / 'ranker.yaml'}: layer: experiments " in overlap.stderr
    assert "overlap in layer 'ranking'" in overlap.stderr
    assert store_state(sql_url)["experiments"] == []


def test_a_directory_without_experiment_files_is_an_error(sql_url: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing to apply")
    result = abkit("experiment", "apply", "-f", str(tmp_path), url=sql_url, check=False)
    assert result.returncode == 2
    assert f"{tmp_path}: no experiment files (*.yaml, *.yml, *.json) here" in result.stderr


def test_a_single_file_keeps_working_and_gains_dry_run(sql_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ranker.yaml"
    path.write_text(EXAMPLE)
    dry = abkit("experiment", "apply", "-f", str(path), "--dry-run", "--start", url=sql_url)
    assert dry.stdout.splitlines() == [
        "dry run: nothing is written",
        f"experiment ranker-v2 would be created; status running  [{path}]",
        "1 experiment(s) would be applied: 1 created",
    ]
    assert store_state(sql_url)["experiments"] == []
    out = abkit("experiment", "apply", "-f", str(path), url=sql_url).stdout
    assert out == f"experiment ranker-v2 created; status draft, revision 1  [{path}]\n"
