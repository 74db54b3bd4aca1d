//! Machine-readable benchmark lines: every bench binary prints one per measured case,
//!
//! ```text
//! bench: model=<name> precision=<f32|q8|q16> mode=<mean|mc|moments|moments-mc|validate> samples=<M> chunk=<C> depth=<d|all> instructions=<N> ram_bytes=<N> flash_bytes=<N> macs=<N> core=<core> board=<board>
//! ```
//!
//! and `scripts/bench-tables.py` regenerates BENCHMARKS.md's device tables from them, so the
//! document cannot drift from the code. `instructions` are guest instructions under QEMU
//! `-icount shift=0` (SysTick; not cycles); `ram_bytes` is the workspace plus the engine and
//! parsed-model values plus the measured stack of the call (validation: its stack, which holds
//! the parsed model); `flash_bytes` the model's bytes (read in place from
//! flash); `macs` the multiply-accumulates per sample where the engine reports them (0 where
//! it does not); `core` the instruction set's core (`cortex-m0`, `cortex-m3`, `cortex-m4f`,
//! ...) and `board` the board it ran on, so logs of several boards can be concatenated. On a real board (nRF52840-DK) the
//! count is `cycles=` (the DWT cycle counter) instead of `instructions=`.

use tinybayes::format::Precision;

use crate::clock::Clock;
use crate::stack::StackProbe;

/// What a benchmark case ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// Start-up validation of the model (`from_bytes`: CRC-32 and every structural check).
    Validate,
    /// The deterministic network with the posterior means.
    MeanWeights,
    /// The Monte Carlo posterior predictive with this many samples.
    MonteCarlo(u16),
    /// Moment propagation with the probit approximation at the logits.
    Moments,
    /// Moment propagation, then this many draws of the logits.
    MomentsThenSample(u16),
}

impl Case {
    /// The `mode=` token.
    const fn mode(self) -> &'static str {
        match self {
            Case::Validate => "validate",
            Case::MeanWeights => "mean",
            Case::MonteCarlo(_) => "mc",
            Case::Moments => "moments",
            Case::MomentsThenSample(_) => "moments-mc",
        }
    }

    /// The `samples=` value: 0 for validation, 1 for one pass (mean weights, moments).
    const fn samples(self) -> u16 {
        match self {
            Case::Validate => 0,
            Case::MeanWeights | Case::Moments => 1,
            Case::MonteCarlo(m) | Case::MomentsThenSample(m) => m,
        }
    }
}

impl From<tinybayes::Mode> for Case {
    fn from(mode: tinybayes::Mode) -> Self {
        match mode {
            tinybayes::Mode::MeanWeights => Case::MeanWeights,
            tinybayes::Mode::MonteCarlo { samples } => Case::MonteCarlo(samples.get()),
            tinybayes::Mode::Moments => Case::Moments,
            tinybayes::Mode::MomentsThenSample { samples } => {
                Case::MomentsThenSample(samples.get())
            }
        }
    }
}

/// How deep an early-exit network ran: a fixed number of exits, or every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// The whole network (every plain network; an early-exit one without halting).
    All,
    /// A depth budget of this many exits.
    Exits(usize),
}

/// One measured case, printed by [`Line::print`].
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    /// The model's short name (`lenet300`, `lenet300-q8`, `resnet-ee`, ...: no spaces).
    pub model: &'a str,
    /// Its number format.
    pub precision: Precision,
    /// What ran.
    pub case: Case,
    /// Samples per pass over the weights (0 for validation).
    pub chunk: usize,
    /// How deep it ran.
    pub depth: Depth,
    /// Guest instructions of the call (cycles on a real board).
    pub instructions: u64,
    /// Workspace + engine + parsed model + stack bytes of the call.
    pub ram_bytes: usize,
    /// The model's bytes of flash.
    pub flash_bytes: usize,
    /// Multiply-accumulates per sample, where reported (else 0).
    pub macs: usize,
}

