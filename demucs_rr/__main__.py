"""``python -m demucs_rr`` runs the command line."""

import sys

from demucs_rr.cli import main

sys.exit(main())
