"""`python -m ip_adapter.evaluate`: CLIP-T / CLIP-I of generated images (see `--help`)."""

from .cli import main

raise SystemExit(main())
