//! Checks on a tree an installer job wrote, before it enters the package store, and sealing it
//! there: root-owned and read-only.
//!
//! The tree comes from a sandbox that ran uv and, for sdists, a package's build code, so it is
//! hostile: nothing in it may be setuid/setgid, a device, FIFO or socket, or a symlink that
//! resolves outside the tree, and a built tree may hold no hard link. A tree that only uv wrote
//! from wheels (no third-party code ran) may share its files' inodes with uv's shared cache:
//! sealing makes those inodes root-owned and read-only, so neither the cache's owner nor
//! anyone else can change them through either name afterwards. The caller has moved the tree out of the job's
//! scratch directory (out of reach of the job's uid) and the job's processes are gone, so
//! nothing changes the tree while it is checked.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;

/// Why a tree is refused.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("`{path}` is not a directory")]
    NotADirectory { path: String },
    #[error("`{path}` is setuid or setgid")]
    SetId { path: String },
    #[error("`{path}` is a {kind}")]
    Special { path: String, kind: &'static str },
    #[error("`{path}` is a hard link")]
    HardLink { path: String },
    #[error("symlink `{path}` points to `{target}`, outside the package")]
    LinkEscapes { path: String, target: String },
    #[error("cannot check `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a checked tree holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TreeSummary {
    /// Bytes of regular files.
    pub size: u64,
    /// Whether the top level holds a `.pth` file.
    pub has_pth: bool,
    /// Names of the top-level `*.dist-info` directories.
    pub dist_infos: Vec<String>,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn shown(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    crate::echo::echo_bytes(std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()))
}

/// Whether a tree's regular files may be hard links (into uv's shared cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardLinks {
    Refuse,
    FromCache,
}

/// Checks every entry under `root` (never following symlinks) and reports its size.
pub fn check(root: &Path, links: HardLinks) -> Result<TreeSummary, TreeError> {
    let meta = fs::symlink_metadata(root).map_err(io_at(root))?;
    if !meta.is_dir() {
        return Err(TreeError::NotADirectory {
            path: root.display().to_string(),
        });
    }
    let mut summary = TreeSummary::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
            let ft = meta.file_type();
            if meta.mode() & (S_ISUID | S_ISGID) != 0 {
                return Err(TreeError::SetId {
                    path: shown(root, &path),
                });
            }
            if ft.is_dir() {
                if dir == root {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".dist-info") {
                        summary.dist_infos.push(name);
                    }
                }
                stack.push(path);
            } else if ft.is_file() {
                if meta.nlink() > 1 && links == HardLinks::Refuse {
                    return Err(TreeError::HardLink {
                        path: shown(root, &path),
                    });
                }
                summary.size += meta.len();
                if dir == root && entry.file_name().to_string_lossy().ends_with(".pth") {
                    summary.has_pth = true;
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(io_at(&path))?;
                let rel = path.strip_prefix(root).unwrap_or(&path);
                if !link_stays_inside(rel, &target) {
                    return Err(TreeError::LinkEscapes {
                        path: shown(root, &path),
                        target: crate::echo::echo_bytes(std::os::unix::ffi::OsStrExt::as_bytes(
                            target.as_os_str(),
                        )),
                    });
                }
            } else {
                use std::os::unix::fs::FileTypeExt;
                let kind = if ft.is_fifo() {
                    "FIFO"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_char_device() {
                    "character device"
                } else {
                    "block device"
                };
                return Err(TreeError::Special {
                    path: shown(root, &path),
                    kind,
                });
            }
        }
    }
    Ok(summary)
}

/// Whether a symlink at `rel` (relative to the tree's root) pointing to `target` resolves inside
/// the tree: relative, with its `..` components only at the start and climbing no higher than
/// the root. (Lexical resolution is sound only if no symlink is crossed before a `..`; with
/// every `..` leading, the climb crosses only the link's real ancestors.)
pub fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    let mut depth = rel.components().count().saturating_sub(1);
    let mut seen_name = false;
    if target.as_os_str().is_empty() {
        return false;
    }
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return false,
            Component::CurDir => {}
            Component::ParentDir if seen_name => return false,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::Normal(_) => seen_name = true,
        }
    }
    true
}

