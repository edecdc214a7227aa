//! Function archives: unpacking an upload into a function directory, hashing a function
//! directory's content, and packing a directory into an upload.
//!
//! An upload (`POST /registry/<name>`, OpenLambda-compatible) is a `.tar.gz` of the function's
//! code. It comes from the network, so [`extract`] treats it as hostile: it never lets the
//! `tar` crate write anything, refuses every entry that could place a file outside the
//! destination (absolute paths, `..`, symlinks that escape or are walked through, hard links to
//! anything but a file it already wrote), refuses device files, FIFOs and sparse files, bounds
//! the unpacked size, the number of entries, the length of names and the memory it uses, and
//! normalizes permissions. It reads GNU long-name/long-link and pax records itself (the `tar`
//! crate would buffer them whole), refusing one whose size passes [`PATH_MAX`] or a pax bound
//! before reading it. Error messages cut the names they repeat ([`crate::echo`]).
//!
//! [`tree_hash`] is the code hash the registry stores for a function directory, and
//! [`pack_dir`] builds the upload the CLI sends for `kindling deploy DIR`.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::echo::echo_bytes;

use kindling_sandbox::mount::O_NOFOLLOW;

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Decompressed bytes allowed per entry on top of [`ArchiveLimits::max_unpacked_bytes`], for
/// headers, padding and long-name/pax records. The `tar` crate reads long-name and pax records
/// into memory before [`extract`] sees the entry they describe, so only a cap on the
/// decompressed stream bounds them.
const METADATA_BYTES_PER_ENTRY: u64 = 4096;

/// Fixed slack on the decompressed stream (end-of-archive blocks, tar's record padding).
const METADATA_BYTES_SLACK: u64 = 1 << 20;

/// Longest entry name or link target (Linux's `PATH_MAX`). GNU long-name and long-link records
/// and pax `path`/`linkpath` values past it are refused before they are read.
pub const PATH_MAX: usize = 4096;

/// Largest pax extended header read (`x` and `g` records): room for a maximal path and link
/// target plus the small records other tars add (times, ownership, a few extended attributes).
const MAX_PAX_BYTES: u64 = 64 * 1024;

/// Total bytes of the entry paths one extraction remembers (to refuse clashes, hard links to
/// missing files and paths through symlinks): bounds its memory whatever the entry names.
const MAX_REMEMBERED_PATH_BYTES: usize = 16 << 20;

const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const EXEC_FILE_MODE: u32 = 0o755;

/// Bounds on what one upload may unpack to (`[archive]`; more -> 400 at deploy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveLimits {
    /// Sum of the sizes of all entries (as declared and as actually written).
    pub max_unpacked_bytes: u64,
    /// Number of entries, directories and links included.
    pub max_entries: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 256 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// Why an upload was refused or could not be unpacked.
#[derive(thiserror::Error, Debug)]
pub enum ArchiveError {
    #[error("upload is not gzip-compressed")]
    NotGzip,
    #[error("upload is not a readable .tar.gz archive")]
    Corrupt {
        #[source]
        source: io::Error,
    },
    #[error("archive entry `{entry}` has an absolute path")]
    AbsolutePath { entry: String },
    #[error("archive entry `{entry}` leaves the function directory")]
    ParentDir { entry: String },
    #[error("archive link `{entry}` points to `{target}`, outside the function directory")]
    LinkEscapes { entry: String, target: String },
    #[error(
        "archive symlink `{entry}` points to `{target}`, which climbs back out of a directory; \
         only leading `..` components are allowed"
    )]
    LinkNotNormal { entry: String, target: String },
    #[error("archive hard link `{entry}` points to `{target}`, which is not a file earlier in the archive")]
    HardLinkTarget { entry: String, target: String },
    #[error("archive entry `{entry}` goes through the symlink `{link}`")]
    ThroughSymlink { entry: String, link: String },
    #[error("archive entry `{entry}` is a {kind}, which a function may not contain")]
    SpecialFile { entry: String, kind: String },
    #[error("archive entry `{entry}` clashes with an earlier entry")]
    Conflict { entry: String },
    #[error("archive entry `{entry}` takes the archive past its limit of {limit} unpacked bytes")]
    TooLarge { entry: String, limit: u64 },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("archive {what} of {len} bytes is longer than the limit of {limit} bytes")]
    NameTooLong {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("archive entry names take more than {limit} bytes in all")]
    NamesTooLarge { limit: usize },
    #[error("archive is malformed: {reason}")]
    Malformed { reason: &'static str },
    #[error("destination `{}` is not an empty directory", path.display())]
    DestNotEmpty { path: PathBuf },
    #[error("cannot write `{}`", echo_bytes(path.as_os_str().as_bytes()))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Unpacks the `.tar.gz` upload `tar_gz` into `dest`.
///
/// `dest` must be an empty directory the caller has just created; nothing is ever written
/// outside it. On error `dest` is left partly filled and **the caller must delete it** (and
/// must not use it). On success every directory is mode 0755, every file 0644 or, if any
/// execute bit was set in the archive, 0755; symlinks stay symlinks and point inside `dest`;
/// hard links become copies.
pub fn extract(tar_gz: &[u8], dest: &Path, limits: &ArchiveLimits) -> Result<(), ArchiveError> {
    extract_within(tar_gz, dest, limits, MAX_REMEMBERED_PATH_BYTES)
}

/// [`extract`] remembering at most `path_budget` bytes of entry paths.
fn extract_within(
    tar_gz: &[u8],
    dest: &Path,
    limits: &ArchiveLimits,
    path_budget: usize,
) -> Result<(), ArchiveError> {
    if !tar_gz.starts_with(&GZIP_MAGIC) {
        return Err(ArchiveError::NotGzip);
    }
    let mut listing = fs::read_dir(dest).map_err(io_error(dest))?;
    if listing.next().is_some() {
        return Err(ArchiveError::DestNotEmpty {
            path: dest.to_path_buf(),
        });
    }

    let cap_hit = Cell::new(false);
    let stream_cap = limits
        .max_unpacked_bytes
        .saturating_add(
            limits
                .max_entries
                .saturating_add(1)
                .saturating_mul(METADATA_BYTES_PER_ENTRY),
        )
        .saturating_add(METADATA_BYTES_SLACK);
    let reader = CappedReader {
        inner: GzDecoder::new(tar_gz),
        remaining: stream_cap,
        cap_hit: &cap_hit,
    };
    let mut archive = tar::Archive::new(reader);
    let mut extractor = Extractor {
        dest,
        limits,
        cap_hit: &cap_hit,
        entries: 0,
        declared_bytes: 0,
        written_bytes: 0,
        dirs: HashSet::new(),
        files: HashSet::new(),
        symlinks: HashSet::new(),
        remembered_bytes: 0,
        path_budget,
        current: String::new(),
        pending: None,
    };
    // Raw: long names and pax records come as entries, which `Extractor::entry` reads itself
    // within bounds (the crate would read them whole into memory first).
    let entries = archive
        .entries()
        .map_err(|source| extractor.read_error(source))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|source| extractor.read_error(source))?;
        extractor.entry(&mut entry)?;
    }
    if extractor.pending.is_some() {
        return Err(ArchiveError::Malformed {
            reason: "a long-name or pax record describes no entry",
        });
    }
    tracing::debug!(
        dest = %dest.display(),
        entries = extractor.entries,
        bytes = extractor.written_bytes,
        "unpacked function archive"
    );
    Ok(())
}

