//! `tinybayes images`: cut the first images (and labels) of an IDX set into the raw file the
//! firmware embeds (`firmware/assets/mnist-test-first10.bin`, read by `firmware/build.rs`).
//!
//! Layout: with `--labels`, the `N` label bytes, then the `N` images of `rows x cols` bytes
//! each, row-major, in file order; without `--labels`, the images only. No header: the
//! firmware's build script knows the image size from the model.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::files::write_new;
use crate::idx::{load_images, load_labels};

/// Arguments of `images`.
#[derive(Args, Debug)]
#[command(after_help = "Regenerates the firmware's ten embedded digits exactly:
  tinybayes images --images ../shared/data/mnist/t10k-images-idx3-ubyte.gz \\
      --labels ../shared/data/mnist/t10k-labels-idx1-ubyte.gz --count 10 \\
      --out firmware/assets/mnist-test-first10.bin --force")]
pub struct ImagesArgs {
    /// IDX image file (gzip or plain), rank 3 [n, rows, cols].
    #[arg(long)]
    pub images: PathBuf,
    /// IDX label file (gzip or plain) of the same images; its N bytes come first.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Number of images to write, from the first (after --skip).
    #[arg(long, allow_negative_numbers = true)]
    pub count: usize,
    /// Images to skip before the first one written.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub skip: usize,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// The bytes `images` writes: `labels[skip..skip + count]` (when given), then the images.
pub fn cut(
    images: &[u8],
    image_len: usize,
    labels: Option<&[u8]>,
    skip: usize,
    count: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * (image_len + 1));
    if let Some(labels) = labels {
        out.extend_from_slice(&labels[skip..skip + count]);
    }
    out.extend_from_slice(&images[skip * image_len..(skip + count) * image_len]);
    out
}

/// Runs `images`.
pub fn run(args: &ImagesArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    crate::files::check_writable(&args.out, args.force)?;
    let images = load_images(&args.images)?;
    let n = images.dims[0];
    let image_len = images.dims[1] * images.dims[2];
    let end = args.skip.checked_add(args.count);
    if end.is_none_or(|e| e > n) {
        bail!(
            "--skip {} --count {} asks for more than the {n} images of {}",
            args.skip,
            args.count,
            args.images.display()
        );
    }
    let labels = match &args.labels {
        Some(path) => {
            let labels = load_labels(path)?;
            if labels.dims[0] != n {
                bail!(
                    "{} has {} labels for the {n} images of {}",
                    path.display(),
                    labels.dims[0],
                    args.images.display()
                );
            }
            Some(labels.data)
        }
        None => None,
    };
    let bytes = cut(
        &images.data,
        image_len,
        labels.as_deref(),
        args.skip,
        args.count,
    );
    write_new(&args.out, &bytes, args.force)?;
    crate::ui::status(format!(
        "wrote {} ({} bytes: {}{} images of {}x{})",
        args.out.display(),
        bytes.len(),
        if labels.is_some() {
            format!("{} labels, then ", args.count)
        } else {
            String::new()
        },
        args.count,
        images.dims[1],
        images.dims[2]
    ));
    Ok(())
}
