from stablelab.cli import main

raise SystemExit(main())
