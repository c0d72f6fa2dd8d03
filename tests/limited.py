"""``python -m tests.limited ARGS``: ``python -m csvgen ARGS`` under resource limits:

- ``TEST_FILE_SIZE_LIMIT``: each file it writes is limited to that many bytes
  (RLIMIT_FSIZE). A write past the limit fails as on a full disk (EFBIG: Python
  ignores SIGXFSZ), whichever library makes it.
- ``TEST_OPEN_FILES_LIMIT``: at most that many open files (RLIMIT_NOFILE).

The limits are lifted again at exit (an exit handler registered after coverage's runs
before it), so that coverage can write this process's data whole: a data file cut at
the limit is a corrupt file that `coverage combine` would drop.
"""

import atexit
import os
import resource
import runpy

for variable, kind in [
    ("TEST_FILE_SIZE_LIMIT", resource.RLIMIT_FSIZE),
    ("TEST_OPEN_FILES_LIMIT", resource.RLIMIT_NOFILE),
]:
    if (value := os.environ.pop(variable, None)) is not None:
        before = resource.getrlimit(kind)
        resource.setrlimit(kind, (int(value), before[1]))
        atexit.register(resource.setrlimit, kind, before)
runpy.run_module("csvgen", run_name="__main__", alter_sys=True)
