# The CUDA commands of the kvsim program (validate, bench, replay --device
# cuda). Included from sim/CMakeLists.txt after add_executable(kvsim ...):
#     include(${CMAKE_CURRENT_SOURCE_DIR}/CMakeLists.cuda.cmake)
# With CUDA: the real commands, linked with the CUDA twin (cuda/). Without:
# stubs that throw "kvsim was built without CUDA (nvcc not found at configure time)".
if(KVSIM_HAVE_CUDA)
  target_sources(kvsim PRIVATE
    ${CMAKE_CURRENT_LIST_DIR}/cmd_validate.cpp
    ${CMAKE_CURRENT_LIST_DIR}/cmd_bench.cpp
    ${CMAKE_CURRENT_LIST_DIR}/replay_cuda.cpp)
  target_link_libraries(kvsim PRIVATE kvsim_cuda)
else()
  target_sources(kvsim PRIVATE ${CMAKE_CURRENT_LIST_DIR}/cuda_stub.cpp)
endif()
