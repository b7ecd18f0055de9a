"""``python -m unet3d_core.native build|status``: see unet3d_core.native."""
import sys

from unet3d_core.native import main

sys.exit(main())
