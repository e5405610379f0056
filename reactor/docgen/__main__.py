"""`python -m reactor.docgen [--check]`."""
import sys

from .generate import main

sys.exit(main())
