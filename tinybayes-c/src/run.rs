//! One prediction on the engine of any format and chunk: the [`Run`] trait that `tb_engine`
//! dispatches to, implemented for each engine type.

use tinybayes::rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::{Engine, Halting, Mode};

use crate::result::{TbResult, TB_MAX_CLASSES};
use crate::status::TbStatus;

/// An input as C passes it.
#[derive(Clone, Copy)]
pub(crate) enum Input<'a> {
    /// Normalised f32 values (f32 models only).
    #[cfg_attr(not(feature = "f32"), allow(dead_code))]
    F32(&'a [f32]),
    /// Raw 8-bit values, normalised by the model.
    U8(&'a [u8]),
}

/// One prediction, written into `out` on success (left alone on failure). `halting`:
/// `None` for a plain prediction (an early-exit model then runs every block), a policy for
/// an early-exit one.
pub(crate) trait Run {
    fn run(
        &mut self,
        input: Input<'_>,
        mode: Mode,
        halting: Option<Halting<'_>>,
        rng: &mut Xoshiro128PlusPlus,
        out: &mut TbResult,
    ) -> Result<(), TbStatus>;
}

#[cfg(feature = "f32")]
impl<const CHUNK: usize> Run for Engine<'_, '_, CHUNK, tinybayes::F32> {
    fn run(
        &mut self,
        input: Input<'_>,
        mode: Mode,
        halting: Option<Halting<'_>>,
        rng: &mut Xoshiro128PlusPlus,
        out: &mut TbResult,
    ) -> Result<(), TbStatus> {
        const K: usize = TB_MAX_CLASSES;
        let macs = self.model().macs();
        match (input, halting) {
            (Input::F32(x), None) => out.set_f32(&self.predict::<K>(x, mode, rng)?, macs),
            (Input::U8(x), None) => out.set_f32(&self.predict_u8::<K>(x, mode, rng)?, macs),
            (Input::F32(x), Some(h)) => {
                out.set_f32_exit(&self.predict_early_exit::<K>(x, mode, h, rng)?)
            }
            (Input::U8(x), Some(h)) => {
                out.set_f32_exit(&self.predict_u8_early_exit::<K>(x, mode, h, rng)?)
            }
        }
        Ok(())
    }
}

/// [`Run`] for the fixed-point engines (raw 8-bit inputs only).
#[cfg(feature = "fixed")]
macro_rules! run_fixed {
    ($($num:ty, $feature:literal),*) => {$(
        #[cfg(feature = $feature)]
        impl<const CHUNK: usize> Run for Engine<'_, '_, CHUNK, $num> {
            fn run(
                &mut self,
                input: Input<'_>,
                mode: Mode,
                halting: Option<Halting<'_>>,
                rng: &mut Xoshiro128PlusPlus,
                out: &mut TbResult,
            ) -> Result<(), TbStatus> {
                const K: usize = TB_MAX_CLASSES;
                let Input::U8(x) = input else {
                    return Err(TbStatus::InputType);
                };
                match halting {
                    None => {
                        let macs = self.model().macs();
                        out.set_fixed(&self.predict_u8::<K>(x, mode, rng)?, macs)
                    }
                    Some(h) => out.set_fixed_exit(&self.predict_u8_early_exit::<K>(x, mode, h, rng)?),
                }
                Ok(())
            }
        }
    )*};
}
#[cfg(feature = "fixed")]
run_fixed!(tinybayes::Q8, "q8", tinybayes::Q16, "q16");
