#!/usr/bin/env bash
# The one test command: installs test dependencies, builds, runs the whole suite serially.
# Works from any cwd, without a TTY, with CI=true. Exits with the test runner's status.
# Extra arguments are passed to `node --test` (e.g. scripts/test.sh dist/test/interop/).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-test-deps.sh

echo "[test] npm run build" >&2
npm run build </dev/null

# Tests start daemons and real NBD clients: keep them serial on 2 cores.
targets=("$@")
((${#targets[@]} > 0)) || targets=("dist/test/")
echo "[test] node --test --test-concurrency=1 ${targets[*]}" >&2
set +e
node --test --test-concurrency=1 "${targets[@]}" </dev/null
status=$?
set -e
echo "[test] test runner exited with status $status" >&2
exit "$status"
