"""`python -m simulations SCENARIO [options]`."""

from simulations.cli import main

raise SystemExit(main())
