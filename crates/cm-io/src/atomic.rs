//! Writing files so that nothing is ever half-written or destroyed.
//!
//! - A regular file (or a new path) is replaced atomically: the bytes go to a temporary file in the
//!   same folder, are flushed to disk, get the old file's permissions, and are renamed over the
//!   target. A crash or a full disk leaves the previous file intact.
//! - A symlink is followed: its final target is replaced atomically and the link itself stays.
//! - A device node, FIFO or socket (`/dev/stdout`, `/dev/null`, a named pipe) is written through,
//!   never replaced by a regular file.
//! - A directory is refused with a message naming it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoError, Result};

/// What lies at a path we are about to write.
enum Target {
    /// Nothing yet, or a regular file: replace atomically.
    Replace(PathBuf),
    /// A character / block device, FIFO or socket: write through it.
    Special(PathBuf),
}

fn classify(path: &Path) -> Result<Target> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Target::Replace(path.to_path_buf()))
        }
        Err(e) => return Err(IoError::write(path, e)),
    };
    if metadata.file_type().is_symlink() {
        // Follow the link to its final target; a dangling link is written as a new file at the
        // place it points to (as `open(O_CREAT)` would), keeping the link.
        let target = match std::fs::canonicalize(path) {
            Ok(t) => t,
            Err(_) => {
                let link = std::fs::read_link(path).map_err(|e| IoError::write(path, e))?;
                let parent = path.parent().unwrap_or(Path::new("."));
                parent.join(link)
            }
        };
        if target == path {
            return Err(IoError::InvalidInput(format!(
                "{} is a symlink loop",
                path.display()
            )));
        }
        return classify(&target);
    }
    if metadata.is_dir() {
        return Err(IoError::write(
            path,
            std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "the output path is a directory; give a file name",
            ),
        ));
    }
    if metadata.is_file() {
        Ok(Target::Replace(path.to_path_buf()))
    } else {
        Ok(Target::Special(path.to_path_buf()))
    }
}

/// Writes `bytes` to `path` (see the module docs for the rules per kind of target).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    match classify(path)? {
        Target::Special(device) => {
            let mut file = OpenOptions::new()
                .write(true)
                .open(&device)
                .map_err(|e| IoError::write(path, e))?;
            file.write_all(bytes)
                .and_then(|_| file.flush())
                .map_err(|e| IoError::write(path, e))
        }
        Target::Replace(target) => replace(path, &target, bytes),
    }
}

/// `<name>.tmp-<pid>` next to `target`.
fn temporary_name(requested: &Path, target: &Path) -> Result<PathBuf> {
    let file_name = target.file_name().ok_or_else(|| {
        IoError::InvalidInput(format!("{} is not a file path", requested.display()))
    })?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    Ok(target.with_file_name(tmp_name))
}

fn replace(requested: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_name(requested, target)?;
    let previous_permissions = std::fs::metadata(target).ok().map(|m| m.permissions());
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        if let Some(permissions) = previous_permissions {
            std::fs::set_permissions(&tmp, permissions)?;
        }
        std::fs::rename(&tmp, target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(IoError::write(requested, e));
    }
    Ok(())
}

/// Writes a folder atomically: `fill` populates a fresh temporary sibling folder, which is then
/// renamed to `dir` (an existing `dir` is replaced only after the new one is complete). Used for
/// checkpoints: a crash or a full disk mid-write leaves the previous folder untouched.
pub fn write_dir_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<(), IoError>,
) -> Result<()> {
    let name = dir
        .file_name()
        .ok_or_else(|| IoError::InvalidInput(format!("{} is not a folder path", dir.display())))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| IoError::write(parent, e))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| IoError::write(&tmp, e))?;
    let result = fill(&tmp).and_then(|_| {
        // Replace: move the old folder aside first (rename cannot replace a non-empty folder).
        let mut old_name = name.to_os_string();
        old_name.push(format!(".old-{}", std::process::id()));
        let old = parent.join(old_name);
        let had_old = dir.exists();
        if had_old {
            std::fs::rename(dir, &old).map_err(|e| IoError::write(dir, e))?;
        }
        if let Err(e) = std::fs::rename(&tmp, dir) {
            if had_old {
                let _ = std::fs::rename(&old, dir);
            }
            return Err(IoError::write(dir, e));
        }
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cm-io-atomic-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_a_regular_file_and_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("regular");
        let path = dir.join("a.bin");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn writes_through_a_symlink_and_keeps_the_link() {
        let dir = temp("symlink");
        let real = dir.join("real.bin");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
    }

    #[test]
    fn writes_through_a_device_node() {
        write_atomically(Path::new("/dev/null"), b"bytes").unwrap();
        let metadata = std::fs::symlink_metadata("/dev/null").unwrap();
        assert!(!metadata.is_file(), "/dev/null must stay a device node");
    }

    #[test]
    fn writes_through_a_fifo() {
        let dir = temp("fifo");
        let fifo = dir.join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_atomically(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(!std::fs::symlink_metadata(&fifo).unwrap().is_file());
    }

    #[test]
    fn refuses_a_directory_naming_it() {
        let dir = temp("dir");
        let err = write_atomically(&dir, b"x").unwrap_err().to_string();
        assert!(
            err.contains("directory") && err.contains(&dir.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_failed_folder_write_keeps_the_previous_folder() {
        let root = temp("folder");
        let dir = root.join("ckpt");
        write_dir_atomically(&dir, |tmp| {
            std::fs::write(tmp.join("a"), b"first").map_err(|e| IoError::write(tmp, e))
        })
        .unwrap();
        let err = write_dir_atomically(&dir, |tmp| {
            std::fs::write(tmp.join("a"), b"partial").unwrap();
            Err(IoError::InvalidInput("disk full".into()))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"first");
        // Only the finished folder remains.
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
        write_dir_atomically(&dir, |tmp| {
            std::fs::write(tmp.join("b"), b"second").map_err(|e| IoError::write(tmp, e))
        })
        .unwrap();
        assert!(!dir.join("a").exists());
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"second");
    }
}
