import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter. The variable must be set
# before any kernel is decorated, i.e. before custom_norm.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import custom_norm  # noqa: E402,F401  (registers the op)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Where the Triton kernels run: the GPU if there is one, else CPU tensors under the interpreter.
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
