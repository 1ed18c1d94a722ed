import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    """Unit tests are tiny: one thread each keeps the suite fast and deterministic on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
