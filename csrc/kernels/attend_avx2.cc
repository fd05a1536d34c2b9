// The attention inner loop for the avx2 ISA (compile flags in CMakeLists.txt).
#define PYSERVE_ISA_NS isa_avx2
#include "attend_impl.h"
