#!/bin/sh
# Starts systemd-journald by hand when its socket is missing (hosts and CI
# machines whose PID 1 is not systemd). Idempotent.
set -eu
sock=/run/systemd/journal/socket
# systemd-cat fails when nothing accepts on journald's stdout socket, so this
# tells a live journald from a stale socket left by a dead one.
if [ -S "$sock" ] && systemd-cat -t con-ensure-journald true 2>/dev/null; then
  exit 0
fi
if [ -d /run/systemd/system ]; then
  echo "ensure-journald: systemd is PID 1 but journald does not answer; check systemd-journald.service" >&2
  exit 1
fi
mkdir -p /run/systemd/journal
rm -f "$sock"
/lib/systemd/systemd-journald >/dev/null 2>&1 &
i=0
while [ ! -S "$sock" ]; do
  i=$((i + 1))
  [ "$i" -gt 50 ] && { echo "ensure-journald: journald did not create $sock" >&2; exit 1; }
  sleep 0.1
done
echo "ensure-journald: started systemd-journald (pid $!)"
