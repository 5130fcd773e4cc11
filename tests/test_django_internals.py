"""The one Django internal the app relies on, checked so that a Django release that changes it fails here."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from django_lightspeed_oauth.testing import make_company
from django_lightspeed_oauth.tokens import _in_transaction


@pytest.mark.django_db
def test_testcase_atomic_blocks_are_marked_and_do_not_count_as_the_callers_transaction():
    # pytest-django's ``django_db`` wraps each test in TestCase's atomic blocks.
    assert connection.in_atomic_block
    assert connection.atomic_blocks
    assert all(block._from_testcase for block in connection.atomic_blocks)
    company = make_company()
    assert not _in_transaction(company)
    with transaction.atomic():
        assert not connection.atomic_blocks[-1]._from_testcase
        assert _in_transaction(company)
    assert not _in_transaction(company)
