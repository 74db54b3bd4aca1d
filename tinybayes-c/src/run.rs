//! One prediction on the engine of any format and chunk, for each input type: the [`Run`]
//! trait that `tb_engine` dispatches to statically (one instantiation per input type, so that
//! the linker drops the paths a program never calls).

use tinybayes::rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::{Engine, Halting, Mode, Q16, Q8};

use crate::result::{TbResult, TB_MAX_CLASSES};
use crate::status::TbStatus;

/// One prediction from an input of type `I` (`&[u8]` raw values, `&[f32]` normalised ones),
/// written into `out` on success (left alone on failure). `halting`: `None` for a plain
/// prediction (an early-exit model then runs every block), a policy for an early-exit one.
pub(crate) trait Run<I> {
    fn run(
        &mut self,
        input: I,
        mode: Mode,
        halting: Option<Halting<'_>>,
        rng: &mut Xoshiro128PlusPlus,
        out: &mut TbResult,
    ) -> Result<(), TbStatus>;
}

const K: usize = TB_MAX_CLASSES;

/// [`Run`] for the f32 engine, per input type and its two entry points.
macro_rules! run_f32 {
    ($($input:ty => $predict:ident, $early_exit:ident;)*) => {$(
        impl<const CHUNK: usize> Run<$input> for Engine<'_, '_, CHUNK, tinybayes::F32> {
            fn run(
                &mut self,
                input: $input,
                mode: Mode,
                halting: Option<Halting<'_>>,
                rng: &mut Xoshiro128PlusPlus,
                out: &mut TbResult,
            ) -> Result<(), TbStatus> {
                match halting {
                    None => {
                        let macs = self.model().macs();
                        out.set_f32(&self.$predict::<K>(input, mode, rng)?, macs)
                    }
                    Some(h) => out.set_f32_exit(&self.$early_exit::<K>(input, mode, h, rng)?),
                }
                Ok(())
            }
        }
    )*};
}
run_f32! {
    &[f32] => predict, predict_early_exit;
    &[u8] => predict_u8, predict_u8_early_exit;
}

/// [`Run`] for the fixed-point engines: raw 8-bit inputs only.
macro_rules! run_fixed {
    ($($num:ty),*) => {$(
        impl<const CHUNK: usize> Run<&[u8]> for Engine<'_, '_, CHUNK, $num> {
            fn run(
                &mut self,
                input: &[u8],
                mode: Mode,
                halting: Option<Halting<'_>>,
                rng: &mut Xoshiro128PlusPlus,
                out: &mut TbResult,
            ) -> Result<(), TbStatus> {
                match halting {
                    None => {
                        let macs = self.model().macs();
                        out.set_fixed(&self.predict_u8::<K>(input, mode, rng)?, macs)
                    }
                    Some(h) => out.set_fixed_exit(&self.predict_u8_early_exit::<K>(input, mode, h, rng)?),
                }
                Ok(())
            }
        }

        impl<const CHUNK: usize> Run<&[f32]> for Engine<'_, '_, CHUNK, $num> {
            fn run(
                &mut self,
                _: &[f32],
                _: Mode,
                _: Option<Halting<'_>>,
                _: &mut Xoshiro128PlusPlus,
                _: &mut TbResult,
            ) -> Result<(), TbStatus> {
                Err(TbStatus::InputType)
            }
        }
    )*};
}
run_fixed!(Q8, Q16);
