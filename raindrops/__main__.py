"""`python -m raindrops`: the command line."""

import sys

from raindrops.cli import main

sys.exit(main())
