/* Start-up code, semihosting and the SysTick instruction clock for the example's two
 * emulated boards: BOARD_MPS2_AN386 (Cortex-M4F, 25 MHz: 40 instructions per tick) and
 * BOARD_MICROBIT (Cortex-M0, 16 MHz: 62.5). */
#include <stdint.h>

#include "board.h"

#if defined(BOARD_MPS2_AN386)
const char board_name[] = "QEMU mps2-an386 (Cortex-M4F)";
#define TWICE_INSTRUCTIONS_PER_TICK 80u
#elif defined(BOARD_MICROBIT)
const char board_name[] = "QEMU micro:bit (Cortex-M0, no FPU, 16 KB RAM)";
#define TWICE_INSTRUCTIONS_PER_TICK 125u
#else
#error "define BOARD_MPS2_AN386 or BOARD_MICROBIT"
#endif

int main(void);

/* Symbols of the linker script. */
extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_top[];

/* --- semihosting --- */

#define SYS_WRITE0 0x04
#define SYS_EXIT 0x18
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define ADP_STOPPED_RUN_TIME_ERROR 0x20023

static uint32_t semihost(uint32_t operation, uint32_t argument) {
    register uint32_t r0 __asm__("r0") = operation;
    register uint32_t r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void board_print(const char *text) { semihost(SYS_WRITE0, (uint32_t)(uintptr_t)text); }

void board_exit(int ok) {
    semihost(SYS_EXIT, ok ? ADP_STOPPED_APPLICATION_EXIT : ADP_STOPPED_RUN_TIME_ERROR);
    for (;;) {
    }
}

/* --- SysTick: a 24-bit down-counter at the core clock, extended by counting wraps --- */

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_RELOAD 0x00FFFFFFu

static volatile uint32_t systick_wraps;

static void systick_handler(void) { systick_wraps = systick_wraps + 1; }

static void systick_start(void) {
    SYST_RVR = SYST_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = 0x7; /* core clock, interrupt, enable */
    /* The counter reads 0 until its first reload: wait for it (one tick). */
    while (SYST_CVR == 0) {
    }
}

uint64_t board_instructions(void) {
    for (;;) {
        uint32_t wraps = systick_wraps;
        uint32_t current = SYST_CVR;
        if (wraps == systick_wraps) {
            uint64_t ticks = (uint64_t)wraps * (SYST_RELOAD + 1u) + (SYST_RELOAD - current);
            return ticks * TWICE_INSTRUCTIONS_PER_TICK / 2u;
        }
    }
}

/* --- stack high-water mark: the free RAM between the static data and the stack pointer is
 * painted at reset, and the lowest overwritten word tells how deep the stack went --- */

#define STACK_PAINT 0x5AFEC0DEu

static void stack_paint(void) {
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = __bss_end; p + 16 < sp; p++) {
        *p = STACK_PAINT;
    }
}

uint32_t board_stack_peak(void) {
    const uint32_t *p = __bss_end;
    while (p < __stack_top && *p == STACK_PAINT) {
        p++;
    }
    return (uint32_t)((uintptr_t)__stack_top - (uintptr_t)p);
}

int board_stack_overflowed(void) { return __bss_end[0] != STACK_PAINT; }

/* --- reset and the vector table --- */

static void fault_handler(void) {
    board_print("fault: the program stopped on a processor exception\n");
    board_exit(0 == 1);
}

void reset_handler(void);
void reset_handler(void) {
#if defined(__ARM_FP)
    /* Full access to the FPU (CP10, CP11) before any floating-point instruction. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    for (uint32_t *src = __data_load, *dst = __data_start; dst < __data_end;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = __bss_start; dst < __bss_end;) {
        *dst++ = 0;
    }
    stack_paint();
    systick_start();
    board_exit(main() == 0);
}

typedef void (*vector)(void);

__attribute__((section(".vectors"), used)) static const vector vectors[16] = {
    (vector)(uintptr_t)__stack_top, /* initial stack pointer */
    reset_handler,
    fault_handler, /* NMI */
    fault_handler, /* HardFault */
    fault_handler, /* MemManage */
    fault_handler, /* BusFault */
    fault_handler, /* UsageFault */
    0,
    0,
    0,
    0,
    fault_handler, /* SVCall */
    0,
    0,
    fault_handler, /* PendSV */
    systick_handler,
};