/// Reads through to `inner` until `remaining` bytes have been read, then fails (and sets
/// `cap_hit`) if there is more: bounds the work a gzip bomb can cause, whatever tar says.
struct CappedReader<'a, R> {
    inner: R,
    remaining: u64,
    cap_hit: &'a Cell<bool>,
}

impl<R: Read> Read for CappedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.cap_hit.set(true);
            return Err(io::Error::other("decompressed upload exceeds its size cap"));
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let read = self.inner.read(&mut buf[..want])?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// What one extraction has written so far. `dest` starts empty and only this writes to it, so
/// these sets are a complete picture of what is on disk.
struct Extractor<'a> {
    dest: &'a Path,
    limits: &'a ArchiveLimits,
    cap_hit: &'a Cell<bool>,
    entries: u64,
    declared_bytes: u64,
    written_bytes: u64,
    /// Directories, explicit or created as parents (relative to `dest`).
    dirs: HashSet<PathBuf>,
    /// Regular files: the only valid hard-link targets.
    files: HashSet<PathBuf>,
    /// Symlinks: no later entry may go through one.
    symlinks: HashSet<PathBuf>,
    /// Bytes of the paths held in `dirs`, `files` and `symlinks`, and their bound.
    remembered_bytes: usize,
    path_budget: usize,
    /// Name of the entry being extracted (for errors about limits), cut short.
    current: String,
    /// Long names and pax overrides read for the next entry.
    pending: Option<Extensions>,
}

/// What GNU long-name/long-link and pax records say about the entry that follows them.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    gnu_path: bool,
    gnu_link: bool,
    pax: bool,
}

