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

from flux.modloader import main  # noqa: E402

if __name__ == "__main__":
    main()
