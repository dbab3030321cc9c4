"""``python -m relaylab.offline_claude``: run the stand-in in the foreground."""

from relaylab.offline_claude.server import main

raise SystemExit(main())
