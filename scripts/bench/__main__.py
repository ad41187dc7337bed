"""`python -m scripts.bench`: isolate the environment before any settings are read, then run every phase."""

import sys

from scripts.bench import environment

environment.isolate()

from scripts.bench.run import main  # noqa: E402  (settings must see the isolated environment)

sys.exit(main())
