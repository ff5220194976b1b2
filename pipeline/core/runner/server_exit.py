"""Imported only by the process executor's fork server (``pool.PRELOAD``, last): the server
ends without tearing down torch, torchvision and mediapipe module by module (about a second
after the driver is gone, while it still holds the driver's stdout and stderr open), as the
driver itself does (``pipeline.cli._exit_now``). Never import it anywhere else."""
from __future__ import annotations

import atexit
import os

atexit.register(os._exit, 0)
