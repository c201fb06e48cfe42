"""Shared fixtures: the real SmolLM2-135M-Instruct checkpoint; GPU tests skip without CUDA."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton decides interpreted vs compiled when a kernel module is imported: without a GPU,
    # every kernel a test forces (set_backend("triton")) must run in the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from minigrm.fixtures import smollm2_path as _smollm2_path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_path():
    return _smollm2_path()
