"""Loading errors that need no model."""

import pytest

import taskvec


def test_missing_local_dir():
    with pytest.raises(taskvec.TaskvecError, match="no such directory"):
        taskvec.load("./no/such/dir")
