/* Callgrind client requests for bench/instructions.py, which compiles this file with cc:
 * count only the measured requests (not start-up, model loading or warm-up), and write
 * each measured window as its own dump, named by its label. Outside Callgrind these are
 * no-ops. */
#include <valgrind/callgrind.h>

void measure_start(void) {
    CALLGRIND_ZERO_STATS;
    CALLGRIND_START_INSTRUMENTATION;
}

void measure_stop(const char *label) {
    CALLGRIND_STOP_INSTRUMENTATION;
    CALLGRIND_DUMP_STATS_AT(label);
}
