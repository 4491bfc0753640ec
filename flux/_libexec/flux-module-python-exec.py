#!/usr/bin/env python3
"""flux module-python-exec: load a Python broker module with flux-brokermod.

flux(1) runs this file in place of flux-core's own loader when its
directory is first on FLUX_EXEC_PATH (see `flux-brokermod setup`).
"""

import os
import sys

# This file lives in <site>/flux/_libexec/: make <site> importable so that
# flux.modloader is found next to flux-core's own flux package.
_SITE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _SITE not in sys.path:
    sys.path.append(_SITE)

# flux-core 0.86+ extends its flux package with every flux/ directory on
# sys.path (pkgutil.extend_path); 0.84 and 0.85 do not, so add ours.
import flux  # noqa: E402

_OURS = os.path.join(_SITE, "flux")
if isinstance(getattr(flux, "__path__", None), list) and _OURS not in flux.__path__:
    flux.__path__.append(_OURS)

from flux.modloader import main  # noqa: E402

if __name__ == "__main__":
    main()
