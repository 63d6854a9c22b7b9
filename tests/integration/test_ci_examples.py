"""The CI examples in examples/ci/ cannot rot: their YAML parses, and the exact step each runs
(``examples/ci/gate.sh``, read from the YAML with the job's own variables) gates a real
experiment on a real store, while a decision service here records real looks: the pipeline
passes on a promotion and fails on a rollback."""

from __future__ import annotations

import shutil
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from abkit.store.sql import SqlStore
from tests.cli_support import ROOT, Clock, DemoExperiment, cli_env

CI = ROOT / "examples" / "ci"
GATE = "examples/ci/gate.sh"


def github_step() -> tuple[str, dict[str, str]]:
    """The gate step of the GitHub workflow and its job's environment."""
    doc = yaml.safe_load((CI / "github-actions.yml").read_text())
    triggers = doc[True]  # YAML 1.1 reads the key `on` as true
    assert {"push", "workflow_dispatch"} <= set(triggers)
    job = doc["jobs"]["gate"]
    steps = job["steps"]
    gates = [i for i, s in enumerate(steps) if GATE in s.get("run", "")]
    assert len(gates) == 1, "exactly one step runs the gate"
    release = [s for s in steps[gates[0] + 1 :] if s.get("if") == "success()"]
    assert release and "promoted" in release[0]["run"]  # the release waits for the verdict
    return steps[gates[0]]["run"], {k: str(v) for k, v in job["env"].items()}


def gitlab_step() -> tuple[str, dict[str, str]]:
    """The gate job's script of the GitLab pipeline and its variables."""
    doc = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    assert doc["stages"] == ["gate", "release"]
    job = doc["abkit-gate"]
    assert doc["release"]["needs"] == ["abkit-gate"]  # the release runs after a passed gate
    assert any(GATE in line for line in job["script"])
    return "\n".join(job["script"]), {k: str(v) for k, v in job["variables"].items()}


STEPS = {"github": github_step, "gitlab": gitlab_step}


def run_pipeline(
    platform: str, scenario: str, url: str, workdir: Path
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the platform's gate step in a checkout-like ``workdir`` (the experiment file at the
    path the job names, the gate script at its path) while looks are recorded; the step's
    process and the experiment's key."""
    script, variables = STEPS[platform]()
    env = {k: v for k, v in variables.items() if "${{" not in v}  # GitHub expressions: secrets
    key = env["EXPERIMENT_KEY"]
    (workdir / env["EXPERIMENT_FILE"]).parent.mkdir(parents=True, exist_ok=True)
    demo = DemoExperiment(SqlStore.from_url(url), scenario, Clock(), key=key)
    (workdir / env["EXPERIMENT_FILE"]).write_text(demo.text())
    (workdir / "examples" / "ci").mkdir(parents=True, exist_ok=True)
    shutil.copy2(CI / "gate.sh", workdir / GATE)
    env = cli_env(url, **{**env, "ABKIT_WAIT_POLL": "0.1", "ABKIT_ACTOR": f"{platform}-ci"})
    waiting = threading.Event()
    ended: list[bool] = []
    failure: list[BaseException] = []

    def decide() -> None:  # the worker, next to the store, once `abkit wait` is watching
        try:
            waiting.wait(timeout=90)
            if ended:  # the step ended before it waited: its output says why
                return
            demo.clock.value = datetime.now(UTC)  # looks from now on
            demo.run_to_decision()
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=decide)
    with (workdir / "stderr.txt").open("w+") as stderr:
        with subprocess.Popen(
            ["bash", "-e", "-c", script],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        ) as proc:  # fmt: skip
            worker.start()
            lines = []
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.append(line)
                    if line.startswith(f"waiting for {key}: "):
                        waiting.set()
                proc.wait(timeout=120)
            finally:
                if not waiting.is_set():
                    ended.append(True)
                    waiting.set()
                worker.join(timeout=90)
                demo.store.close()
                if proc.poll() is None:
                    proc.kill()
        stderr.seek(0)
        errors = stderr.read()
    output = "".join(lines)
    assert not failure, f"{failure}: {output}{errors}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, errors), key


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_the_pipeline_passes_on_a_promotion_and_a_rerun_agrees(
    platform: str, sqlite_url: str, tmp_path: Path
) -> None:
    step, key = run_pipeline(platform, "promote", sqlite_url, tmp_path)
    assert step.returncode == 0, step.stdout + step.stderr
    assert f"experiment {key} created" in step.stdout
    assert f"waiting for {key}: running" in step.stdout
    assert "look   1" in step.stdout and "-> promote candidate" in step.stdout
    assert f"gate: {key} promoted its candidate -- release it" in step.stdout
    # Re-running the pipeline on the concluded experiment reports the same verdict at once.
    script, variables = STEPS[platform]()
    env = {k: v for k, v in variables.items() if "${{" not in v}
    again = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=cli_env(sqlite_url, **env),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"experiment {key} unchanged" in again.stdout and "is concluded" in again.stderr
    assert f"gate: {key} promoted its candidate" in again.stdout


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_the_pipeline_fails_on_a_rollback(platform: str, sqlite_url: str, tmp_path: Path) -> None:
    step, key = run_pipeline(platform, "harmful", sqlite_url, tmp_path)
    assert step.returncode == 10, step.stdout + step.stderr
    assert "-> rollback control: " in step.stdout
    assert "guardrail latency_ms is harmed" in step.stdout
    assert f"rolled_back (exit 10): {key}: rolled back to control (ranker-v1)" in step.stdout
    assert f"gate: {key} was rolled back -- failing the pipeline" in step.stderr
