"""``python -m vitdeploy`` (and ``torchrun -m vitdeploy``): the command line."""

import sys

from vitdeploy.cli import main

sys.exit(main())
