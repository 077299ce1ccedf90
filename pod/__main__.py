import sys

from pod.cli import main

sys.exit(main())
