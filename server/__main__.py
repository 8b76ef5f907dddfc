"""``python -m server`` is ``apikeys-server``."""

import sys

from server.cli import main

sys.exit(main())
