"""``python -m faceignite.lfw.make_pairs``: the former name of
``python -m faceignite.verification.make_pairs`` (same options)."""
import sys

from faceignite.verification.make_pairs import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
