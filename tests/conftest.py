"""Shared test fixtures: the real sample data lives in ../shared/data (never copied here)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def shared_data() -> str:
    """Path of ../shared/data; the tests that need it fail loudly when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        raise FileNotFoundError(f"sample data not found at {SHARED_DATA}")
    return SHARED_DATA
