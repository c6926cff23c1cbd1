"""`python -m tolclip` is the `tolclip` command."""

import sys

from tolclip.cli.main import main

sys.exit(main())
