import sys

from smec_fast.cli import main

sys.exit(main())
