"""``python -m faceignite.ijb``: see :mod:`faceignite.ijb.cli`."""
import sys

from faceignite.ijb.cli import main

main(sys.argv[1:])
