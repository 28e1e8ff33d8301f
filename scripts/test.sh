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

# Node 20's `node --test DIR` runs every .js file under a directory named test,
# helpers included, so list the compiled *.test.js files whose .ts source still
# exists (dist/ is never cleaned, so a renamed test's old .js is left out).
targets=("$@")
if ((${#targets[@]} == 0)); then
  while IFS= read -r js; do
    ts="${js#dist/}"; ts="${ts%.js}.ts"
    [[ -f "$ts" ]] && targets+=("$js")
  done < <(find dist/test -type f -name '*.test.js' 2>/dev/null | LC_ALL=C sort)
  if ((${#targets[@]} == 0)); then
    echo "[test] no test files under dist/test (nothing to run)" >&2
    exit 1
  fi
fi
# Tests start daemons and real NBD clients: keep them serial on 2 cores.
echo "[test] node --test --test-concurrency=1 (${#targets[@]} files)" >&2
# exec: the runner's summary stays the last thing printed, and its status is ours.
exec node --test --test-concurrency=1 "${targets[@]}" </dev/null
