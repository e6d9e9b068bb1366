//! The disk Prometheus' data uses.

use std::path::Path;

/// The disk Prometheus' data uses: the bytes of every file under `dir` (not
/// following links), and the space left to it on that file system.
pub fn disk_use(dir: &Path) -> (u64, Option<u64>) {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = fs_err::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 8 => total += walk(&e.path(), depth + 1),
                Ok(t) if t.is_file() => {
                    total += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
        total
    }
    let free = nix::sys::statvfs::statvfs(dir)
        .ok()
        .map(|s| s.blocks_available() * s.fragment_size());
    (walk(dir, 0), free)
}
