#!/usr/bin/env bash
# Run one test module (or node id) N times in a row, each on fresh state, and count the failures.
#
#   bash scripts/soak_tests.sh tests/integration/test_cache_s3.py 5
#   bash scripts/soak_tests.sh 'tests/integration/test_ray_executor.py::test_stage_through_ray_client_address' 20
#   bash scripts/soak_tests.sh tests/integration/test_slurm_executor.py 5 -k requeue   # extra args go to pytest
#
# Each round gets a fresh pytest basetemp and a fresh SLLM_HOME (so presets, SLURM/Ray/S3/MLflow state dirs are
# new) and runs with SLLM_REQUIRE_SERVICES=1, as CI does: a missing service is a failure, never a skip.
# The log of every failed round is kept under $SOAK_DIR (default: a new folder under /tmp); the summary line
# is "soak: TARGET: N runs, F failed, S s" and the exit code is 1 when any round failed.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
  echo "usage: $0 MODULE_OR_NODEID N [pytest args...]" >&2
  exit 2
fi
target=$1
rounds=$2
shift 2
case "$rounds" in ''|*[!0-9]*) echo "soak: N must be a positive integer (got '$rounds')" >&2; exit 2 ;; esac

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
SOAK_DIR=${SOAK_DIR:-$(mktemp -d /tmp/sllm-soak.XXXXXX)}
mkdir -p "$SOAK_DIR"
export SLLM_REQUIRE_SERVICES=1

failed=0
start=$(date +%s)
for i in $(seq 1 "$rounds"); do
  round="$SOAK_DIR/round-$i"
  mkdir -p "$round"
  t0=$(date +%s)
  SLLM_HOME="$round/home" SLLM_TEST_HOME="" "$PY" -m pytest "$target" -q -p no:cacheprovider \
    --basetemp "$round/tmp" "$@" > "$round/pytest.log" 2>&1
  code=$?
  t1=$(date +%s)
  if [ "$code" -eq 0 ]; then
    echo "soak: $target round $i/$rounds passed in $((t1 - t0)) s ($(tail -n 1 "$round/pytest.log"))"
    rm -rf "$round"
  else
    failed=$((failed + 1))
    echo "soak: $target round $i/$rounds FAILED (exit $code) in $((t1 - t0)) s; log: $round/pytest.log" >&2
    grep -E "^(FAILED|ERROR) " "$round/pytest.log" | head -n 10 >&2
    rm -rf "$round/tmp" "$round/home"  # keep the log, not the state (it can be GBs)
  fi
done
echo "soak: $target: $rounds runs, $failed failed, $(( $(date +%s) - start )) s (failed logs in $SOAK_DIR)"
[ "$failed" -eq 0 ]
