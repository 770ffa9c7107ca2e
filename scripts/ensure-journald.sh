#!/bin/sh
# Starts systemd-journald by hand when its socket is missing (hosts and CI
# machines whose PID 1 is not systemd). Idempotent.
set -eu
sock=/run/systemd/journal/socket
if [ -S "$sock" ] && journalctl -n 0 >/dev/null 2>&1 && \
   python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect('$sock')" 2>/dev/null; then
  exit 0
fi
if [ -d /run/systemd/system ]; then
  echo "ensure-journald: systemd is PID 1 but journald's socket is missing; start systemd-journald.service" >&2
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
