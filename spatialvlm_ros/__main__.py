"""``python -m spatialvlm_ros``: the ``spatialvlm`` command line."""

import sys

from spatialvlm_ros.cli import main

sys.exit(main())
