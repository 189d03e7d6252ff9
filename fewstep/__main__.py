"""`python -m fewstep ...` runs the command line."""

import sys

from fewstep.cli import main

sys.exit(main())
