from sesmail_gateway.cli import main

raise SystemExit(main())
