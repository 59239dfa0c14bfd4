"""Finds libmhc.so and loads it into torch (torch.ops.mhc.*), refusing a torch it was not built for.

The library is C++ against LibTorch's ABI, so one built for another torch release fails at load
time with an unresolved-symbol dump, or worse. The build writes the LibTorch version beside the
library (libmhc.torch-version); we compare it with the importing torch first.
"""
import os
import re

import torch

LIBRARY_NAME = "libmhc.so"
VERSION_NAME = "libmhc.torch-version"


def _candidates():
    if os.environ.get("MHC_LIBRARY"):
        yield os.environ["MHC_LIBRARY"]
        return
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "..", "..", "build", LIBRARY_NAME)  # the repository's build tree, first
    yield os.path.join(here, LIBRARY_NAME)  # an installed copy (pip install ./python)


def _major_minor(version):
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def find_library():
    for path in _candidates():
        if os.path.isfile(path):
            return os.path.normpath(path)
    tried = ", ".join(os.path.normpath(p) for p in _candidates())
    raise ImportError(f"mhc: {LIBRARY_NAME} not found (tried {tried}); build it with `make build` "
                      "or point MHC_LIBRARY at it")


def check_torch_version(path, torch_version=None):
    """Raises ImportError when the library was built for another torch major.minor."""
    torch_version = torch_version or torch.__version__
    stamp = os.path.join(os.path.dirname(path), VERSION_NAME)
    if not os.path.isfile(stamp):
        raise ImportError(f"mhc: {stamp} is missing, so the torch version {path} was built against is "
                          f"unknown (this torch is {torch_version}); rebuild the library")
    with open(stamp) as f:
        built = f.read().strip()
    if _major_minor(built) != _major_minor(torch_version):
        raise ImportError(f"mhc: {path} was built against torch {built} but this is torch {torch_version}; "
                          "rebuild the library against this torch")
    return built


def load():
    path = find_library()
    check_torch_version(path)
    torch.ops.load_library(path)
    return path
