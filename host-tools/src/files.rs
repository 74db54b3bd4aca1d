//! File handling shared by the commands: reading models into aligned buffers and writing
//! outputs without ever clobbering what a user has, unless they asked with `--force`.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tinybayes::writer::ModelBuffer;

/// Reads a model file into an aligned buffer and validates it.
pub fn read_model(path: &Path) -> Result<ModelBuffer> {
    let bytes = fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    let buffer = ModelBuffer::from_bytes(&bytes);
    buffer
        .model()
        .with_context(|| format!("{} is not a valid model", path.display()))?;
    Ok(buffer)
}

/// Fails if `path` exists and `force` is not set.
pub fn check_writable(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists (use --force to overwrite)",
            path.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename), so
/// an interrupted write never leaves a half-written file. Refuses to overwrite unless `force`.
pub fn write_new(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    check_writable(path, force)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("directory {} does not exist", dir.display());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
