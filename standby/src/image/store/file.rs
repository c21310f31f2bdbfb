//! The file steps every part of the store shares: durable directories,
//! temporary files removed unless kept, and files set aside as corrupt.

use crate::image::ImageError;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

pub(super) fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io(format!("fsync directory {}", dir.display()), e))
}

pub(super) fn mkdirs(dir: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(dir).map_err(|e| ImageError::io(format!("create {}", dir.display()), e))
}

pub(super) fn corrupt(path: &Path, why: impl Into<String>) -> ImageError {
    ImageError::CorruptFile {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

pub(super) fn set_aside(path: &Path, e: &ImageError) {
    log::error!("image store: {e}; renamed to .bad");
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    if let Err(e) = fs::rename(path, &bad) {
        log::error!("image store: rename {}: {e}", path.display());
    }
}

/// Removes a temporary file on drop unless kept.
pub(super) struct TmpFile(pub(super) Option<PathBuf>);
impl TmpFile {
    pub(super) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}
