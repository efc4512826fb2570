"""``python -m verification``: run the suite and print the report."""
import sys

from verification.runner import main

sys.exit(main())
