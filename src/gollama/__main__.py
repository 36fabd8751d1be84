import sys

from gollama.cli import main

sys.exit(main())
