//! Data augmentation: random translations of training images by a few pixels, the standard
//! remedy for a fully connected network's sensitivity to where a digit sits in the frame.

use rand::Rng;

/// Shifts one channel-major image (`channels x height x width`, row-major) by `(dy, dx)`
/// pixels in place, filling the uncovered border with zeros.
pub fn shift_image(image: &mut [f32], shape: [usize; 3], dy: isize, dx: isize) {
    let [channels, height, width] = shape;
    let mut shifted = vec![0.0f32; image.len()];
    for c in 0..channels {
        for y in 0..height {
            let sy = y as isize - dy;
            if sy < 0 || sy >= height as isize {
                continue;
            }
            for x in 0..width {
                let sx = x as isize - dx;
                if sx < 0 || sx >= width as isize {
                    continue;
                }
                shifted[(c * height + y) * width + x] =
                    image[(c * height + sy as usize) * width + sx as usize];
            }
        }
    }
    image.copy_from_slice(&shifted);
}

/// Shifts every row of a batch (one flattened image per row) by independent offsets drawn
/// uniformly from `-max_shift..=max_shift` along each axis.
pub fn shift_batch(
    batch: &mut ndarray::Array2<f32>,
    shape: [usize; 3],
    max_shift: usize,
    rng: &mut impl Rng,
) {
    if max_shift == 0 {
        return;
    }
    let k = max_shift as i64;
    for mut row in batch.rows_mut() {
        let dy = rng.random_range(-k..=k) as isize;
        let dx = rng.random_range(-k..=k) as isize;
        if let Some(image) = row.as_slice_mut() {
            shift_image(image, shape, dy, dx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_move_pixels_and_fill_with_zeros() {
        // 1x3x3 image 1..9, shifted down 1 and left 1.
        let mut image: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        shift_image(&mut image, [1, 3, 3], 1, -1);
        assert_eq!(image, vec![0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 5.0, 6.0, 0.0]);
        let mut same: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        shift_image(&mut same, [1, 3, 3], 0, 0);
        assert_eq!(same, (1..=9).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn batch_shifts_are_bounded_and_seeded() {
        use rand::SeedableRng;
        let mut batch = ndarray::Array2::<f32>::zeros((50, 25));
        batch.column_mut(12).fill(1.0); // the centre pixel of a 5x5 image
        let mut a = batch.clone();
        shift_batch(
            &mut a,
            [1, 5, 5],
            1,
            &mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(4),
        );
        let mut b = batch.clone();
        shift_batch(
            &mut b,
            [1, 5, 5],
            1,
            &mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(4),
        );
        assert_eq!(a, b);
        for row in a.rows() {
            let at = row.iter().position(|&v| v == 1.0).unwrap();
            let (y, x) = (at / 5, at % 5);
            assert!(
                (1..=3).contains(&y) && (1..=3).contains(&x),
                "moved too far: {y},{x}"
            );
        }
        assert!(
            a.rows().into_iter().any(|r| r[12] != 1.0),
            "some image must move"
        );
    }
}
