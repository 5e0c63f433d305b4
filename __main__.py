"""``python -m comfyui_runpod`` — the same as the ``comfyui-runpod`` console script."""

import sys

from .executor.cli import main

sys.exit(main())
