#!/usr/bin/env bash
# Fetch Prometheus 2.42 and promtool from Debian's `prometheus` package, unpacked (not
# installed: no root needed) into .cache/prometheus (git-ignored), for scripts/check_deploy.py
# (promtool check config / check rules / test rules) and for running a local Prometheus
# against `rlap serve`. Idempotent: nothing is fetched once the marker file is there.
# Prints the bin folder on stdout (progress goes to stderr), e.g.
#   PATH="$(scripts/setup-prometheus.sh):$PATH" promtool --version
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${RLAP_PROMETHEUS_DIR:-$root/.cache/prometheus}
bin="$dest/usr/bin"
marker="$dest/.installed"
log() { echo "setup-prometheus: $*" >&2; }

if [ -f "$marker" ] && [ -x "$bin/promtool" ] && [ -x "$bin/prometheus" ]; then
  log "present ($(cat "$marker"))"
  echo "$bin"
  exit 0
fi

command -v apt-get >/dev/null || { log "apt-get not found (Debian/Ubuntu only); install promtool 2.42+ by other means"; exit 1; }
command -v dpkg >/dev/null || { log "dpkg not found"; exit 1; }
mkdir -p "$dest"
# (As root, apt may warn that its _apt user cannot access the download folder: harmless.)
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
log "downloading Debian package prometheus (apt-get download, no install)"
# apt-get download needs no root; it needs package lists (apt-get update) that know the package.
if ! (cd "$dl" && apt-get download prometheus >&2); then
  log "apt-get download prometheus failed: run 'apt-get update' (as root) first, or check that bookworm's main is in the sources"
  exit 1
fi
deb=$(ls "$dl"/prometheus_*.deb)
log "unpacking $(basename "$deb") into $dest"
dpkg -x "$deb" "$dest"
for t in prometheus promtool; do
  [ -x "$bin/$t" ] || { log "$bin/$t missing after unpacking"; exit 1; }
done
ver=$("$bin/promtool" --version 2>&1 | head -n1)
log "promtool runs: $ver"
echo "$(basename "$deb") | $ver" > "$marker"
echo "$bin"
