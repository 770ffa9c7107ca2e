#!/bin/sh
# Installs the Debian packages con's build and tests need (root). Quick when
# everything is already there: apt is only called for missing packages.
set -eu
pkgs="libacl1-dev acl nftables sudo systemd util-linux procps debootstrap systemd-container systemd-journal-remote"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages:$missing (run as root, or: apt-get install$missing)" >&2
    exit 1
  fi
  echo "install-deps: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $missing >/dev/null
fi
