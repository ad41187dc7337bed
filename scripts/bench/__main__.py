"""`python -m scripts.bench`: isolate the environment before any settings are read, run, then give back the
throwaway database and Redis db even when the run fails or is stopped."""

import signal
import sys

from scripts.bench import environment

isolation = environment.isolate()
# A SIGTERM (a timeout around the run) unwinds like Ctrl-C: the stack is stopped and the isolation released.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
try:
    from scripts.bench.run import main  # settings must see the isolated environment

    code = main(isolation)
finally:
    isolation.release()
sys.exit(code)
