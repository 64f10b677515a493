import sys

from neurorg_core.cli import main

sys.exit(main())
