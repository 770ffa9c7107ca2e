#!/bin/sh
# Until `con bootstrap` exists: lay out what the daemon needs on this host
# (under $CON_ROOT, default /): the config of the chosen profile (kept if one
# is already installed), the outer inbox, each agent's directories, and the
# event log's parent directory. Users, ACLs and units are not created here.
set -eu
con="$1"; profile="$2"
root="${CON_ROOT:-}"
install -d -m 0755 "$root/etc/con" "$root/srv/con/inbox" "$root/srv/con/agents"
install -d -m 0700 "$root/var/lib/con"
if [ ! -f "$root/etc/con/con.toml" ]; then
  install -m 0644 "configs/$profile/con.toml" "$root/etc/con/con.toml"
  echo "dev-setup: installed configs/$profile/con.toml as $root/etc/con/con.toml"
fi
# Agent names: the first column of `con config check` after its header.
for agent in $("$con" config check "$root/etc/con/con.toml" | awk 'NR > 3 { print $1 }'); do
  for sub in inbox outbox processed workspace sessions; do
    install -d -m 0700 "$root/srv/con/agents/$agent/$sub"
  done
done
echo "dev-setup: directories ready under ${root:-/}"
