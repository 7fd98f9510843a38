from diffguide.cli import main

raise SystemExit(main())
