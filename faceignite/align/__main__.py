"""``python -m faceignite.align SRC DST``."""
import sys

from faceignite.align.cli import main

sys.exit(main())
