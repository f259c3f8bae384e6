"""``python -m acdc`` (what ``torchrun ... -m acdc train RECIPE`` runs on every rank)."""

import sys

from .cli import main

sys.exit(main())