/// The core whose instruction set this image holds, as `core=` names it (from the target and
/// board, by the build script).
pub const CORE: &str = env!("TINYBAYES_CORE");

/// The board this image is built for, as `board=` names it (`mps2-an386`, `microbit`, ...).
pub const BOARD: &str = env!("TINYBAYES_BOARD");

/// The count's key: SysTick counts instructions under QEMU, the DWT counts cycles on a board.
const COUNT_KEY: &str = if cfg!(feature = "nrf52840dk") {
    "cycles"
} else {
    "instructions"
};

/// `depth=` tokens for the depth budgets an early-exit model can have.
const DEPTHS: [&str; 9] = ["all", "1", "2", "3", "4", "5", "6", "7", "8"];

impl Depth {
    /// The `depth=` token (`all`, or the number of exits; `many` beyond eight).
    fn token(self) -> &'static str {
        match self {
            Depth::All => DEPTHS[0],
            Depth::Exits(d) => DEPTHS.get(d).copied().filter(|_| d > 0).unwrap_or("many"),
        }
    }
}

impl<'a> Line<'a> {
    /// The line of a model's start-up validation, measured by [`measure`] (its RAM: the
    /// validation's stack, which holds the parsed model).
    pub fn validation<T>(
        model: &'a str,
        precision: Precision,
        flash_bytes: usize,
        measured: &Measured<T>,
    ) -> Self {
        Line {
            model,
            precision,
            case: Case::Validate,
            chunk: 0,
            depth: Depth::All,
            instructions: measured.instructions,
            ram_bytes: measured.stack_bytes,
            flash_bytes,
            macs: 0,
        }
    }

    /// Prints the line through defmt (`instructions=` under QEMU, where SysTick counts
    /// instructions; `cycles=` on a real board, where it counts cycles).
    pub fn print(&self) {
        defmt::info!(
            "bench: model={=str} precision={=str} mode={=str} samples={=u16} chunk={=usize} depth={=str} {=str}={=u64} ram_bytes={=usize} flash_bytes={=usize} macs={=usize} core={=str} board={=str}",
            self.model,
            self.precision.name(),
            self.case.mode(),
            self.case.samples(),
            self.chunk,
            self.depth.token(),
            COUNT_KEY,
            self.instructions,
            self.ram_bytes,
            self.flash_bytes,
            self.macs,
            CORE,
            BOARD
        );
    }
}

/// What [`measure`] saw of one call.
#[derive(Clone, Copy, Debug)]
pub struct Measured<T> {
    /// What the call returned.
    pub value: T,
    /// Its clock counts (instructions under QEMU, cycles on a board).
    pub instructions: u64,
    /// Its stack high-water mark, in bytes.
    pub stack_bytes: usize,
}

/// The RAM an inference needs: the engine's workspace (`workspace_bytes`), the `Engine` value
/// `E`, the parsed `model` value and the stack the call used (`stack_bytes`, from [`measure`]).
pub fn ram_bytes<E, M: ?Sized>(workspace_bytes: usize, model: &M, stack_bytes: usize) -> usize {
    workspace_bytes + core::mem::size_of::<E>() + core::mem::size_of_val(model) + stack_bytes
}

/// Runs `work` once with `window` bytes of stack painted below the caller, timed by `clock`.
pub fn measure<C: Clock, T>(clock: &mut C, window: usize, work: impl FnOnce() -> T) -> Measured<T> {
    let probe = StackProbe::paint(window);
    let start = clock.now();
    let value = run_out_of_line(work);
    let instructions = clock.now() - start;
    Measured {
        value,
        instructions,
        stack_bytes: probe.used(),
    }
}

/// Calls `work` in a frame of its own, so that the stack probe sees all of its frames.
#[inline(never)]
fn run_out_of_line<T>(work: impl FnOnce() -> T) -> T {
    work()
}
