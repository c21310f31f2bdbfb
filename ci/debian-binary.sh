#!/usr/bin/env bash
# ci/debian-binary.sh SUITE DIR PACKAGE...: downloads PACKAGE... from another Debian release
# (SUITE, e.g. trixie) together with every library they depend on, and unpacks them all
# into DIR. It uses a private apt configuration under DIR/.apt, so the host's own apt state
# and installed packages are not touched, and nothing comes from outside Debian's archive.
# A program unpacked this way runs with the suite's own loader and libraries:
#   DIR/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path DIR/usr/lib/x86_64-linux-gnu PROG
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 SUITE DIR PACKAGE..." >&2; exit 2; }
SUITE=$1 DIR=$2
shift 2
A=$DIR/.apt
mkdir -p "$A/etc/apt/sources.list.d" "$A/etc/apt/preferences.d" "$A/lists/partial" \
  "$A/cache/archives/partial" "$A/debs"
: > "$A/status"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" \
  > "$A/etc/apt/sources.list"
APT=(-o "Dir::Etc=$A/etc/apt" -o "Dir::State::Lists=$A/lists" -o "Dir::State::status=$A/status"
  -o "Dir::Cache=$A/cache" -o APT::Architecture=amd64 -o "APT::Architectures::=amd64"
  -o APT::Sandbox::User=root)
apt-get "${APT[@]}" -qq update
# The closure of hard dependencies, without virtual packages (shown as <name>).
mapfile -t PKGS < <(apt-cache "${APT[@]}" depends --recurse --no-recommends --no-suggests \
  --no-conflicts --no-breaks --no-replaces --no-enhances "$@" | grep -v '^[ <]' | sort -u)
(cd "$A/debs" && apt-get "${APT[@]}" -qq download "${PKGS[@]}")
for d in "$A"/debs/*.deb; do dpkg-deb -x "$d" "$DIR"; done
echo "debian-binary: $SUITE: ${PKGS[*]} unpacked into $DIR"
