"""``python -m gpujob.supervisor JOB_ID``: the local backend's supervisor process.

The local backend starts it detached for each job; the supervising itself is
:mod:`gpujob.backends._supervise`, which records the job only through the store it is handed: here,
the registry.
"""

from __future__ import annotations

import sys

from gpujob.backends import _supervise
from gpujob.registry import Registry


def main(argv: list[str]) -> int:
    return _supervise.main(argv, open_store=Registry)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
