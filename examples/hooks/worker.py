"""A worker that does some 'work', then crashes, to show the crash hooks at work."""
import os
import sys
import time

instance = os.environ.get("PML_INSTANCE", "?")
crash_after = float(os.environ.get("CRASH_AFTER", "8"))
print(f"worker {instance} up, pid {os.getpid()}", flush=True)

started = time.monotonic()
while time.monotonic() - started < crash_after:
    time.sleep(1)
    print(f"worker {instance} working...", flush=True)

print(f"worker {instance}: something went wrong, exiting with code 1", file=sys.stderr, flush=True)
sys.exit(1)
