/*
 * Callgrind switches for the in-memory harnesses (bench/tls_quick.py --micro):
 * count only the server side of each iteration.
 *
 *   gcc -O2 -shared -fPIC -o /tmp/libcgtoggle.so bench/cgtoggle.c
 *   TLS_QUICK_CALLGRIND=/tmp/libcgtoggle.so valgrind --tool=callgrind \
 *       --collect-atstart=no .venv/bin/python bench/tls_quick.py --micro resumed --count 200
 *
 * (needs valgrind's headers: Debian package valgrind)
 */
#include <valgrind/callgrind.h>

void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