/// Makes a checked tree root-owned and read-only: files 0444 (0555 if any execute bit was set),
/// directories 0555; symlinks are only re-owned.
pub fn seal(root: &Path) -> Result<(), TreeError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
        std::os::unix::fs::lchown(&path, Some(0), Some(0)).map_err(io_at(&path))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            continue;
        }
        let mode = if ft.is_dir() {
            for entry in fs::read_dir(&path).map_err(io_at(&path))? {
                stack.push(entry.map_err(io_at(&path))?.path());
            }
            0o555
        } else if meta.mode() & 0o111 != 0 {
            0o555
        } else {
            0o444
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_at(&path))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("pkg/sub")).unwrap();
        fs::write(dir.path().join("pkg/__init__.py"), "x = 1\n").unwrap();
        fs::write(dir.path().join("pkg/sub/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            dir.path().join("pkg/sub/run"),
            fs::Permissions::from_mode(0o775),
        )
        .unwrap();
        fs::create_dir(dir.path().join("pkg-1.0.dist-info")).unwrap();
        fs::write(dir.path().join("pkg.pth"), "pkg\n").unwrap();
        symlink("../__init__.py", dir.path().join("pkg/sub/link")).unwrap();
        dir
    }

    #[test]
    fn accepts_and_seals_a_plain_tree() {
        let dir = tree();
        let s = check(dir.path(), HardLinks::Refuse).unwrap();
        assert_eq!(s.size, 20);
        assert!(s.has_pth);
        assert_eq!(s.dist_infos, ["pkg-1.0.dist-info"]);
        seal(dir.path()).unwrap();
        let mode = |p: &str| {
            fs::symlink_metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("pkg"), 0o555);
        assert_eq!(mode("pkg/__init__.py"), 0o444);
        assert_eq!(mode("pkg/sub/run"), 0o555);
        let m = fs::symlink_metadata(dir.path().join("pkg/sub/link")).unwrap();
        assert!(m.file_type().is_symlink());
        assert_eq!((m.uid(), m.gid()), (0, 0));
    }

    #[test]
    fn refuses_setuid_files() {
        let dir = tree();
        let p = dir.path().join("pkg/sub/run");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
        assert!(
            matches!(check(dir.path(), HardLinks::Refuse), Err(TreeError::SetId { path }) if path == "pkg/sub/run")
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o2755)).unwrap();
        assert!(matches!(
            check(dir.path(), HardLinks::Refuse),
            Err(TreeError::SetId { .. })
        ));
    }

    #[test]
    fn refuses_escaping_symlinks() {
        for target in ["/etc/passwd", "../../../x", "sub/../../.."] {
            let dir = tree();
            symlink(target, dir.path().join("pkg/bad")).unwrap();
            assert!(
                matches!(
                    check(dir.path(), HardLinks::Refuse),
                    Err(TreeError::LinkEscapes { .. })
                ),
                "{target}"
            );
        }
        assert!(link_stays_inside(Path::new("a/b/l"), Path::new("../../x")));
        assert!(!link_stays_inside(
            Path::new("a/b/l"),
            Path::new("../../../x")
        ));
        assert!(!link_stays_inside(Path::new("l"), Path::new("")));
    }

    #[test]
    fn refuses_hard_links_and_special_files() {
        let dir = tree();
        fs::hard_link(
            dir.path().join("pkg/__init__.py"),
            dir.path().join("pkg/again.py"),
        )
        .unwrap();
        assert!(matches!(
            check(dir.path(), HardLinks::Refuse),
            Err(TreeError::HardLink { .. })
        ));
        assert!(check(dir.path(), HardLinks::FromCache).is_ok());

        let dir = tree();
        let sock = dir.path().join("pkg/sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(matches!(
            check(dir.path(), HardLinks::Refuse),
            Err(TreeError::Special { kind: "socket", .. })
        ));
    }

    #[test]
    fn refuses_a_root_that_is_a_symlink() {
        let dir = tree();
        let link = dir.path().join("root-link");
        symlink("/", &link).unwrap();
        assert!(matches!(
            check(&link, HardLinks::Refuse),
            Err(TreeError::NotADirectory { .. })
        ));
    }
}
