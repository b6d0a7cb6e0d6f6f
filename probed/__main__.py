from probed.cli import main

raise SystemExit(main())
