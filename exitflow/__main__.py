import sys

from exitflow.app.cli import main

sys.exit(main())
