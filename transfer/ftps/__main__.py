"""`python -m transfer.ftps`: serve FTPS until SIGTERM or SIGINT."""

import sys

from transfer.ftps.server import main

sys.exit(main())
