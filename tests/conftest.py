import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist each worker gets one core: more threads only fight over the same two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """The real datasets beside the checkout, when present (tests skip cleanly without them)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def oracle():
    """A pipeline whose ε̂ is the ideal one for data N(0, 0.25 I): smooth and exact, unlike a tiny trained model."""
    import ddimkit as dk
    from oracles import Gaussian

    s = dk.NoiseSchedule.linear()
    return dk.Pipeline(Gaussian(s, 0.0, 0.25), s, "epsilon", config={"data": {"spec": "mnist-5k", "image_size": 28}})
