from relaylab.cli.commands import main

raise SystemExit(main())
