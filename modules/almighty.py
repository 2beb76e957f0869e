"""`cigri-almighty`: CiGri's supervisor, in the foreground (systemd unit
`cigri.service`, or `cigri local run`)."""

from __future__ import annotations

import sys

from cigri.engine.almighty import main

if __name__ == "__main__":
    sys.exit(main())
