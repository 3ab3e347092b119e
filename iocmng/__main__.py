"""``python -m iocmng``: the service (same as ``iocmng-server``)."""

import sys

from .service.service import main

sys.exit(main())
