"""``python -m minibnn ...`` is the ``minibnn`` command (for when its script is not on PATH)."""
import sys

from minibnn.commands.cli import main

sys.exit(main())
