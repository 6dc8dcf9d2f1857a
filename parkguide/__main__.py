from parkguide.cli import main

raise SystemExit(main())