impl Extractor<'_> {
    fn read_error(&self, source: io::Error) -> ArchiveError {
        if self.cap_hit.get() {
            self.too_large()
        } else {
            ArchiveError::Corrupt { source }
        }
    }

    fn too_large(&self) -> ArchiveError {
        ArchiveError::TooLarge {
            entry: self.current.clone(),
            limit: self.limits.max_unpacked_bytes,
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let kind = entry.header().entry_type();
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            // Describes the next entry; counted as an entry so that no number of them is free.
            return self.extension(entry, kind);
        }
        let ext = self.pending.take().unwrap_or_default();
        let header_path = entry.header().path_bytes();
        let path_bytes: Vec<u8> = ext.path.unwrap_or_else(|| header_path.into_owned());
        let link_bytes: Option<Vec<u8>> = ext
            .link
            .or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()));
        self.current = echo_bytes(&path_bytes);
        if ext.size.is_some_and(|size| size != entry.size()) {
            // The crate frames the data by the header's size; a pax size that disagrees would
            // make this archive mean different things to different tars.
            return Err(ArchiveError::Malformed {
                reason: "a pax size disagrees with its entry's header",
            });
        }
        self.declared_bytes = self.declared_bytes.saturating_add(entry.size());
        if self.declared_bytes > self.limits.max_unpacked_bytes {
            return Err(self.too_large());
        }

        let name = self.current.clone();
        let Some(rel) = entry_path(&path_bytes, &name)? else {
            return Ok(()); // `.` or empty: the destination itself.
        };
        self.check_ancestors(&rel, &name)?;
        if self.files.contains(&rel)
            || self.symlinks.contains(&rel)
            || (self.dirs.contains(&rel) && kind != EntryType::Directory)
        {
            return Err(ArchiveError::Conflict { entry: name });
        }

        match kind {
            EntryType::Directory => self.make_dirs(&rel, true),
            EntryType::Regular | EntryType::Continuous => {
                let mode = entry
                    .header()
                    .mode()
                    .map_err(|source| ArchiveError::Corrupt { source })?;
                self.make_dirs(&rel, false)?;
                self.write_file(&rel, entry, mode & 0o111 != 0)
            }
            EntryType::Symlink => {
                let target = link_bytes.unwrap_or_default();
                check_symlink_target(&rel, &target, &name)?;
                self.make_dirs(&rel, false)?;
                let path = self.dest.join(&rel);
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_error(&path))?;
                self.remember(&rel)?;
                self.symlinks.insert(rel);
                Ok(())
            }
            EntryType::Link => {
                let target = link_bytes.unwrap_or_default();
                let source = self.hard_link_source(&target, &name)?;
                self.make_dirs(&rel, false)?;
                self.copy_file(&source, &rel)
            }
            EntryType::Char => Err(special(name, "character device")),
            EntryType::Block => Err(special(name, "block device")),
            EntryType::Fifo => Err(special(name, "FIFO")),
            EntryType::GNUSparse => Err(special(name, "sparse file")),
            other => Err(special(
                name,
                &format!("tar entry of type `{}`", other.as_byte().escape_ascii()),
            )),
        }
    }

    /// Counts a path about to be remembered against the budget.
    fn remember(&mut self, rel: &Path) -> Result<(), ArchiveError> {
        self.remembered_bytes += rel.as_os_str().len();
        if self.remembered_bytes > self.path_budget {
            return Err(ArchiveError::NamesTooLarge {
                limit: self.path_budget,
            });
        }
        Ok(())
    }

    /// Reads a GNU long-name/long-link or pax record for the next entry, refusing one larger
    /// than its bound before reading any of it.
    fn extension<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
    ) -> Result<(), ArchiveError> {
        let size = entry.size();
        // A GNU name's size counts its terminating NUL.
        let (what, limit, slack) = if kind.is_gnu_longname() {
            ("long name", PATH_MAX as u64, 1)
        } else if kind.is_gnu_longlink() {
            ("long link target", PATH_MAX as u64, 1)
        } else {
            ("pax header", MAX_PAX_BYTES, 0)
        };
        if size > limit + slack {
            return Err(ArchiveError::NameTooLong {
                what,
                len: size,
                limit,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .take(size)
            .read_to_end(&mut data)
            .map_err(|source| self.read_error(source))?;
        if kind.is_pax_global_extensions() {
            return Ok(()); // Defaults for every later entry: nothing extraction uses.
        }
        let ext = self.pending.get_or_insert_with(Extensions::default);
        let twice = ArchiveError::Malformed {
            reason: "two long-name or pax records of one kind describe the same entry",
        };
        if kind.is_gnu_longname() || kind.is_gnu_longlink() {
            // GNU terminates the name with a NUL (counted in the size).
            while data.last() == Some(&0) {
                data.pop();
            }
            let (slot, seen) = if kind.is_gnu_longname() {
                (&mut ext.path, &mut ext.gnu_path)
            } else {
                (&mut ext.link, &mut ext.gnu_link)
            };
            if std::mem::replace(seen, true) {
                return Err(twice);
            }
            // A pax value, if any, takes precedence, as in other tars.
            if slot.is_none() || !ext.pax {
                *slot = Some(data);
            }
            return Ok(());
        }
        if std::mem::replace(&mut ext.pax, true) {
            return Err(twice);
        }
        for record in tar::PaxExtensions::new(&data) {
            let record = record.map_err(|_| ArchiveError::Malformed {
                reason: "a pax record is not `length key=value`",
            })?;
            let value = record.value_bytes();
            match record.key_bytes() {
                b"path" | b"linkpath" if value.len() > PATH_MAX => {
                    return Err(ArchiveError::NameTooLong {
                        what: if record.key_bytes() == b"path" {
                            "pax path"
                        } else {
                            "pax link target"
                        },
                        len: value.len() as u64,
                        limit: PATH_MAX as u64,
                    })
                }
                b"path" => ext.path = Some(value.to_vec()),
                b"linkpath" => ext.link = Some(value.to_vec()),
                b"size" => {
                    let size = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or(ArchiveError::Malformed {
                            reason: "a pax size is not a number",
                        })?;
                    ext.size = Some(size);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Refuses `rel` if one of its ancestors is a symlink or a file written earlier.
    fn check_ancestors(&self, rel: &Path, name: &str) -> Result<(), ArchiveError> {
        for ancestor in rel.ancestors().skip(1) {
            if self.symlinks.contains(ancestor) {
                return Err(ArchiveError::ThroughSymlink {
                    entry: name.to_owned(),
                    link: lossy(ancestor.as_os_str().as_bytes()),
                });
            }
            if self.files.contains(ancestor) {
                return Err(ArchiveError::Conflict {
                    entry: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Creates the parent directories of `rel`, and `rel` itself if `including_self`. Callers
    /// have run [`Self::check_ancestors`], so every missing one is absent from disk too.
    fn make_dirs(&mut self, rel: &Path, including_self: bool) -> Result<(), ArchiveError> {
        let mut missing: Vec<&Path> = rel
            .ancestors()
            .skip(usize::from(!including_self))
            .filter(|dir| !dir.as_os_str().is_empty() && !self.dirs.contains(*dir))
            .collect();
        missing.reverse();
        for dir in missing {
            let path = self.dest.join(dir);
            fs::DirBuilder::new()
                .mode(DIR_MODE)
                .create(&path)
                .map_err(io_error(&path))?;
            // The umask may have cleared bits; `path` is the directory just made.
            fs::set_permissions(&path, Permissions::from_mode(DIR_MODE))
                .map_err(io_error(&path))?;
            self.remember(dir)?;
            self.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        executable: bool,
    ) -> Result<(), ArchiveError> {
        let path = self.dest.join(rel);
        let mode = if executable {
            EXEC_FILE_MODE
        } else {
            FILE_MODE
        };
        let mut file = create_file(&path, mode)?;
        self.remember(rel)?;
        self.files.insert(rel.to_path_buf());
        // Sizes in headers can lie (sparse maps, pax overrides): count what is really written.
        let budget = self
            .limits
            .max_unpacked_bytes
            .saturating_sub(self.written_bytes);
        let mut data = entry.take(budget.saturating_add(1));
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let read = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.read_error(err)),
            };
            written += read as u64;
            if written > budget {
                return Err(self.too_large());
            }
            file.write_all(&buf[..read]).map_err(io_error(&path))?;
        }
        self.written_bytes += written;
        Ok(())
    }

    /// Resolves a hard link's target (relative to the archive root) to a file written earlier.
    fn hard_link_source(&self, target: &[u8], name: &str) -> Result<PathBuf, ArchiveError> {
        let target_name = lossy(target);
        let escapes = || ArchiveError::LinkEscapes {
            entry: name.to_owned(),
            target: target_name.clone(),
        };
        let mut source = PathBuf::new();
        for component in Path::new(OsStr::from_bytes(target)).components() {
            match component {
                Component::Normal(part) => source.push(part),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                    return Err(escapes())
                }
            }
        }
        if !self.files.contains(&source) {
            return Err(ArchiveError::HardLinkTarget {
                entry: name.to_owned(),
                target: target_name,
            });
        }
        Ok(source)
    }

    fn copy_file(&mut self, source: &Path, rel: &Path) -> Result<(), ArchiveError> {
        let from = self.dest.join(source);
        let mut input = open_nofollow(&from).map_err(io_error(&from))?;
        let meta = input.metadata().map_err(io_error(&from))?;
        let size = meta.len();
        if self.written_bytes.saturating_add(size) > self.limits.max_unpacked_bytes {
            return Err(self.too_large());
        }
        let path = self.dest.join(rel);
        let mut output = create_file(&path, meta.permissions().mode() & 0o777)?;
        self.remember(rel)?;
        self.files.insert(rel.to_path_buf());
        let copied =
            io::copy(&mut (&mut input).take(size), &mut output).map_err(io_error(&path))?;
        self.written_bytes += copied;
        Ok(())
    }
}

/// Turns an entry's path into a path relative to the destination, refusing absolute paths and
/// `..`. Returns `None` for the destination itself (`.`, `./`, empty).
fn entry_path(bytes: &[u8], name: &str) -> Result<Option<PathBuf>, ArchiveError> {
    let mut rel = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(bytes)).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::AbsolutePath {
                    entry: name.to_owned(),
                })
            }
            Component::ParentDir => {
                return Err(ArchiveError::ParentDir {
                    entry: name.to_owned(),
                })
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Accepts a symlink target only if it is relative, its `..` components all come first, and
/// they climb no higher than the destination from the link's directory.
///
/// Resolving `..` lexically is only sound if no symlink is crossed before it: with `d/up -> ..`,
/// the target `d/up/..` looks like `d` but is the destination's parent. With every `..` leading,
/// the climb crosses only real directories (the link's ancestors), and every name after it
/// resolves inside the destination, symlinks included, by the same rule applied to them.
fn check_symlink_target(rel: &Path, target: &[u8], name: &str) -> Result<(), ArchiveError> {
    let target_name = lossy(target);
    let escapes = || ArchiveError::LinkEscapes {
        entry: name.to_owned(),
        target: target_name.clone(),
    };
    if target.is_empty() {
        return Err(escapes());
    }
    let mut depth = rel.components().count().saturating_sub(1);
    let mut seen_name = false;
    for component in Path::new(OsStr::from_bytes(target)).components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
            Component::CurDir => {}
            Component::ParentDir if seen_name => {
                return Err(ArchiveError::LinkNotNormal {
                    entry: name.to_owned(),
                    target: target_name,
                })
            }
            Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escapes)?,
            Component::Normal(_) => seen_name = true,
        }
    }
    Ok(())
}

/// Creates a new file with exactly `mode`, refusing to reuse or follow anything already there.
fn create_file(path: &Path, mode: u32) -> Result<File, ArchiveError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(O_NOFOLLOW)
        .open(path)
        .map_err(io_error(path))?;
    // The umask may have cleared bits; fchmod on the handle just opened.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_error(path))?;
    Ok(file)
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW)
        .open(path)
}

fn special(entry: String, kind: &str) -> ArchiveError {
    ArchiveError::SpecialFile {
        entry,
        kind: kind.to_owned(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An entry name or link target as error messages show it: lossy UTF-8, cut short.
fn lossy(bytes: &[u8]) -> String {
    echo_bytes(bytes)
}

/// Domain separation for [`tree_hash`]; bump the version if the encoding changes.
const TREE_HASH_TAG: &[u8] = b"kindling-tree-v1\0";

/// The content hash of a function directory: lowercase hex SHA-256 over a canonical walk.
///
/// The walk visits entries depth-first, siblings sorted by name bytes, never following
/// symlinks. Each entry contributes its kind, its path relative to `dir`, and for a file its
/// execute bit and the SHA-256 of its content, for a symlink its target. Timestamps, owners and
/// other permission bits are left out, so two extractions of the same content hash the same
/// whatever the order of the archive's entries. Sockets, FIFOs and devices are an error.
pub fn tree_hash(dir: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(TREE_HASH_TAG);
    for WalkEntry { rel, meta } in walk(dir)? {
        let path = dir.join(&rel);
        let file_type = meta.file_type();
        let tag: &[u8] = if file_type.is_dir() {
            b"d"
        } else if file_type.is_file() {
            b"f"
        } else if file_type.is_symlink() {
            b"l"
        } else {
            return Err(unsupported_file(&path));
        };
        hasher.update(tag);
        update_with_len(&mut hasher, rel.as_os_str().as_bytes());
        if file_type.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            hasher.update([u8::from(executable)]);
            let mut content = Sha256::new();
            io::copy(&mut open_nofollow(&path)?, &mut content)?;
            hasher.update(content.finalize());
        } else if file_type.is_symlink() {
            update_with_len(&mut hasher, fs::read_link(&path)?.as_os_str().as_bytes());
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Packs the contents of `dir` (not `dir` itself) into a `.tar.gz` upload.
///
/// Paths are relative, entries come in [`tree_hash`]'s order, and metadata is normalized
/// (mtime 0, uid/gid 0, directories 0755, files 0644 or 0755), so the same tree always packs
/// to the same bytes. Symlinks are stored as symlinks; sockets, FIFOs and devices are an error.
pub fn pack_dir(dir: &Path) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for WalkEntry { rel, meta } in walk(dir)? {
        let path = dir.join(&rel);
        let file_type = meta.file_type();
        let mut header = Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        if file_type.is_dir() {
            header.set_entry_type(EntryType::Directory);
            header.set_mode(DIR_MODE);
            builder.append_data(&mut header, &rel, io::empty())?;
        } else if file_type.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(EntryType::Regular);
            header.set_mode(if executable {
                EXEC_FILE_MODE
            } else {
                FILE_MODE
            });
            header.set_size(meta.len());
            let content = ExactReader {
                inner: open_nofollow(&path)?.take(meta.len()),
                remaining: meta.len(),
            };
            builder.append_data(&mut header, &rel, content)?;
        } else if file_type.is_symlink() {
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            builder.append_link(&mut header, &rel, fs::read_link(&path)?)?;
        } else {
            return Err(unsupported_file(&path));
        }
    }
    builder.into_inner()?.finish()
}

/// Yields exactly `remaining` bytes or fails: a file that shrinks while being packed would
/// otherwise leave an entry shorter than its header says and corrupt the archive.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being packed",
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

struct WalkEntry {
    rel: PathBuf,
    meta: fs::Metadata,
}

/// Every entry under `root`, depth-first with siblings sorted by name bytes, without following
/// symlinks. Iterative, so a deep tree cannot exhaust the stack.
fn walk(root: &Path) -> io::Result<Vec<WalkEntry>> {
    let mut out = Vec::new();
    let mut stack = sorted_children(root, Path::new(""))?;
    while let Some(rel) = stack.pop() {
        let meta = fs::symlink_metadata(root.join(&rel))?;
        if meta.is_dir() {
            stack.extend(sorted_children(root, &rel)?);
        }
        out.push(WalkEntry { rel, meta });
    }
    Ok(out)
}

/// The children of `root/rel` as paths relative to `root`, in reverse name order (ready to be
/// popped off a stack in name order).
fn sorted_children(root: &Path, rel: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names = fs::read_dir(root.join(rel))?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names.into_iter().map(|name| rel.join(name)).collect())
}

fn unsupported_file(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("`{}` is not a file, directory or symlink", path.display()),
    )
}

fn update_with_len(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use tempfile::TempDir;

    /// Builds archives byte by byte, so names the `tar` crate would refuse can be written.
    struct Hostile {
        builder: tar::Builder<Vec<u8>>,
    }

    impl Hostile {
        fn new() -> Self {
            Self {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        fn raw(mut self, name: &str, kind: EntryType, mode: u32, link: &str, data: &[u8]) -> Self {
            let mut header = Header::new_gnu();
            let field = &mut header.as_old_mut().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            header.set_link_name_literal(link).unwrap();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.builder.append(&header, data).unwrap();
            self
        }

        fn file(self, name: &str, data: &str) -> Self {
            self.raw(name, EntryType::Regular, 0o644, "", data.as_bytes())
        }

        fn dir(self, name: &str) -> Self {
            self.raw(name, EntryType::Directory, 0o755, "", b"")
        }

        fn symlink(self, name: &str, target: &str) -> Self {
            self.raw(name, EntryType::Symlink, 0o777, target, b"")
        }

        fn hard_link(self, name: &str, target: &str) -> Self {
            self.raw(name, EntryType::Link, 0o644, target, b"")
        }

        fn gz(self) -> Vec<u8> {
            gzip(&self.builder.into_inner().unwrap())
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// A temporary directory holding only `dest`, so writes outside `dest` can be seen.
    struct Sandbox {
        root: TempDir,
    }

    impl Sandbox {
        fn new() -> Self {
            let root = tempfile::tempdir().unwrap();
            fs::create_dir(root.path().join("dest")).unwrap();
            Self { root }
        }

        fn dest(&self) -> PathBuf {
            self.root.path().join("dest")
        }

        fn extract(&self, tar_gz: &[u8], limits: &ArchiveLimits) -> Result<(), ArchiveError> {
            extract(tar_gz, &self.dest(), limits)
        }

        fn assert_nothing_outside(&self) {
            let names: Vec<_> = fs::read_dir(self.root.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            assert_eq!(names, ["dest"], "something was written beside dest");
        }
    }

    fn rejected(tar_gz: &[u8]) -> ArchiveError {
        rejected_with(tar_gz, &ArchiveLimits::default())
    }

    fn rejected_with(tar_gz: &[u8], limits: &ArchiveLimits) -> ArchiveError {
        let sandbox = Sandbox::new();
        let err = sandbox.extract(tar_gz, limits).unwrap_err();
        sandbox.assert_nothing_outside();
        err
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn refuses_absolute_path() {
        let err = rejected(&Hostile::new().file("/tmp/kindling-evil", "x").gz());
        assert!(
            matches!(&err, ArchiveError::AbsolutePath { entry } if entry == "/tmp/kindling-evil")
        );
        assert!(err.to_string().contains("`/tmp/kindling-evil`"));
    }

    #[test]
    fn refuses_parent_dir() {
        let err = rejected(&Hostile::new().file("../evil", "x").gz());
        assert!(matches!(&err, ArchiveError::ParentDir { entry } if entry == "../evil"));
        assert_eq!(
            err.to_string(),
            "archive entry `../evil` leaves the function directory"
        );
    }

    #[test]
    fn refuses_parent_dir_after_a_name() {
        let err = rejected(&Hostile::new().dir("a").file("a/../../x", "x").gz());
        assert!(matches!(err, ArchiveError::ParentDir { entry } if entry == "a/../../x"));
        let err = rejected(&Hostile::new().file("a/../x", "x").gz());
        assert!(matches!(err, ArchiveError::ParentDir { .. }));
    }

    #[test]
    fn refuses_absolute_symlink() {
        let err = rejected(&Hostile::new().symlink("etc", "/etc").gz());
        assert!(
            matches!(&err, ArchiveError::LinkEscapes { entry, target } if entry == "etc" && target == "/etc")
        );
    }

    #[test]
    fn refuses_symlink_to_parent() {
        let err = rejected(&Hostile::new().symlink("up", "..").file("up/evil", "x").gz());
        assert!(matches!(err, ArchiveError::LinkEscapes { entry, .. } if entry == "up"));
        let err = rejected(&Hostile::new().symlink("a/b/up", "../../../x").gz());
        assert!(matches!(err, ArchiveError::LinkEscapes { .. }));
    }

    #[test]
    fn refuses_symlink_climbing_through_a_name() {
        // `d/up -> ..` is fine, but `d/up/..` is physically dest's parent.
        let err = rejected(
            &Hostile::new()
                .symlink("d/up", "..")
                .symlink("l", "d/up/..")
                .gz(),
        );
        assert!(matches!(err, ArchiveError::LinkNotNormal { entry, .. } if entry == "l"));
    }

    #[test]
    fn refuses_entries_through_a_symlink() {
        let err = rejected(
            &Hostile::new()
                .dir("sub")
                .symlink("a", "sub")
                .file("a/f", "x")
                .gz(),
        );
        assert!(
            matches!(&err, ArchiveError::ThroughSymlink { entry, link } if entry == "a/f" && link == "a")
        );

        let err = rejected(&Hostile::new().symlink("a", ".").file("a/../x", "x").gz());
        assert!(matches!(err, ArchiveError::ParentDir { .. }));
        let err = rejected(&Hostile::new().symlink("a", ".").dir("a/x").gz());
        assert!(matches!(err, ArchiveError::ThroughSymlink { .. }));
    }

    #[test]
    fn refuses_file_over_a_symlink() {
        let err = rejected(&Hostile::new().symlink("a", "b").file("a", "x").gz());
        assert!(matches!(err, ArchiveError::Conflict { entry } if entry == "a"));
    }

    #[test]
    fn refuses_escaping_hard_links() {
        let err = rejected(&Hostile::new().hard_link("pw", "/etc/passwd").gz());
        assert!(matches!(err, ArchiveError::LinkEscapes { entry, .. } if entry == "pw"));
        let err = rejected(&Hostile::new().hard_link("pw", "../../etc/passwd").gz());
        assert!(matches!(err, ArchiveError::LinkEscapes { .. }));
        let err = rejected(
            &Hostile::new()
                .hard_link("early", "late")
                .file("late", "x")
                .gz(),
        );
        assert!(matches!(err, ArchiveError::HardLinkTarget { entry, .. } if entry == "early"));
        let err = rejected(&Hostile::new().symlink("s", "f").hard_link("h", "s").gz());
        assert!(matches!(err, ArchiveError::HardLinkTarget { .. }));
        let err = rejected(&Hostile::new().dir("d").hard_link("h", "d").gz());
        assert!(matches!(err, ArchiveError::HardLinkTarget { .. }));
    }

    #[test]
    fn refuses_special_files() {
        let err = rejected(
            &Hostile::new()
                .raw("tty", EntryType::Char, 0o666, "", b"")
                .gz(),
        );
        assert!(
            matches!(&err, ArchiveError::SpecialFile { entry, kind } if entry == "tty" && kind == "character device")
        );
        let err = rejected(
            &Hostile::new()
                .raw("sda", EntryType::Block, 0o666, "", b"")
                .gz(),
        );
        assert!(matches!(err, ArchiveError::SpecialFile { .. }));
        let err = rejected(
            &Hostile::new()
                .raw("pipe", EntryType::Fifo, 0o666, "", b"")
                .gz(),
        );
        assert!(
            matches!(&err, ArchiveError::SpecialFile { kind, .. } if kind == "FIFO"),
            "{err}"
        );
    }

    #[test]
    fn refuses_duplicate_files() {
        let err = rejected(&Hostile::new().file("f", "one").file("f", "two").gz());
        assert!(matches!(err, ArchiveError::Conflict { entry } if entry == "f"));
        let err = rejected(&Hostile::new().file("f", "one").file("f/g", "two").gz());
        assert!(matches!(err, ArchiveError::Conflict { .. }));
        let err = rejected(&Hostile::new().dir("d").file("d", "x").gz());
        assert!(matches!(err, ArchiveError::Conflict { .. }));
    }

    #[test]
    fn refuses_too_large() {
        let limits = ArchiveLimits {
            max_unpacked_bytes: 10,
            max_entries: 100,
        };
        let err = rejected_with(&Hostile::new().file("big", "0123456789a").gz(), &limits);
        assert!(matches!(err, ArchiveError::TooLarge { limit: 10, .. }));
        let two = Hostile::new().file("a", "012345").file("b", "012345").gz();
        assert!(matches!(
            rejected_with(&two, &limits),
            ArchiveError::TooLarge { .. }
        ));
    }

    /// A GNU long-name record (`L`) declaring `size` bytes, `data` of them present.
    fn long_name_record(kind: EntryType, size: u64, data: &[u8]) -> Vec<u8> {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn refuses_long_name_bombs_before_reading_them() {
        // Declares 600 MB (the C9 bomb); only the header is there: refused from the header.
        for kind in [EntryType::GNULongName, EntryType::GNULongLink] {
            let tar = long_name_record(kind, 600 << 20, b"aaaa");
            let err = rejected(&gzip(&tar));
            assert!(
                matches!(err, ArchiveError::NameTooLong { len, limit: 4096, .. } if len == 600 << 20),
                "{err}"
            );
            assert!(err.to_string().len() < 120, "{err}");
        }
        // One byte past PATH_MAX plus its NUL.
        let mut name = vec![b'a'; PATH_MAX + 1];
        name.push(0);
        let mut tar = long_name_record(EntryType::GNULongName, name.len() as u64, &name);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
        tar.extend(Hostile::new().file("x", "x").builder.into_inner().unwrap());
        assert!(matches!(
            rejected(&gzip(&tar)),
            ArchiveError::NameTooLong { .. }
        ));
    }

    #[test]
    fn long_names_up_to_path_max_still_work() {
        let component = "d".repeat(50);
        // Far past tar's 100 bytes; the destination's own path must fit in PATH_MAX too.
        let deep = format!("{}/f.py", [component.as_str(); 75].join("/"));
        assert!(deep.len() > 3800 && deep.len() <= PATH_MAX);
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(2);
        builder.append_data(&mut header, &deep, &b"ok"[..]).unwrap();
        let sandbox = Sandbox::new();
        sandbox
            .extract(
                &gzip(&builder.into_inner().unwrap()),
                &ArchiveLimits::default(),
            )
            .unwrap();
        assert_eq!(
            fs::read_to_string(sandbox.dest().join(&deep)).unwrap(),
            "ok"
        );
    }

    #[test]
    fn pax_paths_are_used_and_bounded() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("path", &b"from-pax.txt"[..])])
            .unwrap();
        let mut header = Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(3);
        builder
            .append_data(&mut header, "short", &b"pax"[..])
            .unwrap();
        let sandbox = Sandbox::new();
        sandbox
            .extract(
                &gzip(&builder.into_inner().unwrap()),
                &ArchiveLimits::default(),
            )
            .unwrap();
        assert_eq!(
            fs::read_to_string(sandbox.dest().join("from-pax.txt")).unwrap(),
            "pax"
        );

        let long = vec![b'p'; PATH_MAX + 1];
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("path", &long[..])])
            .unwrap();
        let err = rejected(&gzip(&builder.into_inner().unwrap()));
        assert!(
            matches!(
                err,
                ArchiveError::NameTooLong {
                    what: "pax path",
                    ..
                }
            ),
            "{err}"
        );

        // A pax header declaring 600 MB: refused from its header.
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_size(600 << 20);
        header.set_cksum();
        let err = rejected(&gzip(header.as_bytes()));
        assert!(
            matches!(
                err,
                ArchiveError::NameTooLong {
                    what: "pax header",
                    ..
                }
            ),
            "{err}"
        );

        // A pax size that disagrees with the header's.
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("size", &b"1"[..])])
            .unwrap();
        let mut header = Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(3);
        builder.append_data(&mut header, "f", &b"abc"[..]).unwrap();
        let err = rejected(&gzip(&builder.into_inner().unwrap()));
        assert!(matches!(err, ArchiveError::Malformed { .. }), "{err}");
    }

    #[test]
    fn refuses_a_record_describing_nothing_and_sparse_files() {
        let mut name = b"dangling".to_vec();
        name.push(0);
        let mut tar = long_name_record(EntryType::GNULongName, name.len() as u64, &name);
        tar.resize(1024 * 3, 0);
        assert!(matches!(
            rejected(&gzip(&tar)),
            ArchiveError::Malformed { .. }
        ));
        let err = rejected(
            &Hostile::new()
                .raw("holes", EntryType::GNUSparse, 0o644, "", b"")
                .gz(),
        );
        assert!(matches!(err, ArchiveError::SpecialFile { .. }), "{err}");
    }

    #[test]
    fn error_messages_cut_long_names() {
        let name = format!("{}/../x", "n".repeat(4000));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(1);
        header.set_entry_type(EntryType::Regular);
        // `append_data` refuses `..`; write the long name record by hand.
        let mut long = name.clone().into_bytes();
        long.push(0);
        let mut tar = long_name_record(EntryType::GNULongName, long.len() as u64, &long);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
        builder.append_data(&mut header, "x", &b"x"[..]).unwrap();
        tar.extend(builder.into_inner().unwrap());
        let err = rejected(&gzip(&tar));
        assert!(matches!(err, ArchiveError::ParentDir { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.len() < 400, "{} bytes", msg.len());
        assert!(msg.contains("(4005 bytes in all)"), "{msg}");
    }

    #[test]
    fn bounds_the_paths_it_remembers() {
        // Each entry a fresh chain of 9 directories with long names: ~5 KB of remembered
        // paths per entry, so a budget of 64 KiB is spent after about 13 entries.
        let component = "d".repeat(100);
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..30 {
            let path = format!("{i}/{}/f", [component.as_str(); 9].join("/"));
            let mut header = Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(0);
            builder
                .append_data(&mut header, &path, io::empty())
                .unwrap();
        }
        let sandbox = Sandbox::new();
        let tar_gz = gzip(&builder.into_inner().unwrap());
        let err = extract_within(
            &tar_gz,
            &sandbox.dest(),
            &ArchiveLimits::default(),
            64 << 10,
        )
        .unwrap_err();
        assert!(
            matches!(err, ArchiveError::NamesTooLarge { limit: 65536 }),
            "{err}"
        );
        assert!(extract_within(
            &tar_gz,
            &Sandbox::new().dest(),
            &ArchiveLimits::default(),
            1 << 20
        )
        .is_ok());
    }

    #[test]
    fn refuses_too_many_entries() {
        let limits = ArchiveLimits {
            max_unpacked_bytes: 1000,
            max_entries: 2,
        };
        let archive = Hostile::new()
            .file("a", "")
            .file("b", "")
            .file("c", "")
            .gz();
        let err = rejected_with(&archive, &limits);
        assert!(matches!(err, ArchiveError::TooManyEntries { limit: 2 }));
    }

    #[test]
    fn refuses_non_gzip_and_corrupt_uploads() {
        assert!(matches!(rejected(b"hello"), ArchiveError::NotGzip));
        assert!(matches!(rejected(b""), ArchiveError::NotGzip));
        assert!(matches!(
            rejected(&gzip(&[0xff; 1024])),
            ArchiveError::Corrupt { .. }
        ));
        let good = Hostile::new().file("f", &"x".repeat(5000)).gz();
        assert!(matches!(
            rejected(&good[..good.len() / 2]),
            ArchiveError::Corrupt { .. }
        ));
    }

    #[test]
    fn refuses_non_empty_destination() {
        let sandbox = Sandbox::new();
        fs::write(sandbox.dest().join("old"), "x").unwrap();
        let err = sandbox
            .extract(
                &Hostile::new().file("f", "x").gz(),
                &ArchiveLimits::default(),
            )
            .unwrap_err();
        assert!(matches!(err, ArchiveError::DestNotEmpty { .. }));
    }

    #[test]
    fn extracts_tree_with_normalized_modes() {
        let archive = Hostile::new()
            .raw("./", EntryType::Directory, 0o700, "", b"")
            .raw("./bin/", EntryType::Directory, 0o700, "", b"")
            .raw("./bin/run", EntryType::Regular, 0o700, "", b"#!/bin/sh\n")
            .raw("a/b/c.txt", EntryType::Regular, 0o600, "", b"hello")
            .symlink("lib/link", "../a/b/c.txt")
            .symlink("a/b/up", "..")
            .hard_link("copy.txt", "./a/b/c.txt")
            .dir("a")
            .gz();
        let sandbox = Sandbox::new();
        sandbox
            .extract(&archive, &ArchiveLimits::default())
            .unwrap();
        sandbox.assert_nothing_outside();
        let dest = sandbox.dest();

        assert_eq!(mode(&dest.join("bin")), 0o755);
        assert_eq!(mode(&dest.join("bin/run")), 0o755);
        assert_eq!(mode(&dest.join("a/b")), 0o755);
        assert_eq!(mode(&dest.join("a/b/c.txt")), 0o644);
        assert_eq!(fs::read_to_string(dest.join("lib/link")).unwrap(), "hello");
        assert_eq!(
            fs::read_link(dest.join("lib/link")).unwrap(),
            Path::new("../a/b/c.txt")
        );
        assert_eq!(
            fs::read_to_string(dest.join("a/b/up/b/c.txt")).unwrap(),
            "hello"
        );
        assert_eq!(fs::read_to_string(dest.join("copy.txt")).unwrap(), "hello");
        assert!(fs::symlink_metadata(dest.join("copy.txt"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn tree_hash_ignores_entry_order_and_mtimes() {
        let one = Sandbox::new();
        one.extract(
            &Hostile::new()
                .dir("d")
                .file("d/f", "content")
                .raw("run", EntryType::Regular, 0o755, "", b"#!")
                .symlink("l", "d/f")
                .gz(),
            &ArchiveLimits::default(),
        )
        .unwrap();
        let mut other_order = Hostile::new();
        for (name, data, mode) in [("run", "#!", 0o700), ("d/f", "content", 0o600)] {
            let mut header = Header::new_gnu();
            header.set_mode(mode);
            header.set_mtime(1_700_000_000);
            header.set_size(data.len() as u64);
            other_order
                .builder
                .append_data(&mut header, name, data.as_bytes())
                .unwrap();
        }
        let two = Sandbox::new();
        two.extract(
            &other_order.symlink("l", "d/f").gz(),
            &ArchiveLimits::default(),
        )
        .unwrap();

        let hash = tree_hash(&one.dest()).unwrap();
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, tree_hash(&two.dest()).unwrap());

        fs::write(two.dest().join("d/f"), "Content").unwrap();
        assert_ne!(hash, tree_hash(&two.dest()).unwrap());
        fs::write(two.dest().join("d/f"), "content").unwrap();
        assert_eq!(hash, tree_hash(&two.dest()).unwrap());
        fs::set_permissions(two.dest().join("run"), Permissions::from_mode(0o644)).unwrap();
        assert_ne!(hash, tree_hash(&two.dest()).unwrap());
    }

    #[test]
    fn tree_hash_sees_symlink_targets_and_names() {
        let dir = tempfile::tempdir().unwrap();
        symlink("a", dir.path().join("l")).unwrap();
        let first = tree_hash(dir.path()).unwrap();
        fs::remove_file(dir.path().join("l")).unwrap();
        symlink("b", dir.path().join("l")).unwrap();
        assert_ne!(first, tree_hash(dir.path()).unwrap());
        fs::rename(dir.path().join("l"), dir.path().join("m")).unwrap();
        symlink("a", dir.path().join("l")).unwrap();
        fs::remove_file(dir.path().join("m")).unwrap();
        assert_eq!(first, tree_hash(dir.path()).unwrap());
    }

    #[test]
    fn pack_dir_round_trips() {
        let src = tempfile::tempdir().unwrap();
        let root = src.path();
        fs::create_dir_all(root.join("pkg/sub")).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(root.join("f.py"), "def f(event): return event\n").unwrap();
        fs::write(root.join("pkg/sub/data.bin"), [0u8, 1, 2, 255]).unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), Permissions::from_mode(0o700)).unwrap();
        let long = "n".repeat(150);
        fs::write(root.join("pkg").join(&long), "long name").unwrap();
        symlink("../f.py", root.join("pkg/link")).unwrap();

        let packed = pack_dir(root).unwrap();
        assert_eq!(
            packed,
            pack_dir(root).unwrap(),
            "pack_dir is not deterministic"
        );

        let sandbox = Sandbox::new();
        sandbox.extract(&packed, &ArchiveLimits::default()).unwrap();
        sandbox.assert_nothing_outside();
        let dest = sandbox.dest();
        assert_eq!(tree_hash(root).unwrap(), tree_hash(&dest).unwrap());
        assert!(dest.join("empty").is_dir());
        assert_eq!(mode(&dest.join("run.sh")), 0o755);
        assert_eq!(
            fs::read_link(dest.join("pkg/link")).unwrap(),
            Path::new("../f.py")
        );

        let mut archive = tar::Archive::new(GzDecoder::new(&packed[..]));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                assert_eq!(entry.header().mtime().unwrap(), 0);
                assert_eq!(entry.header().uid().unwrap(), 0);
                lossy(&entry.path_bytes())
            })
            .collect();
        let expected = [
            "empty".to_owned(),
            "f.py".to_owned(),
            "pkg".to_owned(),
            "pkg/link".to_owned(),
            format!("pkg/{long}"),
            "pkg/sub".to_owned(),
            "pkg/sub/data.bin".to_owned(),
            "run.sh".to_owned(),
        ];
        assert_eq!(names, expected);
    }
}
