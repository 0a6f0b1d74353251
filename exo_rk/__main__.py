"""``python -m exo_rk serve ...`` is ``exo-rk serve ...``."""

import sys

from exo_rk.cli import main

sys.exit(main())
