"""`python -m deeprs` is the same as the `deeprs` console script."""

import sys

from deeprs.cli import main

sys.exit(main())
