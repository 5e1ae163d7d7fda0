"""python -m gpujob_dev.bench: see the package's text and docs/performance.md."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here comes from the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .run import main  # noqa: E402

sys.exit(main())
