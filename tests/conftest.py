import os

import pytest
import torch

# Two cores on CI: avoid oversubscription between torch and BLAS threads.
torch.set_num_threads(int(os.environ.get("CAPTUM_NAVE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shape_nets():
    """(trained, random-init) ShapeNet pair; trained once per test session (~10 s)."""
    from trained import train_shape_net

    return train_shape_net()
