from tinyscheduler.cli.main import main

raise SystemExit(main())
