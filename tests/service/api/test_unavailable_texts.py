"""What a 503 says about whether anything may have been stored."""

from __future__ import annotations

from service.api.app import storage_unavailable_detail
from service.api.routes.tasks import NOT_REPLICATED_DETAIL


def test_a_read_says_nothing_changed_and_a_write_that_it_may_have_been_stored() -> None:
    assert "nothing was changed" in storage_unavailable_detail("GET")
    written = storage_unavailable_detail("POST")
    assert "may have been stored" in written
    assert "nothing was changed" not in written


def test_an_unreplicated_submission_says_no_replica_acknowledged_and_to_retry_with_its_key() -> None:
    assert NOT_REPLICATED_DETAIL.startswith("no replica of the store acknowledged the write in time")
    assert "may have been accepted" in NOT_REPLICATED_DETAIL
    assert "same Idempotency-Key" in NOT_REPLICATED_DETAIL
    assert "did not answer" not in NOT_REPLICATED_DETAIL
