import sys

from moe_cache_env.cli import main

sys.exit(main())
