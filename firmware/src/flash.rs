//! NOR flash emulated in RAM, behind the `embedded-storage` `NorFlash` trait.
//!
//! QEMU's MPS2 boards map their flash read-only (no flash controller is emulated), so the
//! adaptation demo saves its state here instead. It keeps NOR's rules, so that code written
//! against it runs unchanged on a real part: an erase sets whole [`ERASE_SIZE`] pages to 0xFF,
//! a write of whole [`WRITE_SIZE`] words may only clear bits (a 1 written over a 0 stays 0),
//! and misaligned or out-of-range accesses are refused. On a board the same code takes the
//! HAL's `NorFlash` instead (on the nRF52840, `nrf52840_hal::nvmc::Nvmc`, 4 KB pages, 4-byte
//! words).
//!
//! [`ERASE_SIZE`]: RamFlash::ERASE_SIZE
//! [`WRITE_SIZE`]: RamFlash::WRITE_SIZE

use embedded_storage::nor_flash::{
    check_erase, check_read, check_write, ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash,
};

/// NOR flash in a caller's RAM buffer (a whole number of erase pages).
pub struct RamFlash<'a> {
    bytes: &'a mut [u8],
    writes: usize,
    erases: usize,
}

impl<'a> RamFlash<'a> {
    /// A flash of `bytes` (cut down to whole erase pages), erased.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        let len = bytes.len() / Self::ERASE_SIZE * Self::ERASE_SIZE;
        let bytes = &mut bytes[..len];
        bytes.fill(0xFF);
        RamFlash {
            bytes,
            writes: 0,
            erases: 0,
        }
    }

    /// Bytes written since [`Self::new`].
    pub fn bytes_written(&self) -> usize {
        self.writes
    }

    /// Pages erased since [`Self::new`].
    pub fn pages_erased(&self) -> usize {
        self.erases
    }
}

impl ErrorType for RamFlash<'_> {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for RamFlash<'_> {
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

impl NorFlash for RamFlash<'_> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        check_erase(self, from, to)?;
        self.bytes[from as usize..to as usize].fill(0xFF);
        self.erases += (to - from) as usize / Self::ERASE_SIZE;
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        check_write(self, offset, bytes.len())?;
        let at = offset as usize;
        // NOR programming only clears bits: erased (1) bits take the data, 0 bits stay 0.
        for (cell, &b) in self.bytes[at..at + bytes.len()].iter_mut().zip(bytes) {
            *cell &= b;
        }
        self.writes += bytes.len();
        Ok(())
    }
}
