/* The little a bare-metal C program needs from an emulated Cortex-M board: text output and
 * exit through semihosting (QEMU -semihosting), and an instruction clock on SysTick (under
 * QEMU -icount shift=0 one instruction takes one nanosecond). No C library is linked. */
#ifndef TINYBAYES_EXAMPLE_BOARD_H
#define TINYBAYES_EXAMPLE_BOARD_H

#include <stdint.h>

/* Writes a NUL-terminated string to the host's standard output. */
void board_print(const char *text);
/* Ends the program: QEMU exits with status 0 when ok is non-zero, 1 otherwise. */
void board_exit(int ok) __attribute__((noreturn));
/* Instructions executed since start (SysTick ticks times the board's instructions per tick). */
uint64_t board_instructions(void);
/* The most stack used so far, in bytes (the stack is painted at reset and scanned). */
uint32_t board_stack_peak(void);
/* Non-zero when the stack has reached the static data (every painted word overwritten). */
int board_stack_overflowed(void);
/* The board's name, for the log. */
extern const char board_name[];

#endif
