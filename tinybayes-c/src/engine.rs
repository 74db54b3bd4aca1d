//! `tb_engine`: a validated model bound to the caller's workspace, living in caller-owned
//! memory. One struct for every number format and chunk: the Rust engine of the model's
//! format and the chosen chunk is built in place, and each call dispatches to it.

use core::ffi::c_void;
use core::mem::{align_of, size_of, ManuallyDrop, MaybeUninit};
use core::ptr::{addr_of, addr_of_mut};

use tinybayes::format::Precision;
use tinybayes::numeric::{F32, Q16, Q8};
use tinybayes::rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::{Engine, Halting, Mode, ModelError, Plan};

use crate::args::TbMode;
use crate::boundary;
use crate::result::TbResult;
use crate::run::Run;
use crate::status::{status_of, TbStatus};

/// 64-bit words of `tb_engine` on 32-bit targets (Cortex-M): 5,120 bytes, of which the
/// validated model's layer table takes most (the state measures 5,000 bytes with every
/// format and chunk built; a build that outgrows it fails to compile).
#[cfg(target_pointer_width = "32")]
pub const TB_ENGINE_WORDS: usize = 640;
/// 64-bit words of `tb_engine` on 64-bit hosts (the host tests): 8,320 bytes (8,160 used).
#[cfg(target_pointer_width = "64")]
pub const TB_ENGINE_WORDS: usize = 1040;

/// A validated model bound to a workspace: set up by `tb_engine_init`, used by the
/// predictions. Opaque; caller-owned (a static, a global or a stack variable); it holds its
/// own address, so it must not be copied or moved after `tb_engine_init` (a moved engine
/// gives `TB_STATUS_NOT_INITIALIZED`).
#[repr(C)]
pub struct TbEngine {
    /// The engine's state (opaque).
    pub opaque: [u64; TB_ENGINE_WORDS],
}

/// `sizeof(tb_engine)` as this library was built: a program compares it with its own
/// `sizeof(tb_engine)` at start-up to catch a header that does not belong to the library it
/// links (the layouts the header asserts statically are the header's own).
#[no_mangle]
pub extern "C" fn tb_engine_size() -> usize {
    size_of::<TbEngine>()
}

/// What `tb_engine_get_info` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TbEngineInfo {
    /// Number format of the model: 0 f32, 1 q8, 2 q16.
    pub precision: u32,
    /// Input values the model takes (channel-major: C x H x W).
    pub input_len: u32,
    /// Classes it predicts.
    pub class_count: u32,
    /// Exit heads (0: not an early-exit model).
    pub exit_count: u32,
    /// Layers.
    pub layer_count: u32,
    /// Samples per pass over the weights (the chunk given to `tb_engine_init`).
    pub chunk: u32,
    /// Bytes of the model.
    pub model_bytes: u32,
    /// Bytes of workspace the engine uses.
    pub workspace_bytes: u32,
    /// Multiply-accumulates of one pass through every layer.
    pub macs: u32,
}

/// Whether this build holds engines for `chunk` samples per pass (features `chunk-N`).
pub(crate) const fn chunk_built(chunk: u32) -> bool {
    (chunk == 1 && cfg!(feature = "chunk-1"))
        || (chunk == 2 && cfg!(feature = "chunk-2"))
        || (chunk == 4 && cfg!(feature = "chunk-4"))
        || (chunk == 8 && cfg!(feature = "chunk-8"))
}

/// Room for one validated model of any format, filled in place by [`load_into`]; which
/// field holds it is [`State::format`] (or the caller's local knowledge). Every field is a
/// `MaybeUninit`, so any bits are a valid `ModelSlot`.
#[repr(C)]
union ModelSlot {
    #[cfg(feature = "f32")]
    f32: ManuallyDrop<MaybeUninit<tinybayes::Model<'static>>>,
    #[cfg(feature = "fixed")]
    fixed: ManuallyDrop<MaybeUninit<tinybayes::QModel<'static>>>,
}

/// A validated model of any format, borrowed from where it lives.
#[derive(Clone, Copy)]
pub(crate) enum AnyModel<'m> {
    /// An f32 file.
    #[cfg(feature = "f32")]
    F32(&'m tinybayes::Model<'static>),
    /// A q8 or q16 file.
    #[cfg(feature = "fixed")]
    Fixed(&'m tinybayes::QModel<'static>),
}

