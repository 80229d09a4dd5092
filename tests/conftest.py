import os

import pytest
import torch

# Two cores on CI: avoid oversubscription between torch and BLAS threads.
torch.set_num_threads(int(os.environ.get("CAPTUM_NAVE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
