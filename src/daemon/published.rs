//! Which cluster's group each published target file holds ([`Published`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The name each discovery file's group is published under, and back. A name
/// passes from a cluster that left to one that takes it; a file's old name is
/// withdrawn only while it still holds it.
#[derive(Debug)]
pub struct Published {
    name_of: HashMap<PathBuf, String>,
    file_of: HashMap<String, PathBuf>,
    /// Every group must be recomputed at the next publish (at start, after a repair).
    all: bool,
}

impl Default for Published {
    fn default() -> Published {
        Published {
            name_of: HashMap::new(),
            file_of: HashMap::new(),
            all: true,
        }
    }
}

impl Published {
    /// Records that `file`'s group is now published as `name` (None: it has no
    /// group). Returns the name whose target file must be withdrawn, if any.
    pub fn set(&mut self, file: &Path, name: Option<&str>) -> Option<String> {
        let mut withdrawn = None;
        if let Some(old) = self.name_of.get(file).cloned()
            && name.is_none_or(|n| n != old)
        {
            self.name_of.remove(file);
            if self.file_of.get(&old).is_some_and(|f| f == file) {
                self.file_of.remove(&old);
                withdrawn = Some(old);
            }
        }
        if let Some(name) = name {
            if let Some(other) = self.file_of.get(name).cloned()
                && other != file
            {
                // The name passed from a cluster that left to this one.
                self.name_of.remove(&other);
            }
            self.file_of.insert(name.to_string(), file.to_path_buf());
            self.name_of.insert(file.to_path_buf(), name.to_string());
        }
        withdrawn
    }

    /// Forgets everything: every group is recomputed at the next publish.
    pub fn reset(&mut self) {
        *self = Published::default();
    }

    /// Whether every group is to be recomputed now (once).
    pub fn take_all(&mut self) -> bool {
        std::mem::take(&mut self.all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_group_withdraws_its_old_name() {
        let mut p = Published::default();
        assert_eq!(p.set(Path::new("/a"), Some("train")), None);
        assert_eq!(p.set(Path::new("/a"), Some("train")), None);
        assert_eq!(
            p.set(Path::new("/a"), Some("train-2")),
            Some("train".into())
        );
        assert_eq!(p.set(Path::new("/a"), None), Some("train-2".into()));
        assert_eq!(p.set(Path::new("/a"), None), None);
    }

    #[test]
    fn a_name_taken_over_is_not_withdrawn_by_its_former_holder() {
        let mut p = Published::default();
        p.set(Path::new("/old"), Some("train"));
        // Another cluster takes the name (the first one left).
        assert_eq!(p.set(Path::new("/new"), Some("train")), None);
        // The former holder's group goes: the name stays, it is /new's now.
        assert_eq!(p.set(Path::new("/old"), None), None);
        assert_eq!(p.set(Path::new("/new"), None), Some("train".into()));
    }

    #[test]
    fn everything_is_published_at_start_and_after_a_reset() {
        let mut p = Published::default();
        assert!(p.take_all());
        assert!(!p.take_all());
        p.set(Path::new("/a"), Some("train"));
        p.reset();
        assert!(p.take_all());
        assert_eq!(p.set(Path::new("/a"), None), None, "forgotten");
    }
}
