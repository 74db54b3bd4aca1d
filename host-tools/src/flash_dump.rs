//! A dump of a device's flash region read as NOR flash in memory
//! (`tinybayes::adapt::flash::RamFlash`), so that the host reads a last-layer state the device
//! saved (`tinybayes::adapt::store`) through the same code the device uses.

use anyhow::{bail, Result};
use tinybayes::adapt::flash::RamFlash;
use tinybayes::adapt::store::Store;
use tinybayes::adapt::LastLayer;

/// Erase sizes `--erase-size` accepts (bytes).
pub const ERASE_SIZES: [usize; 10] = [
    256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072,
];

fn restore_with<const ERASE: usize>(
    mut bytes: Vec<u8>,
    layer: &mut LastLayer<'_, '_>,
) -> Result<u32> {
    let len = bytes.len();
    let flash = RamFlash::<1, ERASE>::new(&mut bytes);
    let mut store = Store::new(flash, 0, len, layer)?;
    Ok(store.load(layer)?)
}

/// Loads into `layer` the newest valid state of a dump of the flash region a device's `Store`
/// used (both slots, from the region's start), read with erase size `erase`; returns the
/// number of examples it holds.
pub fn restore(bytes: Vec<u8>, erase: usize, layer: &mut LastLayer<'_, '_>) -> Result<u32> {
    match erase {
        256 => restore_with::<256>(bytes, layer),
        512 => restore_with::<512>(bytes, layer),
        1024 => restore_with::<1024>(bytes, layer),
        2048 => restore_with::<2048>(bytes, layer),
        4096 => restore_with::<4096>(bytes, layer),
        8192 => restore_with::<8192>(bytes, layer),
        16384 => restore_with::<16384>(bytes, layer),
        32768 => restore_with::<32768>(bytes, layer),
        65536 => restore_with::<65536>(bytes, layer),
        131072 => restore_with::<131072>(bytes, layer),
        _ => bail!(
            "--erase-size {erase} is not one of {}",
            ERASE_SIZES.map(|e| e.to_string()).join(", ")
        ),
    }
}
