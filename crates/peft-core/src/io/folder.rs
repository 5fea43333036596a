//! Saves that write a folder as a unit. A checkpoint's files belong together (an adapter's
//! config and its weights; a model's config, weights and tokenizer): they are written into a
//! temporary sibling folder and swapped in with renames, as Trainer checkpoints are, so a save
//! killed between two files never leaves one save's config beside another's weights. Saves
//! into one folder from this process run one at a time.
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A name no other write of this process (or another live one) uses: `.{name}.{kind}-{pid}-{n}`.
pub(crate) fn unique_sibling(path: &Path, kind: &str) -> PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    dir.join(format!(".{name}.{kind}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// One lock per target folder, so concurrent saves into it serialise instead of interleaving.
fn folder_lock(dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<PathBuf, Arc<Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks.get_or_insert_with(HashMap::new).entry(dir.to_path_buf()).or_default().clone()
}

/// Runs `write` on a fresh temporary sibling of `dir`, then puts its files in place: `dir`
/// becomes the new folder; entries of an existing `dir` that this save does not write (other
/// adapters' subfolders, a README) are carried over. On failure nothing under `dir` changes.
pub fn write_folder(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.is_file() {
        return Err(Error::arg("dir", "a folder to save in", format!("{} (an existing file)", dir.display())));
    }
    // Absolute, so that `.` or `out/` still has a parent to put the temporary sibling in.
    let dir = &std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    if dir.file_name().is_none() {
        return Err(Error::arg("dir", "a folder to save in (not a filesystem root)", dir.display()));
    }
    let lock = folder_lock(dir);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    remove_stale_siblings(dir);
    let tmp = unique_sibling(dir, "tmp");
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = write(&tmp).and_then(|()| swap_in(&tmp, dir));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// `tmp` becomes `dir`. On Linux the two folders are exchanged in one `renameat2` call, so a
/// reader always finds `dir` holding one whole save, the old or the new. Elsewhere (or on a
/// filesystem without RENAME_EXCHANGE) the old `dir` is renamed aside first, and between the
/// two renames there is no `dir` at all (a reader fails to find it) rather than a mix of two
/// saves. Then the old folder's entries that this save did not write are carried over.
fn swap_in(tmp: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e));
    }
    let old = if exchange(tmp, dir) {
        tmp.to_path_buf()
    } else {
        let old = unique_sibling(dir, "old");
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        if let Err(e) = std::fs::rename(tmp, dir) {
            let _ = std::fs::rename(&old, dir);
            return Err(Error::io(dir, e));
        }
        old
    };
    let entries = std::fs::read_dir(&old).map_err(|e| Error::io(&old, e))?;
    for entry in entries.flatten() {
        let target = dir.join(entry.file_name());
        if !target.exists() {
            std::fs::rename(entry.path(), &target).map_err(|e| Error::io(&target, e))?;
        }
    }
    std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
}

/// Atomically swaps two paths (Linux `renameat2(RENAME_EXCHANGE)`); false where unsupported.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(a), Ok(b)) = (std::ffi::CString::new(a.as_os_str().as_bytes()), std::ffi::CString::new(b.as_os_str().as_bytes())) else {
        return false;
    };
    // SAFETY: two NUL-terminated paths that live across the call; AT_FDCWD as both dir fds.
    let r = unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> bool {
    false
}

/// Temporary siblings left by a save that was killed (its process is gone): removed, so they
/// do not pile up beside the folder. Only where a process's liveness can be checked (/proc).
fn remove_stale_siblings(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else { return };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = file.strip_prefix(&prefix) else { continue };
        let Some(pid) = rest.strip_prefix("tmp-").or(rest.strip_prefix("old-")).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
