import sys

from losslandscape.frontends.cli import main

sys.exit(main())
