"""``python -m search.cli``: the same as the ``resnet-search`` command."""

import sys

from search.cli import main

sys.exit(main())
