import sys

from llqr.workflow.train_cli import main

sys.exit(main())
