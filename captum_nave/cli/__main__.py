"""``python -m captum_nave.cli``: the ``captum-nave`` command (e.g. under ``torchrun -m``)."""

import sys

from captum_nave.cli import main

sys.exit(main())
