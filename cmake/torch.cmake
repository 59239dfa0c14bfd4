# Chooses the one torch mhc builds against: the torch of a Python environment (MHC_PYTHON, by
# default the project environment .venv that scripts/setup.sh makes), refused outside the
# supported range in one line. It points find_package(Torch), which the caller runs after CUDA is
# set up, at that torch's own CMake package; a LibTorch elsewhere on the machine (a distribution's
# libtorch-dev, say) is never searched, and a library of it found in the cache is refused.
#
# Sets MHC_TORCH_ROOT (the torch package folder) and MHC_SITE_PACKAGES (its site-packages, where
# pip puts NVIDIA's CUDA libraries).

set(MHC_TORCH_MIN 2.11)   # the lent GPU machines carry 2.11.0+cu130
set(MHC_TORCH_BELOW 2.15) # newest tested: 2.14.1

set(MHC_PYTHON "${CMAKE_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python whose torch mhc builds against (scripts/setup.sh makes .venv)")
if(NOT EXISTS "${MHC_PYTHON}")
  message(FATAL_ERROR "MHC_PYTHON ${MHC_PYTHON} does not exist: run `bash scripts/setup.sh`, or pass "
                      "-DMHC_PYTHON=/path/to/python of an environment with torch ${MHC_TORCH_MIN} to 2.14")
endif()
execute_process(
  COMMAND "${MHC_PYTHON}" -c "import os, sysconfig, torch, torch.utils
print(torch.__version__.split('+')[0]); print(torch.utils.cmake_prefix_path)
print(os.path.dirname(torch.__file__)); print(sysconfig.get_paths()['purelib'])"
  OUTPUT_VARIABLE torch_facts ERROR_VARIABLE torch_error RESULT_VARIABLE torch_status OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT torch_status EQUAL 0)
  string(STRIP "${torch_error}" torch_error)
  string(REGEX REPLACE ".*\n" "" torch_error "${torch_error}")  # the last line: Python's exception
  message(FATAL_ERROR "${MHC_PYTHON} cannot import torch (${torch_error}): run `bash scripts/setup.sh`")
endif()
string(REPLACE "\n" ";" torch_facts "${torch_facts}")
list(GET torch_facts 0 torch_version)
list(GET torch_facts 1 torch_cmake_prefix)
list(GET torch_facts 2 MHC_TORCH_ROOT)
list(GET torch_facts 3 MHC_SITE_PACKAGES)
if(torch_version VERSION_LESS MHC_TORCH_MIN OR NOT torch_version VERSION_LESS MHC_TORCH_BELOW)
  message(FATAL_ERROR "torch ${torch_version} (${MHC_PYTHON}) is not supported (accepted: ${MHC_TORCH_MIN} to 2.14)")
endif()

# The Python torch's CMake package, and no other: Torch_DIR pins it, and the libraries its package
# looks up by name are looked up first, inside that torch only (TorchConfig.cmake would take the
# first libtorch.so or libc10.so on the system's library path).
set(Torch_DIR "${torch_cmake_prefix}/Torch" CACHE PATH "" FORCE)
foreach(variable_and_name TORCH_LIBRARY:torch c10_LIBRARY:c10 C10_CUDA_LIBRARY:c10_cuda CAFFE2_NVRTC_LIBRARY:caffe2_nvrtc)
  string(REPLACE ":" ";" variable_and_name "${variable_and_name}")
  list(GET variable_and_name 0 variable)
  list(GET variable_and_name 1 name)
  find_library(${variable} ${name} PATHS "${MHC_TORCH_ROOT}/lib" NO_DEFAULT_PATH)
  string(FIND "${${variable}}" "${MHC_TORCH_ROOT}/lib/" at)
  if(${variable} AND NOT at EQUAL 0)
    message(FATAL_ERROR "${${variable}} is not a library of ${MHC_PYTHON}'s torch (${MHC_TORCH_ROOT}/lib): "
                        "clear ${variable} in the CMake cache (or remove build/)")
  endif()
endforeach()
message(STATUS "torch ${torch_version} from ${MHC_TORCH_ROOT}")
