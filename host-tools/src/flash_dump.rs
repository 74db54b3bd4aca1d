//! A dump of a device's flash region as a NOR flash in memory (`embedded-storage`), so that the
//! host reads a last-layer state the device saved (`tinybayes::adapt::store`) through the same
//! code the device uses, and tests can write such dumps.

use anyhow::{bail, Result};
use embedded_storage::nor_flash::{
    check_erase, check_read, check_write, ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash,
};
use tinybayes::adapt::store::Store;
use tinybayes::adapt::LastLayer;

/// Erase sizes `--erase-size` accepts (bytes).
pub const ERASE_SIZES: [usize; 10] = [
    256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072,
];

/// A flash region held in memory, with the erase size `ERASE` of the device it was read
/// from: erasing sets 0xFF, writing clears bits.
pub struct DumpFlash<const ERASE: usize> {
    bytes: Vec<u8>,
}

impl<const ERASE: usize> DumpFlash<ERASE> {
    /// The region's bytes as dumped from the device.
    pub fn new(bytes: Vec<u8>) -> Self {
        DumpFlash { bytes }
    }
    /// An erased region of `len` bytes.
    pub fn erased(len: usize) -> Self {
        DumpFlash {
            bytes: vec![0xFF; len],
        }
    }
    /// The region's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl<const ERASE: usize> ErrorType for DumpFlash<ERASE> {
    type Error = NorFlashErrorKind;
}

impl<const ERASE: usize> ReadNorFlash for DumpFlash<ERASE> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorFlashErrorKind> {
        check_read(self, offset, bytes.len())?;
        let at = offset as usize;
        bytes.copy_from_slice(&self.bytes[at..at + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl<const ERASE: usize> NorFlash for DumpFlash<ERASE> {
    const WRITE_SIZE: usize = 1;
    const ERASE_SIZE: usize = ERASE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), NorFlashErrorKind> {
        check_erase(self, from, to)?;
        self.bytes[from as usize..to as usize].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorFlashErrorKind> {
        check_write(self, offset, bytes.len())?;
        for (d, s) in self.bytes[offset as usize..].iter_mut().zip(bytes) {
            *d &= s;
        }
        Ok(())
    }
}

fn restore_with<const ERASE: usize>(bytes: Vec<u8>, layer: &mut LastLayer<'_, '_>) -> Result<u32> {
    let len = bytes.len();
    let mut store = Store::new(DumpFlash::<ERASE>::new(bytes), 0, len, layer)?;
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
