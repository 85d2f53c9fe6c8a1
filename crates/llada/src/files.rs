//! Writing files so that nothing already written is lost: every file is written under a
//! temporary name in its own folder, flushed to disk and renamed into place, so a crash
//! or a full disk never leaves a half-written file under the final name.

use std::path::{Path, PathBuf};

use crate::config::COMPANION_FILES;
use crate::error::{Error, Result};

/// Writes `path` by calling `write` on a temporary path beside it, then syncing and
/// renaming that file into place. On error the temporary file is removed and `path` is
/// left as it was.
pub fn replace_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        let file = std::fs::File::open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`replace_atomically`] with the whole content at hand.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Saves tensors as a safetensors file at `path`, atomically.
pub fn save_safetensors<K>(
    path: &Path,
    tensors: &std::collections::HashMap<K, candle_core::Tensor>,
) -> Result<()>
where
    K: AsRef<str> + Ord + std::fmt::Display,
{
    replace_atomically(path, |tmp| {
        // The safetensors writer creates its file readable by the owner only (0600); an
        // exported model folder is meant to be shared, so the file gets the permissions
        // any new file gets here (umask applied), taken from a plain create first.
        let plain = std::fs::File::create(tmp)
            .and_then(|f| f.metadata())
            .map_err(|e| Error::io(tmp, e))?
            .permissions();
        candle_core::safetensors::save(tensors, tmp).map_err(Error::from)?;
        std::fs::set_permissions(tmp, plain).map_err(|e| Error::io(tmp, e))
    })
}

/// `dir/.name.tmp`: in the same folder (a rename across file systems is not atomic) and
/// hidden.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Copies the model folder's files besides its weights (config, generation config,
/// tokenizer, chat template) that exist in `from` into `to`, atomically each. Returns
/// how many were copied.
pub fn copy_companion_files(from: &Path, to: &Path) -> Result<usize> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    let mut copied = 0;
    for name in COMPANION_FILES {
        let src = from.join(name);
        if !src.is_file() {
            continue;
        }
        let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
        write_atomic(&to.join(name), &bytes)?;
        copied += 1;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"old").unwrap();
        let err = replace_atomically(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::InvalidRequest("disk full".into()))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn saved_weights_get_the_permissions_of_any_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let weights = dir.path().join("model.safetensors");
        let tensors = std::collections::HashMap::from([(
            "w".to_string(),
            candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap(),
        )]);
        save_safetensors(&weights, &tensors).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions();
        assert_eq!(mode(&weights), mode(&plain));
    }

    #[test]
    fn companion_files_are_copied_when_present() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("config.json"), "{}").unwrap();
        std::fs::write(from.path().join("tokenizer.json"), "{}").unwrap();
        std::fs::write(from.path().join("model.safetensors"), "x").unwrap();
        let dest = to.path().join("out");
        assert_eq!(copy_companion_files(from.path(), &dest).unwrap(), 2);
        assert!(dest.join("config.json").is_file());
        assert!(!dest.join("model.safetensors").exists());
    }
}
