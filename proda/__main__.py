from proda.cli import main

raise SystemExit(main())
