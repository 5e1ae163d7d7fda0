"""``python -m gpujob.hosts.agent``, and the entry of the shipped agent.pyz."""

import sys

from gpujob.hosts.agent.main import main

sys.exit(main())
