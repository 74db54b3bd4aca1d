//! The ten MNIST test images embedded for the demo (the first ten of the official test set;
//! MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0).

/// Raw asset: 10 labels, then 10 images of 28x28 bytes, row-major.
static RAW: &[u8; 10 + 10 * 784] = include_bytes!("../assets/mnist-test-first10.bin");

/// Number of embedded images.
pub const IMAGE_COUNT: usize = 10;
/// Bytes per image.
pub const IMAGE_LEN: usize = 28 * 28;

/// Image `i` (`i < IMAGE_COUNT`) and its label.
pub fn image(i: usize) -> (&'static [u8], u8) {
    let start = IMAGE_COUNT + i * IMAGE_LEN;
    (&RAW[start..start + IMAGE_LEN], RAW[i])
}
