"""Shared fixtures: every device/dtype test runs on the CPU in fp32, and on CUDA (fp32 and bf16) when a
GPU is present, so the same suite checks a lent GPU machine."""

import pytest
import torch

CUDA = torch.cuda.is_available()

DEVICE_DTYPES = [
    pytest.param(("cpu", torch.float32), id="cpu-fp32"),
    pytest.param(("cuda", torch.float32), id="cuda-fp32", marks=pytest.mark.cuda),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bf16", marks=pytest.mark.cuda),
]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not CUDA:
            item.add_marker(skip)


@pytest.fixture(params=DEVICE_DTYPES)
def device_dtype(request):
    """(device, dtype) pairs; tolerances should scale with the dtype (bf16 keeps ~3 digits)."""
    return request.param


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread is faster and keeps the tests quick."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Every weight random (adaLN-Zero would otherwise make an untrained video model ignore its input)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


@pytest.fixture
def randomise():
    """random_weights, for tests that need a model whose output depends on every input."""
    return random_weights
