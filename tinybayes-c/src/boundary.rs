//! The checks at the C boundary: every raw pointer and length a caller passes becomes a Rust
//! reference or slice here, or a status. What cannot be checked (that the memory behind a
//! non-NULL, aligned pointer is live and as long as said, and is not used by anything else
//! during the call) is the C caller's part of the contract, stated on each function.

use core::mem::{align_of, size_of};

use crate::status::TbStatus;

/// A slice of `len` values of `T` at `ptr`: NULL, a misaligned pointer or a length whose
/// bytes would run past the address space (or above `isize::MAX`) give their status.
///
/// # Safety
/// When the checks pass, `ptr` must point to `len` initialised values of `T` that stay valid
/// and unchanged for `'a`.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T], TbStatus> {
    check_region::<T>(ptr as usize, len)?;
    // SAFETY: non-NULL, aligned and in the address space (checked above); valid for `len`
    // values by the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// [`slice`] for a buffer the callee may write.
///
/// # Safety
/// When the checks pass, `ptr` must point to `len` values of `T` (any bits valid for `T`)
/// that nothing else reads or writes for `'a`.
pub(crate) unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> Result<&'a mut [T], TbStatus> {
    check_region::<T>(ptr as usize, len)?;
    // SAFETY: as in `slice`, and exclusive by the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}

/// The value `ptr` points to, for reading.
///
/// # Safety
/// When the checks pass, `ptr` must point to an initialised `T` valid for `'a`.
pub(crate) unsafe fn read<'a, T>(ptr: *const T) -> Result<&'a T, TbStatus> {
    check_region::<T>(ptr as usize, 1)?;
    // SAFETY: non-NULL and aligned (checked); initialised and live by the caller's contract.
    Ok(unsafe { &*ptr })
}

/// The value `ptr` points to, for writing.
///
/// # Safety
/// When the checks pass, `ptr` must point to a `T` (initialised, as C memory always holds
/// some bits, and every type passed here is valid for any bits) that nothing else uses
/// for `'a`.
pub(crate) unsafe fn write<'a, T>(ptr: *mut T) -> Result<&'a mut T, TbStatus> {
    check_region::<T>(ptr as usize, 1)?;
    // SAFETY: non-NULL and aligned (checked); exclusive by the caller's contract.
    Ok(unsafe { &mut *ptr })
}

/// NULL, alignment and length checks of `len` values of `T` at address `addr`.
fn check_region<T>(addr: usize, len: usize) -> Result<(), TbStatus> {
    if addr == 0 {
        return Err(TbStatus::NullPointer);
    }
    if addr % align_of::<T>() != 0 {
        return Err(TbStatus::Misaligned);
    }
    let bytes = len
        .checked_mul(size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or(TbStatus::LengthOverflow)?;
    addr.checked_add(bytes)
        .map(|_| ())
        .ok_or(TbStatus::LengthOverflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_checked_before_use() {
        assert_eq!(check_region::<u32>(0, 4), Err(TbStatus::NullPointer));
        assert_eq!(check_region::<u32>(0x1002, 4), Err(TbStatus::Misaligned));
        assert_eq!(check_region::<u8>(0x1001, 4), Ok(()));
        assert_eq!(
            check_region::<u32>(0x1000, usize::MAX / 2),
            Err(TbStatus::LengthOverflow)
        );
        assert_eq!(
            check_region::<u8>(usize::MAX - 3, 8),
            Err(TbStatus::LengthOverflow)
        );
        assert_eq!(check_region::<u8>(usize::MAX - 8, 8), Ok(()));
        assert_eq!(check_region::<u64>(0x1000, 0), Ok(()));
    }
}
