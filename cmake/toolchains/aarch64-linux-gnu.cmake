# Cross-compiles metaedge's C++ kernels for 64-bit ARM Linux (Jetson Orin, Raspberry Pi 5) with
# Debian's g++-aarch64-linux-gnu, and runs what ctest runs under qemu-aarch64 where qemu-user is
# installed. The CPU flags default to plain -march=armv8-a (CMakeLists.txt); pick a board with
# -DMETAEDGE_ARCH_FLAGS=-mcpu=cortex-a78ae (Orin) or -mcpu=cortex-a76 (Raspberry Pi 5).
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
#         -DMETAEDGE_BUILD_PYTHON=OFF -DMETAEDGE_BUILD_TESTS=ON
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(METAEDGE_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${METAEDGE_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${METAEDGE_TRIPLE}-g++)

# Debian's cross packages put the target's libraries (libstdc++, libgomp, the C library and its
# loader) under /usr/aarch64-linux-gnu, which the cross compiler already searches: no sysroot. Find
# libraries and headers there only, programs (the build tools) on the host only.
set(CMAKE_FIND_ROOT_PATH /usr/${METAEDGE_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# ctest and add_test() commands naming a target run through this; -L points qemu's loader at the
# target's libraries.
find_program(METAEDGE_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(METAEDGE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${METAEDGE_QEMU_AARCH64};-L;/usr/${METAEDGE_TRIPLE}")
endif()
