"""`python -m granite_gguf …` runs the `granite-gguf` command line."""

import sys

from granite_gguf.cli import main

sys.exit(main())
