"""``python -m image_engine`` runs the ``image-engine`` command."""

from .cli import main

raise SystemExit(main())
