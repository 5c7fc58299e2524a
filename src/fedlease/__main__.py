"""`python -m fedlease`: the fedlease command line."""

from fedlease.cli import main

raise SystemExit(main())
