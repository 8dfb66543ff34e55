"""``python -m fastconv ...`` is the ``fastconv`` command."""

import sys

from fastconv.tools.cli import main

sys.exit(main())
