"""`python -m prune.cli ...` (what `accelerate launch -m prune.cli` runs) is the same as `prune-llm ...`."""

import sys

from prune.cli.main import main

sys.exit(main())
