"""`python -m agent` is the `driftgate` command."""

from agent.cli import main

raise SystemExit(main())
