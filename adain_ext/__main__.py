import sys

from adain_ext.cli import main

sys.exit(main())
