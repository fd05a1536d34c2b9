// The attention inner loop for the generic ISA (compile flags in CMakeLists.txt).
#define PYSERVE_ISA_NS isa_generic
#include "attend_impl.h"
