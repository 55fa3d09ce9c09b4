from diffpir_rt.cli import main

raise SystemExit(main())
