import sys

from exitflow.cli import main

sys.exit(main())
