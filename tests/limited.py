"""``python -m tests.limited ARGS``: ``python -m csvgen ARGS`` with each file it writes
limited to ``TEST_FILE_SIZE_LIMIT`` bytes (RLIMIT_FSIZE). A write past the limit fails
as on a full disk (EFBIG: Python ignores SIGXFSZ), whichever library makes it."""

import os
import resource
import runpy

limit = int(os.environ.pop("TEST_FILE_SIZE_LIMIT"))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
runpy.run_module("csvgen", run_name="__main__", alter_sys=True)
