#!/usr/bin/env bash
# Gate a model version on an abkit experiment -- the steps both CI examples run
# (github-actions.yml, gitlab-ci.yml), and that tests/integration/test_ci_examples.py runs
# against a real store so they cannot rot.
#
#   examples/ci/gate.sh EXPERIMENT_FILE EXPERIMENT_KEY
#
# 1. apply the experiment file (idempotent: an unchanged file changes nothing) and start it;
# 2. `abkit wait` until the worker decides (it runs next to the store: `abkit serve` or
#    `abkit worker`), printing each look;
# 3. turn the verdict into the pipeline's result: promoted -> exit 0 (the next step or job
#    tags the release); rolled back, stopped inconclusive, held too long, timed out -> the
#    `abkit wait` exit code (10, 11, 12, 13), which fails the pipeline.
#
# A re-run of the pipeline after the experiment concluded reports the same verdict: starting a
# concluded experiment is refused (exit 4) and `abkit wait` returns its verdict at once.
#
# Environment: ABKIT_DATABASE_URL (the store, a CI secret), ABKIT_ACTOR (who the audit trail
# names), ABKIT_WAIT_TIMEOUT (default 2h), ABKIT_WAIT_MAX_HOLD (default 6h: paused, or unable
# to analyse, for that long fails the gate), ABKIT_WAIT_POLL (seconds, default 30),
# ABKIT_COMMAND (the abkit command, default: abkit on the PATH).
set -euo pipefail

usage="usage: $0 EXPERIMENT_FILE EXPERIMENT_KEY"
file=${1:?$usage}
key=${2:?$usage}
abkit=${ABKIT_COMMAND:-abkit}

"$abkit" experiment apply -f "$file"
started=0
"$abkit" experiment start "$key" || started=$?
if [ "$started" -ne 0 ] && [ "$started" -ne 4 ]; then # 4: concluded already; wait reports how
    exit "$started"
fi

status=0
"$abkit" wait "$key" \
    --timeout "${ABKIT_WAIT_TIMEOUT:-2h}" \
    --max-hold "${ABKIT_WAIT_MAX_HOLD:-6h}" \
    --poll-interval "${ABKIT_WAIT_POLL:-30}" || status=$?

case $status in
    0) echo "gate: $key promoted its candidate -- release it" ;;
    10) echo "gate: $key was rolled back -- failing the pipeline" >&2 ;;
    11) echo "gate: $key stopped inconclusive (no winner) -- not releasing" >&2 ;;
    12) echo "gate: $key was paused, or could not be analysed, for too long" >&2 ;;
    13) echo "gate: no decision on $key within ${ABKIT_WAIT_TIMEOUT:-2h}" >&2 ;;
    *) echo "gate: abkit wait failed (exit $status)" >&2 ;;
esac
exit "$status"
