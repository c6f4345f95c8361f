//! Files this process (root, on a node whose directories pods may share) writes and reads
//! back: never through a planted symbolic link, never into a file someone else owns or
//! can write, private when created (files 0600, directories 0700), and read back with a
//! bound. `record --out`, `top --log-file`, the debug event log and the OAP spool all
//! open their files here.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a path was not opened.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0} is a symbolic link: not followed (give the real path)")]
    Symlink(PathBuf),
    #[error("{path} belongs to uid {owner}, not to this process (uid {euid}): refusing to use someone else's file")]
    Foreign {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("{path} is writable by group or others (mode {mode:04o}): refusing to use it (chmod go-w, or remove it)")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path} has {links} hard links: refusing to write to a file that is also elsewhere")]
    Linked { path: PathBuf, links: u64 },
    #[error("{path} is {what}, not a regular file")]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{path} is {size} bytes, more than the {max} expected")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

impl FileError {
    fn io(path: &Path, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ELOOP) => return Self::Symlink(path.to_path_buf()),
            Some(libc::EISDIR) => {
                return Self::NotRegular {
                    path: path.to_path_buf(),
                    what: "a directory",
                }
            }
            _ => {}
        }
        Self::Io {
            path: path.to_path_buf(),
            err,
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        _ => "a regular file",
    }
}

/// Open flags for every file here: the last component is never a symbolic link, and
/// opening a FIFO or a device does not block (cleared again once the file is checked).
const FLAGS: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK;

fn clear_nonblock(f: &File, path: &Path) -> Result<(), FileError> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 {
            fl
        } else {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        return Err(FileError::io(path, io::Error::last_os_error()));
    }
    Ok(())
}

/// A file we did not just create may be written if it is ours and only ours: a regular
/// file or FIFO owned by this process's uid, not writable by group or others, with no
/// other hard link; or a character device (`/dev/null`, `/dev/full`, a terminal: making
/// one takes CAP_MKNOD, and appending to it clobbers no file).
fn check_existing(f: &File, path: &Path) -> Result<(), FileError> {
    let md = f.metadata().map_err(|e| FileError::io(path, e))?;
    let fmt = md.mode() & libc::S_IFMT;
    match fmt {
        libc::S_IFCHR => return Ok(()),
        libc::S_IFREG | libc::S_IFIFO => {}
        _ => {
            return Err(FileError::NotRegular {
                path: path.to_path_buf(),
                what: kind_name(md.mode()),
            })
        }
    }
    check_owner(&md, path)?;
    if fmt == libc::S_IFREG && md.nlink() > 1 {
        return Err(FileError::Linked {
            path: path.to_path_buf(),
            links: md.nlink(),
        });
    }
    Ok(())
}

fn check_owner(md: &std::fs::Metadata, path: &Path) -> Result<(), FileError> {
    let me = euid();
    if md.uid() != me {
        return Err(FileError::Foreign {
            path: path.to_path_buf(),
            owner: md.uid(),
            euid: me,
        });
    }
    if md.mode() & 0o022 != 0 {
        return Err(FileError::Writable {
            path: path.to_path_buf(),
            mode: md.mode() & 0o7777,
        });
    }
    Ok(())
}

/// A new file at `path`, mode 0600 whatever the umask; fails if anything (a symbolic
/// link included) is already there.
pub fn create_new(path: &Path) -> Result<File, FileError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(FLAGS)
        .open(path)
        .map_err(|e| FileError::io(path, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| FileError::io(path, e))?;
    clear_nonblock(&f, path)?;
    Ok(f)
}

/// `path` opened for appending: created (0600) if absent; if present, only when it is
/// ours alone (see `check_existing`). A symbolic link is refused, never followed.
pub fn open_append(path: &Path) -> Result<File, FileError> {
    // Created exclusively, or else opened as it is: a file removed in between is retried.
    for _ in 0..4 {
        match OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(FLAGS)
            .open(path)
        {
            Ok(f) => {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| FileError::io(path, e))?;
                clear_nonblock(&f, path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FileError::io(path, e)),
        }
        match OpenOptions::new()
            .append(true)
            .custom_flags(FLAGS)
            .open(path)
        {
            Ok(f) => {
                check_existing(&f, path)?;
                clear_nonblock(&f, path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FileError::io(path, e)),
        }
    }
    Err(FileError::io(
        path,
        io::Error::other("created and removed again repeatedly by someone else"),
    ))
}

/// 64 unpredictable bits (the kernel's random source; time and pid if it fails).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// A new temporary file `<dir>/<stem>.<random>.tmp` (0600, created exclusively, so
/// nothing planted at a guessed name is ever opened); returns it and its path.
pub fn create_temp(dir: &Path, stem: &str) -> Result<(File, PathBuf), FileError> {
    let mut last = None;
    for _ in 0..16 {
        let path = dir.join(format!("{stem}.{:016x}.tmp", random_u64()));
        match create_new(&path) {
            Ok(f) => return Ok((f, path)),
            Err(FileError::Io { err, .. }) if err.kind() == io::ErrorKind::AlreadyExists => {
                last = Some(err)
            }
            Err(FileError::Symlink(_)) => last = Some(io::Error::from_raw_os_error(libc::EEXIST)),
            Err(e) => return Err(e),
        }
    }
    Err(FileError::io(
        dir,
        last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EEXIST)),
    ))
}

/// A regular file of ours opened for reading, and what it is: not a symbolic link, FIFO
/// or device, not someone else's, not writable by others.
pub fn open_read(path: &Path) -> Result<(File, std::fs::Metadata), FileError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(FLAGS)
        .open(path)
        .map_err(|e| FileError::io(path, e))?;
    let md = f.metadata().map_err(|e| FileError::io(path, e))?;
    if !md.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            what: kind_name(md.mode()),
        });
    }
    check_owner(&md, path)?;
    Ok((f, md))
}

