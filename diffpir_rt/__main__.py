from diffpir_rt.engine.cli import main

raise SystemExit(main())
