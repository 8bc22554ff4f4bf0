# Small helpers shared by every folder's CMakeLists.txt.

# Adds each named subfolder that has a CMakeLists.txt, so folders can land independently.
function(tpserve_add_subdirs)
  foreach(d IN LISTS ARGN)
    if(EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${d}/CMakeLists.txt")
      add_subdirectory(${d})
    endif()
  endforeach()
endfunction()

# tpserve_test(NAME SOURCES a.cc b.cc LIBS x y [LABELS l] [TIMEOUT s] [TEST_PREFIX p.])
# One GoogleTest binary registered with ctest; tests run from the repository root so that
# relative paths to tests/data work.
function(tpserve_test name)
  cmake_parse_arguments(T "" "TIMEOUT;TEST_PREFIX" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  gtest_discover_tests(${name}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    TEST_PREFIX "${T_TEST_PREFIX}"
    PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS "${T_LABELS}"
    DISCOVERY_TIMEOUT 60)
endfunction()
