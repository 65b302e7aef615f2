from tinyscheduler.cli import main

raise SystemExit(main())
