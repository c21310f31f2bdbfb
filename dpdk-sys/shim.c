#include "wrapper.h"
int baton_rte_errno(void) { return rte_errno; }
