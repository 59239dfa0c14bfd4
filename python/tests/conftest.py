# Lets the tests import the package from the source tree and pure_torch from beside them, and runs
# the device-parametrised tests on each device of --device (cpu and cuda by default): a test that
# takes a `device` argument runs once per device, and one marked
#     @pytest.mark.per_device("a,b", cpu=[(a, b), …], cuda=[…])
# runs each device's own cases. So the CPU suite lists the CUDA cases, each reported skipped with the
# same one-line reason where no GPU is usable, and `--device cuda` runs only them (scripts/gpu_check.sh).
import pathlib
import sys

import pytest

here = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(here.parent), str(here)]

DEVICES = ("cpu", "cuda")
NO_GPU = "cuda: no CUDA GPU usable here (a CPU-only torch, or no GPU visible)"


def pytest_addoption(parser):
    parser.addoption("--device", default=",".join(DEVICES),
                     help="comma-separated devices for the device-parametrised tests: cpu, cuda (default: both)")


def pytest_configure(config):
    config.addinivalue_line("markers", "per_device(argnames, cpu=cases, cuda=cases): each device's own cases")


def pytest_generate_tests(metafunc):
    if "device" not in metafunc.fixturenames:
        return
    devices = [d.strip() for d in metafunc.config.getoption("device").split(",") if d.strip()]
    unknown = sorted(set(devices) - set(DEVICES))
    if unknown:
        raise pytest.UsageError(f"--device {','.join(unknown)}: not a device (accepted: {', '.join(DEVICES)})")
    import torch  # only here: collecting the other tests needs no torch
    skip = {"cuda": [pytest.mark.skip(reason=NO_GPU)] if not torch.cuda.is_available() else []}
    per_device = metafunc.definition.get_closest_marker("per_device")
    if per_device is None:
        metafunc.parametrize("device", [pytest.param(d, marks=skip.get(d, [])) for d in devices])
        return
    names = per_device.args[0]
    metafunc.parametrize("device," + names, [pytest.param(d, *case, marks=skip.get(d, []))
                                             for d in devices for case in per_device.kwargs.get(d, [])])
