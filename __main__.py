"""`python -m opencode_agent ...` is the same as `opencode-agent ...`."""

from .cli import main

raise SystemExit(main())