/// The whole of a regular file of ours (see `open_read`), at most `max` bytes: a larger
/// one is an error, read no further.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let (f, md) = open_read(path)?;
    let too_large = |size| FileError::TooLarge {
        path: path.to_path_buf(),
        size,
        max,
    };
    if md.len() > max {
        return Err(too_large(md.len()));
    }
    let mut data = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
    // One byte more than allowed tells a file that grew past the bound.
    f.take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| FileError::io(path, e))?;
    if data.len() as u64 > max {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

/// What `private_dir` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Ours, mode 0700 (created now, or already so).
    Private,
    /// Ours, but it was open to others (this mode): now 0700.
    Tightened(u32),
}

/// `dir` as a directory of ours that only we can enter: created (with its missing
/// parents) mode 0700 if absent; one of ours open to group or others is set to 0700; a
/// symbolic link, or one owned by someone else, is refused.
pub fn private_dir(dir: &Path) -> Result<DirState, FileError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| FileError::io(dir, e))?;
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => match std::fs::symlink_metadata(dir) {
                Ok(m) if m.file_type().is_symlink() => FileError::Symlink(dir.to_path_buf()),
                Ok(m) => FileError::NotRegular {
                    path: dir.to_path_buf(),
                    what: kind_name(m.mode()),
                },
                Err(e) => FileError::io(dir, e),
            },
            _ => FileError::io(dir, e),
        })?;
    let md = d.metadata().map_err(|e| FileError::io(dir, e))?;
    let me = euid();
    if md.uid() != me {
        return Err(FileError::Foreign {
            path: dir.to_path_buf(),
            owner: md.uid(),
            euid: me,
        });
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(DirState::Private);
    }
    d.set_permissions(std::fs::Permissions::from_mode(0o700))
        .map_err(|e| FileError::io(dir, e))?;
    Ok(DirState::Tightened(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{chown, symlink};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_planted_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let link = dir.path().join("out.jsonl");
        symlink(&victim, &link).unwrap();
        match open_append(&link) {
            Err(FileError::Symlink(p)) => assert_eq!(p, link),
            other => panic!("{other:?}"),
        }
        // A dangling link is not created through either.
        let dangling = dir.path().join("dangling");
        symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(open_append(&dangling).is_err());
        assert!(!dir.path().join("nowhere").exists());
        assert!(create_new(&link).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    #[test]
    fn created_files_are_0600_and_existing_ones_must_be_ours_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new");
        open_append(&p).unwrap().write_all(b"a\n").unwrap();
        assert_eq!(mode(&p), 0o600);
        // Ours, private: appended to.
        open_append(&p).unwrap().write_all(b"b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
        // Ours but group- or world-writable: refused.
        for m in [0o620, 0o602, 0o666] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
            assert!(
                matches!(open_append(&p), Err(FileError::Writable { .. })),
                "{m:o}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_append(&p).unwrap();
        // A second hard link: refused.
        let other = dir.path().join("other");
        std::fs::hard_link(&p, &other).unwrap();
        assert!(matches!(
            open_append(&p),
            Err(FileError::Linked { links: 2, .. })
        ));
        std::fs::remove_file(&other).unwrap();
        // Someone else's (a test run as root can hand it over): refused.
        if euid() == 0 {
            chown(&p, Some(65534), Some(65534)).unwrap();
            match open_append(&p) {
                Err(e @ FileError::Foreign { owner: 65534, .. }) => {
                    assert!(e.to_string().contains("someone else"), "{e}")
                }
                other => panic!("{other:?}"),
            }
        }
        // Directories are not files; character devices are fine.
        assert!(matches!(
            open_append(dir.path()),
            Err(FileError::NotRegular { .. })
        ));
        open_append(Path::new("/dev/null"))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
    }

    #[test]
    fn temporary_names_are_unpredictable_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let (_, a) = create_temp(dir.path(), "00000000000000000001").unwrap();
        let (_, b) = create_temp(dir.path(), "00000000000000000001").unwrap();
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("00000000000000000001.") && name.ends_with(".tmp"),
            "{name}"
        );
        assert_eq!(mode(&a), 0o600);
        assert!(matches!(create_new(&a), Err(FileError::Io { .. })));
    }

    #[test]
    fn bounded_reads_refuse_links_devices_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 100]).unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap().len(), 100);
        assert!(matches!(
            read_bounded(&p, 99),
            Err(FileError::TooLarge { size: 100, .. })
        ));
        let zero = dir.path().join("zero");
        symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_bounded(&zero, 1 << 20),
            Err(FileError::Symlink(_))
        ));
        assert!(matches!(
            read_bounded(Path::new("/dev/zero"), 1 << 20),
            Err(FileError::NotRegular { .. })
        ));
        // A FIFO without a writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_bounded(&fifo, 1 << 20),
            Err(FileError::NotRegular { .. })
        ));
    }

    #[test]
    fn private_directories() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("a/b/spool");
        assert_eq!(private_dir(&d).unwrap(), DirState::Private);
        assert_eq!(mode(&d), 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(private_dir(&d).unwrap(), DirState::Tightened(0o777));
        assert_eq!(mode(&d), 0o700);
        let link = root.path().join("link");
        symlink(&d, &link).unwrap();
        assert!(matches!(private_dir(&link), Err(FileError::Symlink(_))));
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(private_dir(&file).is_err());
        assert!(private_dir(&file.join("below")).is_err());
        if euid() == 0 {
            chown(&d, Some(65534), None).unwrap();
            assert!(matches!(
                private_dir(&d),
                Err(FileError::Foreign { owner: 65534, .. })
            ));
        }
    }
}
