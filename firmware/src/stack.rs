//! Stack high-water measurement by painting: fill the unused stack below the current frame
//! with a pattern, run the work, then find the deepest word the work overwrote.

/// Pattern written into unused stack.
const PATTERN: u32 = 0xDEAD_BEEF;
/// Bytes left untouched just below the current stack pointer (the painter's own frame).
const GUARD: usize = 256;

/// A painted window of stack below the caller's frame.
pub struct StackProbe {
    top: usize,
    bottom: usize,
}

impl StackProbe {
    /// Paints `window` bytes of stack below the current stack pointer (minus a small guard),
    /// or down to the end of the static data if less stack is left (`cortex-m-rt`'s
    /// `_stack_end`): the window never leaves the stack region.
    #[allow(unsafe_code)]
    #[inline(never)]
    pub fn paint(window: usize) -> Self {
        extern "C" {
            /// The lowest address of the stack region (the end of `.bss`/`.uninit`), from
            /// `cortex-m-rt`'s linker script.
            static _stack_end: u32;
        }
        // Only the symbol's address is taken (the linker script defines it).
        let limit = core::ptr::addr_of!(_stack_end) as usize;
        let top = cortex_m::register::msp::read() as usize - GUARD;
        let bottom = top.saturating_sub(window).max(limit).min(top);
        for addr in (bottom..top).step_by(4) {
            // SAFETY: `limit <= bottom <= addr < top`: the word lies in the stack region
            // below the live frames (and the guard), which holds nothing yet.
            unsafe { core::ptr::write_volatile(addr as *mut u32, PATTERN) };
        }
        Self { top, bottom }
    }

    /// Bytes of the painted window used since [`Self::paint`]: the distance from the top of
    /// the window to the deepest overwritten word. Equals the window size if it overflowed.
    #[allow(unsafe_code)]
    #[inline(never)]
    pub fn used(&self) -> usize {
        let mut addr = self.bottom;
        while addr < self.top {
            // SAFETY: reads the window painted above, which is valid RAM.
            if unsafe { core::ptr::read_volatile(addr as *const u32) } != PATTERN {
                break;
            }
            addr += 4;
        }
        self.top - addr + GUARD
    }
}
