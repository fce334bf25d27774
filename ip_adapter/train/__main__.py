"""`python -m ip_adapter.train`: train an IP-Adapter (see `python -m ip_adapter.train --help`)."""

from .cli import main

raise SystemExit(main())
