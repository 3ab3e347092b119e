"""``python -m iocmng``: the service (same as ``iocmng-server``)."""

import sys

from .server import main

sys.exit(main())
