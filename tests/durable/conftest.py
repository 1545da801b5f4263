from __future__ import annotations

import pytest

from tests.support import Effects


@pytest.fixture
def effects() -> Effects:
    return Effects()
