# KVSIM_STATIC_DEPS: link HDF5 (with szip/libaec and zlib), Boost.program_options
# and the GCC runtime statically, so that the programs run on a machine that
# has none of them (the GPU machines: CUDA, no HDF5, no Boost). The CUDA
# runtime is static already (CUDA::cudart_static).
#
# Include it from the top-level CMakeLists.txt AFTER the find_package() calls
# and BEFORE the add_subdirectory() calls:
#     include(cuda/StaticDeps.cmake)
# It replaces HDF5_C_LIBRARIES / HDF5_LIBRARIES (read by analysis/ and traces/)
# with the static archives and points the imported Boost::program_options at
# its archive. HDF5's ROS3/S3 driver (the only user of libcurl and libcrypto)
# is never pulled from libhdf5.a, so neither library is needed.
option(KVSIM_STATIC_DEPS "Link HDF5, szip, zlib, Boost.program_options and libstdc++ statically" OFF)
if(KVSIM_STATIC_DEPS)
  get_filename_component(_kvsim_h5dir "${HDF5_C_LIBRARY_hdf5}" DIRECTORY)
  find_library(KVSIM_HDF5_A NAMES libhdf5_serial.a libhdf5.a
    HINTS ${_kvsim_h5dir} ${HDF5_C_LIBRARY_DIRS} /usr/lib/x86_64-linux-gnu/hdf5/serial NO_DEFAULT_PATH)
  find_library(KVSIM_SZ_A NAMES libsz.a)
  find_library(KVSIM_AEC_A NAMES libaec.a)
  find_library(KVSIM_Z_A NAMES libz.a)
  find_library(KVSIM_BOOST_PO_A NAMES libboost_program_options.a)
  foreach(v KVSIM_HDF5_A KVSIM_SZ_A KVSIM_AEC_A KVSIM_Z_A KVSIM_BOOST_PO_A)
    if(NOT ${v})
      message(FATAL_ERROR "KVSIM_STATIC_DEPS: ${v} not found (static archive missing)")
    endif()
  endforeach()
  set(HDF5_C_LIBRARIES ${KVSIM_HDF5_A} ${KVSIM_SZ_A} ${KVSIM_AEC_A} ${KVSIM_Z_A} ${CMAKE_DL_LIBS} m Threads::Threads)
  set(HDF5_LIBRARIES ${HDF5_C_LIBRARIES})
  # FindHDF5's imported targets (traces/ links HDF5::HDF5 when it exists)
  foreach(t HDF5::HDF5 hdf5::hdf5)
    if(TARGET ${t})
      get_target_property(_kvsim_type ${t} TYPE)
      if(_kvsim_type STREQUAL "INTERFACE_LIBRARY")
        set_property(TARGET ${t} PROPERTY INTERFACE_LINK_LIBRARIES "${HDF5_C_LIBRARIES}")
      else()
        set_property(TARGET ${t} PROPERTY IMPORTED_LOCATION "${KVSIM_HDF5_A}")
        set_property(TARGET ${t} PROPERTY INTERFACE_LINK_LIBRARIES
          "${KVSIM_SZ_A};${KVSIM_AEC_A};${KVSIM_Z_A};${CMAKE_DL_LIBS};m;Threads::Threads")
      endif()
    endif()
  endforeach()
  if(TARGET Boost::program_options)
    set_property(TARGET Boost::program_options PROPERTY IMPORTED_LOCATION "${KVSIM_BOOST_PO_A}")
    get_target_property(_kvsim_cfgs Boost::program_options IMPORTED_CONFIGURATIONS)
    if(_kvsim_cfgs)
      foreach(cfg ${_kvsim_cfgs})
        set_property(TARGET Boost::program_options PROPERTY IMPORTED_LOCATION_${cfg} "${KVSIM_BOOST_PO_A}")
      endforeach()
    endif()
    set_property(TARGET Boost::program_options PROPERTY INTERFACE_COMPILE_DEFINITIONS "")
  endif()
  add_link_options(-static-libstdc++ -static-libgcc)
  message(STATUS "kvsim: static dependencies: ${KVSIM_HDF5_A}, ${KVSIM_BOOST_PO_A}")
endif()
