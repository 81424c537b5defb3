#!/usr/bin/env bash
# The whole test suite (what .ci/run runs): installs the project and its test tools into .venv,
# uses the Postgres and Redis on localhost (starting a local redis-server if one is installed but
# not running), then runs pytest. Tests that need a service that is not there are skipped, and
# this script says which. Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install.sh --test
VENV=${LAYERPRUNE_VENV:-.venv}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 6379 && command -v redis-server >/dev/null; then
  echo "==> starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || true
  sleep 0.5
fi

export LAYERPRUNE_TEST_PG=${LAYERPRUNE_TEST_PG:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}
export LAYERPRUNE_TEST_PG_ADMIN=${LAYERPRUNE_TEST_PG_ADMIN:-postgresql://postgres@127.0.0.1:5432/postgres}
export LAYERPRUNE_TEST_REDIS=${LAYERPRUNE_TEST_REDIS:-redis://127.0.0.1:6379}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

missing=()
port_open 5432 || missing+=("Postgres (127.0.0.1:5432)")
port_open 6379 || missing+=("Redis (127.0.0.1:6379)")
if (( ${#missing[@]} )); then
  echo "==> NOT RUNNING: ${missing[*]}; the tests that need them will be SKIPPED (listed below)."
fi

set +e
# -rs lists every skipped test with its reason at the end of the run.
"$VENV/bin/python" -m pytest -q -rs "$@"
rc=$?
set -e
if (( ${#missing[@]} )); then
  echo "==> reminder: ${missing[*]} not running; see the SKIPPED lines above."
fi
exit $rc
