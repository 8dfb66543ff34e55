"""``python -m fastconv ...`` is the ``fastconv`` command."""

import sys

from fastconv.cli import main

sys.exit(main())
