//! Files that hold memories (the database, index snapshots, backups) are readable by memesh's
//! own user alone: directories 0700, files 0600, whatever the umask.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Makes the process create everything owner-only from now on (SQLite's own files, its WAL
/// and shared-memory files included, which it creates itself). Called first thing by the binary.
pub fn restrict_umask() {
    // SAFETY: umask only changes the mode new files get; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `dir` and its missing parents with mode 0700 (existing ones are left as they are).
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates (or truncates) `path` for writing with mode 0600.
pub fn create_file(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through `open`: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Copies `from` to `to`, the copy mode 0600 (a plain copy keeps the source's mode).
pub fn copy_file(from: &Path, to: &Path) -> std::io::Result<u64> {
    let mut src = File::open(from)?;
    let mut dst = create_file(to)?;
    std::io::copy(&mut src, &mut dst)
}

/// Writes `bytes` to `path` with mode 0600.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    create_file(path)?.write_all(bytes)
}

/// A warning when `dir` can be read or entered by its group or by others (an older memesh, or a
/// directory made by hand): it holds every memory in plain text.
pub fn exposure(dir: &Path) -> Option<String> {
    let mode = std::fs::metadata(dir).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "the data directory {} has mode {:o}: its group or others can read every memory; \
             run `chmod -R go-rwx {}`",
            dir.display(),
            mode & 0o777,
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&file, b"y").unwrap();
        assert_eq!(mode(&file), 0o600, "an existing file is tightened too");
        copy_file(&file, &dir.join("g")).unwrap();
        assert_eq!(mode(&dir.join("g")), 0o600);
        assert!(exposure(&dir).is_none());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(exposure(&dir).unwrap().contains("755"));
    }
}
