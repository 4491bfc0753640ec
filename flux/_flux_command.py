"""Which ``flux`` command is flux-core's here (no pytest needed, unlike
:mod:`flux.brokermod_testing`, which offers it as ``find_flux``)."""

import os
import shutil
from typing import Optional


def find_flux() -> Optional[str]:
    """Return the ``flux`` command to use, or None.

    ``$FLUX_BROKERMOD_FLUX`` if set (None if it is not executable), else
    ``flux`` on ``PATH``.
    """
    configured = os.environ.get("FLUX_BROKERMOD_FLUX")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("flux")
