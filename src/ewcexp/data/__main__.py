"""`python -m ewcexp.data download NAME... --root DIR`: fetch built-in data sets ahead of a run."""

import sys

from ewcexp.data.images import main

sys.exit(main())
