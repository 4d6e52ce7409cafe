from qspos.cli import main

raise SystemExit(main())
