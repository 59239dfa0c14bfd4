# Lets the tests import the package from the source tree and pure_torch from beside them.
import pathlib
import sys

here = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(here.parent), str(here)]