/// `State::format` of an f32 model.
#[cfg(feature = "f32")]
const FORMAT_F32: u32 = 1;
/// `State::format` of a fixed-point model.
#[cfg(feature = "fixed")]
const FORMAT_FIXED: u32 = 2;

/// Validates `bytes` as a model of any format this library was built with, into `*slot`,
/// in place: the layer table (kilobytes) is built where it stays, so validation needs no
/// second copy of the model on the stack (`Model::from_bytes_into`); a 16 KB micro:bit has
/// room for one model, not for copies of it. Returns the model and its
/// `State::format` code.
///
/// # Safety
/// `slot` is valid for writing a `ModelSlot` and nothing else uses it during `'m`.
unsafe fn load_into<'m>(
    slot: *mut ModelSlot,
    bytes: &'static [u8],
) -> Result<(AnyModel<'m>, u32), TbStatus> {
    #[cfg(feature = "f32")]
    {
        // SAFETY: the caller's contract; a `MaybeUninit` field may hold any bits.
        let place = unsafe { &mut *addr_of_mut!((*slot).f32) };
        let place: &mut MaybeUninit<_> = place;
        match tinybayes::Model::from_bytes_into(bytes, place) {
            Ok(model) => return Ok((AnyModel::F32(model), FORMAT_F32)),
            Err(ModelError::WrongPrecision { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    #[cfg(feature = "fixed")]
    {
        // SAFETY: as above; the f32 attempt's borrow has ended.
        let place = unsafe { &mut *addr_of_mut!((*slot).fixed) };
        let place: &mut MaybeUninit<_> = place;
        match tinybayes::QModel::from_bytes_into(bytes, place) {
            Ok(model) if format_built(model.precision()) => {
                return Ok((AnyModel::Fixed(model), FORMAT_FIXED))
            }
            Ok(_) | Err(ModelError::WrongPrecision { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(TbStatus::FormatNotBuilt)
}

impl AnyModel<'_> {
    fn precision(self) -> Precision {
        match self {
            #[cfg(feature = "f32")]
            AnyModel::F32(_) => Precision::F32,
            #[cfg(feature = "fixed")]
            AnyModel::Fixed(m) => m.precision(),
        }
    }

    /// Bytes of workspace for `chunk` samples per pass in `mode`.
    fn workspace_bytes(self, chunk: u32, mode: Mode) -> Result<usize, TbStatus> {
        if !chunk_built(chunk) {
            return Err(TbStatus::UnsupportedChunk);
        }
        if matches!(mode, Mode::Moments | Mode::MomentsThenSample { .. }) {
            if self.precision() != Precision::F32 {
                return Err(TbStatus::UnsupportedMode);
            }
            if chunk < 2 {
                return Err(TbStatus::ChunkTooSmall);
            }
        }
        Ok(match self {
            #[cfg(feature = "f32")]
            AnyModel::F32(m) => Plan::new(m, chunk as usize).workspace_bytes(),
            #[cfg(feature = "fixed")]
            AnyModel::Fixed(m) => Plan::new(m, chunk as usize).workspace_bytes(),
        })
    }

    fn info(self, chunk: u32) -> TbEngineInfo {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        // `Model` and `QModel` answer the same questions under the same names.
        macro_rules! describe {
            ($m:expr) => {
                TbEngineInfo {
                    precision: self.precision() as u32,
                    input_len: n($m.input_len()),
                    class_count: n($m.num_classes()),
                    exit_count: n($m.exit_count()),
                    layer_count: n($m.layers().len()),
                    chunk,
                    model_bytes: n($m.as_bytes().len()),
                    workspace_bytes: n(Plan::new($m, chunk as usize).workspace_bytes()),
                    macs: n($m.macs()),
                }
            };
        }
        match self {
            #[cfg(feature = "f32")]
            AnyModel::F32(m) => describe!(m),
            #[cfg(feature = "fixed")]
            AnyModel::Fixed(m) => describe!(m),
        }
    }
}

/// Whether this build holds the engines of `precision` (features `f32`, `q8`, `q16`).
#[cfg(feature = "fixed")]
const fn format_built(precision: Precision) -> bool {
    match precision {
        Precision::F32 => cfg!(feature = "f32"),
        Precision::Q8 => cfg!(feature = "q8"),
        Precision::Q16 => cfg!(feature = "q16"),
    }
}

/// The model of a number format `N`, picked out of an [`AnyModel`].
trait Pick {
    /// The format's validated model type.
    type Model: 'static;
    fn pick(model: AnyModel<'static>) -> Option<&'static Self::Model>;
}

#[cfg(feature = "f32")]
impl Pick for F32 {
    type Model = tinybayes::Model<'static>;
    fn pick(model: AnyModel<'static>) -> Option<&'static tinybayes::Model<'static>> {
        match model {
            AnyModel::F32(m) => Some(m),
            #[cfg(feature = "fixed")]
            AnyModel::Fixed(_) => None,
        }
    }
}

#[cfg(feature = "fixed")]
macro_rules! pick_fixed {
    ($($num:ident => $precision:expr, $feature:literal),*) => {$(
        #[cfg(feature = $feature)]
        impl Pick for $num {
            type Model = tinybayes::QModel<'static>;
            fn pick(model: AnyModel<'static>) -> Option<&'static tinybayes::QModel<'static>> {
                match model {
                    AnyModel::Fixed(m) if m.precision() == $precision => Some(m),
                    _ => None,
                }
            }
        }
    )*};
}
#[cfg(feature = "fixed")]
pick_fixed!(Q8 => Precision::Q8, "q8", Q16 => Precision::Q16, "q16");

/// Declares [`Bound`], one variant per number format and chunk, with its constructor and
/// its dispatch.
macro_rules! bound {
    ($($variant:ident: $num:ident, $word:ty, $chunk:literal, $feature:literal, $chunk_feature:literal;)*) => {
        /// The Rust engine of the model's format at the chosen chunk (held in place in the
        /// caller's `tb_engine`: no heap to box the f32 engine's byte table into).
        #[allow(clippy::large_enum_variant)]
        pub(crate) enum Bound {
            $(
                #[cfg(all(feature = $feature, feature = $chunk_feature))]
                $variant(Engine<'static, 'static, $chunk, $num>),
            )*
        }

        impl Bound {
            /// Binds `model` at `chunk` to the `bytes` of workspace at `workspace`.
            ///
            /// # Safety
            /// As `tb_engine_init`'s workspace.
            unsafe fn bind(
                model: AnyModel<'static>,
                chunk: u32,
                workspace: *mut c_void,
                bytes: usize,
            ) -> Result<Self, TbStatus> {
                $(
                    #[cfg(all(feature = $feature, feature = $chunk_feature))]
                    if let (Some(m), $chunk) = (<$num as Pick>::pick(model), chunk) {
                        // SAFETY: `tb_engine_init`'s contract: `bytes` bytes at `workspace`,
                        // for the engine's use alone while it lives; any bits are a valid
                        // f32 or u64.
                        let words = unsafe {
                            boundary::slice_mut::<$word>(workspace.cast(), bytes / size_of::<$word>())
                        }?;
                        return Ok(Bound::$variant(Engine::<$chunk, $num>::new(m, words)?));
                    }
                )*
                Err(TbStatus::UnsupportedChunk)
            }

        }

        /// Runs the engine on `input`. Dispatched statically, once per input type: a
        /// program that never calls `tb_predict_f32` links no f32-input code.
        impl<I: Copy> Run<I> for Bound
        where
            $(Engine<'static, 'static, $chunk, $num>: Run<I>,)*
        {
            fn run(
                &mut self,
                input: I,
                mode: Mode,
                halting: Option<Halting<'_>>,
                rng: &mut Xoshiro128PlusPlus,
                out: &mut TbResult,
            ) -> Result<(), TbStatus> {
                match self {
                    $(
                        #[cfg(all(feature = $feature, feature = $chunk_feature))]
                        Bound::$variant(engine) => engine.run(input, mode, halting, rng, out),
                    )*
                }
            }
        }
    };
}

bound! {
    F32x1: F32, f32, 1, "f32", "chunk-1";
    F32x2: F32, f32, 2, "f32", "chunk-2";
    F32x4: F32, f32, 4, "f32", "chunk-4";
    F32x8: F32, f32, 8, "f32", "chunk-8";
    Q8x1: Q8, u64, 1, "q8", "chunk-1";
    Q8x2: Q8, u64, 2, "q8", "chunk-2";
    Q8x4: Q8, u64, 4, "q8", "chunk-4";
    Q8x8: Q8, u64, 8, "q8", "chunk-8";
    Q16x1: Q16, u64, 1, "q16", "chunk-1";
    Q16x2: Q16, u64, 2, "q16", "chunk-2";
    Q16x4: Q16, u64, 4, "q16", "chunk-4";
    Q16x8: Q16, u64, 8, "q16", "chunk-8";
}

/// `TbEngine`'s contents once set up. `magic` and `address` come first, at fixed offsets,
/// so that they can be read from any `TbEngine` before the rest is trusted.
#[repr(C)]
struct State {
    /// [`MAGIC`] once set up.
    magic: u64,
    /// The state's own address when set up: a copied or moved engine fails the check.
    address: u64,
    chunk: u32,
    /// Which field of `model` holds the model: `FORMAT_F32` or `FORMAT_FIXED`.
    format: u32,
    model: ModelSlot,
    bound: Bound,
}

impl State {
    /// The model of a set-up state.
    ///
    /// # Safety
    /// `state` was set up by `tb_engine_init` (its magic checked) and is not written during
    /// `'m`.
    unsafe fn model<'m>(state: *const State) -> AnyModel<'m> {
        // SAFETY: the caller's contract: `format` names the field `load_into` filled.
        unsafe {
            match *addr_of!((*state).format) {
                #[cfg(feature = "f32")]
                FORMAT_F32 => AnyModel::F32((*addr_of!((*state).model.f32)).assume_init_ref()),
                #[cfg(feature = "fixed")]
                _ => AnyModel::Fixed((*addr_of!((*state).model.fixed)).assume_init_ref()),
                #[cfg(not(feature = "fixed"))]
                _ => AnyModel::F32((*addr_of!((*state).model.f32)).assume_init_ref()),
            }
        }
    }
}

/// "tbengine" in ASCII.
const MAGIC: u64 = 0x7462_656e_6769_6e65;

const _: () = assert!(
    size_of::<State>() <= size_of::<TbEngine>(),
    "TB_ENGINE_WORDS"
);
const _: () = assert!(align_of::<State>() <= align_of::<TbEngine>());

/// The bytes of workspace a model needs for `chunk` samples per pass (1, 2, 4 or 8, as built; more is
/// faster and needs more RAM) in `mode`, into `*bytes`: give `tb_engine_init` at least that,
/// 8-byte aligned. Validates the model (as `tb_engine_init` does); the mode is checked
/// against the chunk and format (`TB_STATUS_CHUNK_TOO_SMALL`, `TB_STATUS_UNSUPPORTED_MODE`).
///
/// # Safety
/// `model` is NULL or points to `model_len` bytes that stay unchanged during the call;
/// `bytes` is NULL or points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn tb_workspace_size(
    model: *const u8,
    model_len: usize,
    chunk: u32,
    mode: TbMode,
    bytes: *mut usize,
) -> TbStatus {
    status_of((|| {
        // SAFETY: the caller's contract above.
        let out = unsafe { boundary::write(bytes) }?;
        // SAFETY: the caller's contract above; the model lives for the call, and the
        // validated model does not outlive it.
        let file = unsafe { boundary::slice(model, model_len) }?;
        let mut slot = MaybeUninit::<ModelSlot>::uninit();
        // SAFETY: a local slot, ours alone; the model borrowed from it dies with it.
        let (model, _) = unsafe { load_into(slot.as_mut_ptr(), file) }?;
        *out = model.workspace_bytes(chunk, mode.to_mode()?)?;
        Ok(())
    })())
}

/// Validates the model at `model` (`model_len` bytes, 4-byte aligned) and binds it to the
/// workspace (`workspace_bytes` bytes, 8-byte aligned, at least `tb_workspace_size` says) in
/// `*engine`, for `chunk` samples per pass (1, 2, 4 or 8, as built; the results do not depend on it).
/// On failure `*engine` is left unusable (`TB_STATUS_NOT_INITIALIZED`).
///
/// # Safety
/// `engine` is NULL or points to a `tb_engine`; the model bytes, `*engine` and the workspace
/// stay valid, unchanged by anything else and in place for as long as the engine is used
/// (the engine reads the model in place and owns the workspace); `workspace` is NULL or
/// points to `workspace_bytes` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tb_engine_init(
    engine: *mut TbEngine,
    model: *const u8,
    model_len: usize,
    chunk: u32,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> TbStatus {
    // SAFETY: the caller's contract above, for each pointer.
    status_of(unsafe { init(engine, model, model_len, chunk, workspace, workspace_bytes) })
}

/// [`tb_engine_init`] returning a `Result`.
///
/// # Safety
/// As [`tb_engine_init`].
unsafe fn init(
    engine: *mut TbEngine,
    model: *const u8,
    model_len: usize,
    chunk: u32,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> Result<(), TbStatus> {
    // SAFETY: the caller's contract; a `TbEngine` is plain words.
    let slot = unsafe { boundary::write(engine) }?;
    slot.opaque[0] = 0; // unusable until the end
                        // SAFETY: the caller's contract: the model outlives every use of the engine.
    let file: &'static [u8] = unsafe { boundary::slice(model, model_len) }?;
    if workspace.is_null() {
        return Err(TbStatus::NullPointer);
    }
    if !chunk_built(chunk) {
        return Err(TbStatus::UnsupportedChunk);
    }
    let state = (slot as *mut TbEngine).cast::<State>();
    // SAFETY: `state` is the caller's `TbEngine`, large and aligned enough for a `State`
    // (asserted above) and ours alone during the call. Fields are written through raw
    // pointers before any reference to them exists; the model is written before the engine
    // borrows it and never written again while the engine lives, so the engine's shared
    // `'static` borrow of it (in memory the caller keeps in place: the contract) is sound.
    unsafe {
        let (model, format) = load_into::<'static>(addr_of_mut!((*state).model), file)?;
        addr_of_mut!((*state).format).write(format);
        let bound = Bound::bind(model, chunk, workspace, workspace_bytes)?;
        addr_of_mut!((*state).bound).write(bound);
        addr_of_mut!((*state).chunk).write(chunk);
        addr_of_mut!((*state).address).write(state as usize as u64);
        addr_of_mut!((*state).magic).write(MAGIC);
    }
    Ok(())
}

/// The set-up state behind `engine`, or why there is none.
fn checked(engine: &TbEngine) -> Result<*const State, TbStatus> {
    let state = (engine as *const TbEngine).cast::<State>();
    if engine.opaque[0] != MAGIC || engine.opaque[1] != state as usize as u64 {
        return Err(TbStatus::NotInitialized);
    }
    Ok(state)
}

/// The engine behind `engine`, to run a prediction.
///
/// # Safety
/// `engine` is NULL or points to a `tb_engine` nothing else uses during `'a`.
pub(crate) unsafe fn bound<'a>(engine: *mut TbEngine) -> Result<&'a mut Bound, TbStatus> {
    // SAFETY: the caller's contract; a `TbEngine` is plain words, any bits valid.
    let slot = unsafe { boundary::write(engine) }?;
    let state = checked(slot)?.cast_mut();
    // SAFETY: the magic and the address say `tb_engine_init` set up this very memory (a
    // `TbEngine` in place since); the engine is reached through an exclusive borrow of its
    // own field alone, disjoint from the model it borrows.
    Ok(unsafe { &mut *addr_of_mut!((*state).bound) })
}

/// What the engine runs: the model's format and shape, the chunk and the workspace used.
///
/// # Safety
/// `engine` is NULL or points to a `tb_engine` not written during the call; `info` is NULL
/// or points to a writable `tb_engine_info`.
#[no_mangle]
pub unsafe extern "C" fn tb_engine_get_info(
    engine: *const TbEngine,
    info: *mut TbEngineInfo,
) -> TbStatus {
    status_of((|| {
        // SAFETY: the caller's contract above.
        let out = unsafe { boundary::write(info) }?;
        // SAFETY: the caller's contract above.
        let state = checked(unsafe { boundary::read(engine) }?)?;
        // SAFETY: set up by `tb_engine_init` (checked); the model and chunk are only read.
        let (model, chunk) = unsafe { (State::model(state), *addr_of!((*state).chunk)) };
        *out = model.info(chunk);
        Ok(())
    })())
}
