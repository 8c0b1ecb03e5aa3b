#!/bin/sh
# A tiny worker: says hello, then stays alive and prints a heartbeat now and then.
echo "$GREETING: worker $PML_INSTANCE of $PML_APP is up (pid $$)"
trap 'echo "got SIGTERM, bye"; exit 0' TERM
while :; do
  sleep 30 &
  wait $! 2>/dev/null   # wait (not a foreground sleep) so SIGTERM is handled at once
  echo "still alive (pid $$)"
done
