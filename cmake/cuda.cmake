# CUDA for src/kernels/cuda and src/ops/op_cuda.cpp. The kernels are compiled whenever nvcc exists
# (MHC_CUDA=auto), so a machine without a GPU still compiles every CUDA source; MHC_CUDA=on
# requires it, off skips it.
#
# The CUDA libraries (cuBLAS; cudart; for the CUDA binding's torch headers, cuSPARSE's and
# cuSOLVER's headers) come from NVIDIA's pip packages in the Python environment where it has them
# (site-packages/nvidia/*/, which scripts/setup.sh installs and a CUDA torch wheel brings: the
# libraries that torch loads at run time), and otherwise from the CUDA toolkit. So a toolkit of
# nvcc and cudart alone is enough.
#
# Sets MHC_HAVE_CUDA, and MHC_CUDA_LIBRARY_INCLUDE_DIRS: the folders of the CUDA library headers
# that the kernels and torch's CUDA headers include.

set(MHC_CUDA auto CACHE STRING "Build the CUDA kernels: auto, on, off")
set_property(CACHE MHC_CUDA PROPERTY STRINGS auto on off)
set(MHC_HAVE_CUDA OFF)
if(MHC_CUDA STREQUAL "off")
  return()
endif()
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(MHC_CUDA STREQUAL "on")
    message(FATAL_ERROR "MHC_CUDA=on but no CUDA compiler (nvcc) was found")
  endif()
  message(STATUS "CUDA: no nvcc, the CUDA sources are not compiled")
  return()
endif()
set(MHC_CUDA_ARCH 90 CACHE STRING "CUDA architecture to compile for (90: H100 / H200)")
# torch's CMake asks nvcc for its default architectures, which without a GPU start at one nvcc 13
# refuses (compute_50): name ours (90 -> 9.0).
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  string(REGEX REPLACE "([0-9])$" ".\\1" arch_dotted "${MHC_CUDA_ARCH}")
  set(ENV{TORCH_CUDA_ARCH_LIST} "${arch_dotted}")
endif()
enable_language(CUDA)

# NVIDIA's pip packages ship headers in nvidia/*/include and libraries under versioned names only
# (libcublas.so.13): links with the plain names, in one folder of the build, let find_library, and
# so FindCUDAToolkit and a CUDA torch's CMake package, take them; links with the versioned names
# beside them let the executables' run-time path (that folder) load them.
set(MHC_CUDA_LIBRARY_INCLUDE_DIRS)
file(GLOB pip_libraries "${MHC_SITE_PACKAGES}/nvidia/*/lib/lib*.so.*")
set(pip_links "${CMAKE_BINARY_DIR}/nvidia_pip_libraries")
file(REMOVE_RECURSE "${pip_links}")  # none of another environment's
foreach(library ${pip_libraries})
  get_filename_component(name "${library}" NAME)
  string(REGEX REPLACE "\\.so\\..*$" ".so" plain "${name}")
  file(MAKE_DIRECTORY "${pip_links}")
  file(CREATE_LINK "${library}" "${pip_links}/${plain}" SYMBOLIC)
  file(CREATE_LINK "${library}" "${pip_links}/${name}" SYMBOLIC)  # what the run-time path finds
  get_filename_component(package "${library}" DIRECTORY)
  list(APPEND MHC_CUDA_LIBRARY_INCLUDE_DIRS "${package}/../include")
endforeach()
list(APPEND CMAKE_LIBRARY_PATH "${pip_links}")
find_package(CUDAToolkit REQUIRED)
# A CUDA torch's CMake package also runs the old FindCUDA, which guesses the toolkit from the first
# nvcc on PATH (/usr/local/bin/nvcc here, a link): give it the one CMake compiles with.
get_filename_component(cuda_root "${CUDAToolkit_BIN_DIR}" DIRECTORY)
set(CUDA_TOOLKIT_ROOT_DIR "${cuda_root}" CACHE PATH "The CUDA toolkit of CMAKE_CUDA_COMPILER")

foreach(header cublas_v2.h cusparse.h cusolverDn.h)
  string(MAKE_C_IDENTIFIER "MHC_${header}_DIR" variable)
  find_path(${variable} ${header} HINTS ${CUDAToolkit_INCLUDE_DIRS} ${MHC_CUDA_LIBRARY_INCLUDE_DIRS} NO_DEFAULT_PATH)
  list(APPEND MHC_CUDA_LIBRARY_INCLUDE_DIRS ${${variable}})
endforeach()
list(REMOVE_DUPLICATES MHC_CUDA_LIBRARY_INCLUDE_DIRS)
if(NOT TARGET CUDA::cublas OR NOT MHC_cublas_v2_h_DIR OR NOT MHC_cusparse_h_DIR OR NOT MHC_cusolverDn_h_DIR)
  set(level WARNING)  # loud, not fatal: the CPU build goes on
  if(MHC_CUDA STREQUAL "on")
    set(level FATAL_ERROR)
  endif()
  message(${level} "CUDA: nvcc ${CUDAToolkit_VERSION} is here but cuBLAS, or cuSPARSE's or cuSOLVER's headers, are "
                   "not: `bash scripts/setup.sh` installs them from pip into the Python environment. The CUDA "
                   "sources are NOT compiled.")
  return()
endif()
set(MHC_HAVE_CUDA ON)
message(STATUS "CUDA ${CUDAToolkit_VERSION}: nvcc ${CMAKE_CUDA_COMPILER}, cuBLAS ${CUDA_cublas_LIBRARY}")
