"""Fixtures shared by several test modules, and test-wide setup."""

import os
import tempfile

# Keep every cache (checkpoints, page memory) out of the user's home. Set before core.config is
# imported anywhere: its default cache dir derives from this.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="search-all-test-cache-")

from tests.fakes.s3_server import s3_env, s3_server  # noqa: E402,F401 - fixtures, found by name
