"""`python -m mailgate` runs the command line."""

import sys

from mailgate.cli.main import main

sys.exit(main())
