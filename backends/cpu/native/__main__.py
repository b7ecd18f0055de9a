"""``python -m backends.cpu.native build|status``: see backends.cpu.native."""
import sys

from backends.cpu.native import main

sys.exit(main())
