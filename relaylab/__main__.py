from relaylab.cli import main

raise SystemExit(main())
