# Chooses the one torch mhc builds against: the torch of a Python environment (MHC_PYTHON, by
# default the project environment .venv that scripts/setup.sh makes), refused outside the
# supported range in one line. It points find_package(Torch), which the caller runs after CUDA is
# set up, at that torch's own CMake package; a LibTorch elsewhere on the machine (a distribution's
# libtorch-dev, say) is never searched, and a library of it found in the cache is refused.
#
# Sets MHC_TORCH_ROOT (the torch package folder) and MHC_SITE_PACKAGES (the folder that holds it,
# where pip puts NVIDIA's CUDA libraries).

set(MHC_TORCH_OLDEST 2.11)  # the lent GPU machines carry 2.11.0+cu130
set(MHC_TORCH_NEWEST 2.14)  # 2.14.1, the CUDA 13.0 wheel of scripts/cuda_wheel_build.sh

set(MHC_PYTHON "${CMAKE_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python whose torch mhc builds against (scripts/setup.sh makes .venv)")
if(NOT EXISTS "${MHC_PYTHON}")
  message(FATAL_ERROR "MHC_PYTHON ${MHC_PYTHON} does not exist: run `bash scripts/setup.sh`, or pass "
                      "-DMHC_PYTHON=/path/to/python of an environment with torch ${MHC_TORCH_OLDEST} to ${MHC_TORCH_NEWEST}")
endif()
execute_process(
  COMMAND "${MHC_PYTHON}" -c "import os, torch, torch.utils
print(torch.__version__.split('+')[0]); print(torch.utils.cmake_prefix_path); print(os.path.dirname(torch.__file__))"
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
get_filename_component(MHC_SITE_PACKAGES "${MHC_TORCH_ROOT}" DIRECTORY)
string(REGEX MATCH "^[0-9]+\\.[0-9]+" torch_major_minor "${torch_version}")
if(torch_major_minor VERSION_LESS MHC_TORCH_OLDEST OR torch_major_minor VERSION_GREATER MHC_TORCH_NEWEST)
  message(FATAL_ERROR "torch ${torch_version} (${MHC_PYTHON}) is not supported "
                      "(accepted: ${MHC_TORCH_OLDEST} to ${MHC_TORCH_NEWEST})")
endif()

# Another torch than the last configure's (a new MHC_PYTHON, or a build folder of an older
# LibTorch): forget what was found in the old one's environment, the libraries of torch and of
# CUDA and the CUDA headers, so that nothing of it is linked beside the new one.
if(NOT MHC_TORCH_ROOT STREQUAL MHC_CONFIGURED_TORCH_ROOT)
  get_cmake_property(cached CACHE_VARIABLES)
  foreach(variable ${cached})
    if(variable MATCHES "^(TORCH_LIBRARY|c10_LIBRARY|C10_CUDA_LIBRARY|CAFFE2_NVRTC_LIBRARY|Caffe2_DIR|CUDA_.*_LIBRARY|MHC_.*_h_DIR)$")
      unset(${variable} CACHE)
    endif()
  endforeach()
  set(MHC_CONFIGURED_TORCH_ROOT "${MHC_TORCH_ROOT}" CACHE INTERNAL "The torch the cache's libraries belong to")
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
    message(FATAL_ERROR "${variable} ${${variable}} is not a library of ${MHC_PYTHON}'s torch "
                        "(${MHC_TORCH_ROOT}/lib): do not set it, or remove it from the CMake cache")
  endif()
endforeach()
message(STATUS "torch ${torch_version} from ${MHC_TORCH_ROOT}")
