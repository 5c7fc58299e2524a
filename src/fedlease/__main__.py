"""`python -m fedlease`: the fedlease command line."""

import sys

from fedlease.cli import main

if __name__ == "__main__":
    sys.exit(main())
