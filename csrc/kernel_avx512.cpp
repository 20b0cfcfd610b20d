// The k-means kernel for avx512 (compiled with its own flags, see CMakeLists.txt).
#define KM_NS km_avx512
#define KM_W 16
#define KM_MR 12
#define KM_NAME "avx512"
#define KM_TABLE_FN km_table_avx512
#include "kernel_impl.h"
