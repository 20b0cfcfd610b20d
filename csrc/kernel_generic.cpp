// The k-means kernel for generic (compiled with its own flags, see CMakeLists.txt).
#define KM_NS km_generic
#define KM_W 4
#define KM_MR 4
#define KM_NAME "generic"
#define KM_TABLE_FN km_table_generic
#include "kernel_impl.h"
