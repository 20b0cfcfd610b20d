// The k-means kernel for avx2 (compiled with its own flags, see CMakeLists.txt).
#define KM_NS km_avx2
#define KM_W 8
#define KM_MR 6
#define KM_NAME "avx2"
#define KM_TABLE_FN km_table_avx2
#include "kernel_impl.h"
