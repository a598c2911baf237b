import sys

from llqr.workflow.plan import main

sys.exit(main())
