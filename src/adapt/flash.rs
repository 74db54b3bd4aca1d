//! NOR flash in a RAM buffer, behind the `embedded-storage` `NorFlash` trait: for targets whose
//! flash cannot be written (QEMU's MPS2 boards map theirs read-only), for a dump of a device's
//! flash region read on a host, and for tests. It keeps NOR's rules, so code written against
//! it runs unchanged on a real part: an erase sets whole `ERASE`-byte pages to 0xFF, a write of
//! whole `WRITE`-byte words may only clear bits (a 1 written over a 0 stays 0), and misaligned
//! or out-of-range accesses are refused. On a board, the HAL's `NorFlash` takes its place (on
//! the nRF52840, `nrf52840_hal::nvmc::Nvmc`: 4 KB pages, 4-byte words).

use embedded_storage::nor_flash::{
    check_erase, check_read, check_write, ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash,
};

/// NOR flash over a caller's buffer, with write words of `WRITE` bytes and erase pages of
/// `ERASE` bytes.
pub struct RamFlash<'a, const WRITE: usize, const ERASE: usize> {
    bytes: &'a mut [u8],
}

impl<'a, const WRITE: usize, const ERASE: usize> RamFlash<'a, WRITE, ERASE> {
    /// The flash holding `bytes` as they are (e.g. a dump of a device's flash region).
    pub fn new(bytes: &'a mut [u8]) -> Self {
        RamFlash { bytes }
    }

    /// A flash of `bytes`, cut down to whole erase pages, erased.
    pub fn erased(bytes: &'a mut [u8]) -> Self {
        let len = bytes.len() / ERASE * ERASE;
        let bytes = &mut bytes[..len];
        bytes.fill(0xFF);
        RamFlash { bytes }
    }
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for RamFlash<'_, WRITE, ERASE> {
    type Error = NorFlashErrorKind;
}

impl<const WRITE: usize, const ERASE: usize> ReadNorFlash for RamFlash<'_, WRITE, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        check_read(self, offset, bytes.len())?;
        let at = offset as usize;
        bytes.copy_from_slice(&self.bytes[at..at + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl<const WRITE: usize, const ERASE: usize> NorFlash for RamFlash<'_, WRITE, ERASE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        check_erase(self, from, to)?;
        self.bytes[from as usize..to as usize].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        check_write(self, offset, bytes.len())?;
        let at = offset as usize;
        // NOR programming only clears bits: erased (1) bits take the data, 0 bits stay 0.
        for (cell, &b) in self.bytes[at..at + bytes.len()].iter_mut().zip(bytes) {
            *cell &= b;
        }
        Ok(())
    }
}
