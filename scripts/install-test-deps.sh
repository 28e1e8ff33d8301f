#!/usr/bin/env bash
# Installs everything the test suite needs, and nothing when it is already there.
#
#   1. Debian packages of the real NBD/disk tools the interop tests drive
#      (qemu-utils, libnbd-bin, nbdkit, nbdfuse, fio, fuse3, e2fsprogs), plus the
#      native build tools better-sqlite3 needs (g++, make, python3) when missing.
#      Each binary is checked first; `apt-get update` runs only when one is missing.
#   2. `npm ci` (better-sqlite3 builds from source with node-gyp, about a minute),
#      then proves `require('better-sqlite3')` works.
#
# Idempotent. Runs as root, or through sudo when not root. No stdin needed.
# Env:
#   SKIP_APT=1        do not touch apt (missing tools will then fail the tests loudly)
#   FORCE_NPM_CI=1    run `npm ci` even when node_modules matches the lock file
#   (with CI=true, `npm ci` always runs)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

log() { printf '[install-test-deps] %s\n' "$*" >&2; }
die() { printf '[install-test-deps] ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

# binary -> Debian package that ships it ("a|b": the first one the archive has;
# nbdfuse is its own package from Debian 13, part of libnbd-bin in Debian 12)
declare -a WANT=(
  "qemu-img:qemu-utils"
  "qemu-io:qemu-utils"
  "qemu-nbd:qemu-utils"
  "nbdinfo:libnbd-bin"
  "nbdcopy:libnbd-bin"
  "nbdkit:nbdkit"
  "nbdfuse:nbdfuse|libnbd-bin"
  "fio:fio"
  "fusermount3:fuse3"
  "mkfs.ext4:e2fsprogs"
  "e2fsck:e2fsprogs"
  "debugfs:e2fsprogs"
  "g++:g++"
  "make:make"
  "python3:python3"
)

# For testing this script: binaries to treat as missing (space-separated).
pretend_missing=" ${INSTALL_TEST_DEPS_PRETEND_MISSING:-} "

have() {
  [[ "$pretend_missing" == *" $1 "* ]] && return 1
  # Also look in sbin directories, which a non-root PATH may lack (mkfs.ext4, e2fsck).
  command -v "$1" >/dev/null 2>&1 && return 0
  local d
  for d in /usr/sbin /sbin /usr/local/sbin; do
    [[ -x "$d/$1" ]] && return 0
  done
  return 1
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n env DEBIAN_FRONTEND=noninteractive "$@"
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

missing_pkgs=()
for pair in "${WANT[@]}"; do
  bin="${pair%%:*}"; pkg="${pair#*:}"
  if ! have "$bin"; then
    log "missing $bin (package $pkg)"
    [[ " ${missing_pkgs[*]-} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
  fi
done

# fio must have its nbd engine (Debian builds it with libnbd).
fio_has_nbd() { local engines; engines="$(fio --enghelp 2>/dev/null || true)"; grep -qx $'\tnbd' <<<"$engines"; }
if have fio && ! fio_has_nbd; then
  log "fio has no nbd ioengine; (re)installing fio and libnbd0"
  missing_pkgs+=("fio" "libnbd0")
fi
# nbdkit's file plugin (in the nbdkit package on Debian).
if have nbdkit && ! nbdkit --dump-plugin file >/dev/null 2>&1; then
  log "nbdkit has no file plugin; reinstalling nbdkit"
  [[ " ${missing_pkgs[*]-} " == *" nbdkit "* ]] || missing_pkgs+=("nbdkit")
fi

if ((${#missing_pkgs[@]} > 0)); then
  if [[ "${SKIP_APT:-0}" == "1" ]]; then
    log "SKIP_APT=1: not installing ${missing_pkgs[*]}"
  else
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing_pkgs[*]}"
    log "apt-get update"
    as_root apt-get update -q || die "apt-get update failed"
    # Resolve "a|b" alternatives to the first package the archive offers.
    resolved=()
    for spec in "${missing_pkgs[@]}"; do
      pick=""
      IFS='|' read -r -a alts <<<"$spec"
      for alt in "${alts[@]}"; do
        policy="$(apt-cache policy "$alt" 2>/dev/null || true)"
        if [[ "$policy" =~ Candidate:\ [^\(] ]]; then pick="$alt"; break; fi
      done
      [[ -n "$pick" ]] || die "no Debian package found for: $spec"
      [[ " ${resolved[*]-} " == *" $pick "* ]] || resolved+=("$pick")
    done
    missing_pkgs=("${resolved[@]}")
    log "apt-get install ${missing_pkgs[*]}"
    as_root apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      "${missing_pkgs[@]}" </dev/null || die "apt-get install failed: ${missing_pkgs[*]}"
    pretend_missing=" "
    for pair in "${WANT[@]}"; do
      bin="${pair%%:*}"
      have "$bin" || die "$bin still missing after installing ${missing_pkgs[*]}"
    done
    fio_has_nbd || die "fio has no nbd ioengine after install"
  fi
else
  log "all test tools present"
fi

# ---- npm ----------------------------------------------------------------------
command -v node >/dev/null 2>&1 || die "node not found"
command -v npm >/dev/null 2>&1 || die "npm not found"

stamp_file="node_modules/.thinarray-deps-stamp"
want_stamp="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1) node-$(node --version)"
sqlite_ok() {
  node -e "const D=require('better-sqlite3'); const d=new D(':memory:'); d.prepare('select 1 as x').get(); d.close();" 2>&1
}

run_npm_ci=1
if [[ "${CI:-}" != "true" && "${FORCE_NPM_CI:-0}" != "1" && -f "$stamp_file" ]] \
   && [[ "$(cat "$stamp_file")" == "$want_stamp" ]] && sqlite_ok >/dev/null; then
  log "node_modules matches package-lock.json; skipping npm ci (FORCE_NPM_CI=1 to force)"
  run_npm_ci=0
fi

if ((run_npm_ci)); then
  log "npm ci (better-sqlite3 builds from source, ~1 min)"
  npm ci --no-audit --no-fund </dev/null || die "npm ci failed"
fi

if ! out="$(sqlite_ok)"; then
  printf '%s\n' "$out" >&2
  die "better-sqlite3 does not load after npm ci. Its native build did not run or failed:
  check package.json \"allowScripts\": {\"better-sqlite3\": true} (npm 11 skips install scripts otherwise),
  and that g++, make and python3 are installed. Try: (cd node_modules/better-sqlite3 && npx node-gyp rebuild --release)"
fi
printf '%s' "$want_stamp" >"$stamp_file"
log "ok: test tools present, node_modules installed, better-sqlite3 loads"
