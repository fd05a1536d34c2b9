// The attention inner loop for the avx512 ISA (compile flags in CMakeLists.txt).
#define PYSERVE_ISA_NS isa_avx512
#include "attend_impl.h"
