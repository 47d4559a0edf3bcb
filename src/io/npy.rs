//! NumPy `.npy` and `.npz` arrays of floats: data sets, and the peer checkpoints.
//!
//! Arrays are read as `f64` whatever their float width (`<f4` or `<f8`, C order), so that
//! a file written by NumPy in either precision loads the same way. The header's shape is
//! checked against the bytes of data the file holds before anything is decoded: a corrupt
//! shape (one whose element count overflows, or more or fewer values than the file has) is
//! an error naming the file, never an overflow or a huge allocation.
//!
//! Files are written by [`write_atomically`]: to a temporary file beside the target, renamed
//! into place, so an interrupted write never leaves a half-written file where a good one was.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use npyz::WriterBuilder;

/// What a failed file operation was doing; [`NpyError::Io`] says it in its message
/// ("cannot write out.npy: …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileOp {
    /// Opening or reading the file.
    Read,
    /// Opening or writing the file, or writing the temporary file that is to replace it.
    Write,
    /// Creating the temporary file in the target's folder (the error's path is the folder).
    CreateTemp,
    /// Renaming the written temporary file over the target.
    Rename,
    /// Following a symbolic link on the way to the target (the error's path is the link).
    FollowLink,
}

impl std::fmt::Display for FileOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileOp::Read => "read",
            FileOp::Write => "write",
            FileOp::CreateTemp => "create a temporary file in",
            FileOp::Rename => "rename a temporary file onto",
            FileOp::FollowLink => "follow the symbolic link",
        })
    }
}

/// What can go wrong reading or writing an array file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// The file could not be opened, read or written: `op` says which step failed, `path`
    /// is what it acted on (the file; the folder for [`FileOp::CreateTemp`]; the link for
    /// [`FileOp::FollowLink`]). Writing over a directory fails with
    /// [`ErrorKind::IsADirectory`](std::io::ErrorKind::IsADirectory).
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// The step that failed.
        op: FileOp,
        /// The file (or folder, or link) it acted on.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not an `.npy`/`.npz` array of a float type this reader understands.
    #[error("{path}: not a readable float array ({reason})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser objected to.
        reason: String,
    },
    /// An `.npz` archive lacks an array the caller asked for.
    #[error("{path}: no array named '{name}'")]
    MissingArray {
        /// The archive.
        path: PathBuf,
        /// The array's name (without `.npy`).
        name: String,
    },
}

/// A dense array read from a file: its shape and its values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The shape, outermost axis first.
    pub shape: Vec<usize>,
    /// The values, row-major; `data.len()` is the product of `shape`.
    pub data: Vec<f64>,
}

fn io_err(op: FileOp, path: &Path) -> impl FnOnce(std::io::Error) -> NpyError + '_ {
    move |source| NpyError::Io { op, path: path.to_path_buf(), source }
}

fn format_err(path: &Path, reason: impl ToString) -> NpyError {
    NpyError::Format { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Reads a whole file; an error names the file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, NpyError> {
    std::fs::read(path).map_err(io_err(FileOp::Read, path))
}

/// A shape as NumPy prints it: `(3, 2)`, `(5,)`, `()`.
fn shape_text(shape: &[u64]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Every `shape` entry of the header dict `header` (NumPy writes one, as `'shape': (3, 2)`).
fn header_shapes(header: &str) -> Result<Vec<Vec<u64>>, String> {
    let mut shapes = Vec::new();
    for key in ["'shape'", "\"shape\""] {
        for (i, _) in header.match_indices(key) {
            // A key is followed by a colon (a field named 'shape' in a dtype is not).
            let Some(value) = header[i + key.len()..].trim_start().strip_prefix(':') else {
                continue;
            };
            let value = value.trim_start();
            let close = match value.chars().next() {
                Some('(') => ')',
                Some('[') => ']',
                _ => return Err("the header's shape is not a tuple".into()),
            };
            let end = value.find(close).ok_or("the header's shape is not closed")?;
            let dims = value[1..end]
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(|d| {
                    d.parse::<u64>()
                        .map_err(|_| format!("shape entry {d:?} is not an integer in [0, 2^64)"))
                })
                .collect::<Result<_, _>>()?;
            shapes.push(dims);
        }
    }
    Ok(shapes)
}

/// Checks the layout of the `.npy` bytes before the parser sees them: the header lies
/// within the file, and no shape in it has an element count that overflows (the parser
/// multiplies the dimensions unchecked). Returns the number of bytes after the header.
fn data_len(bytes: &[u8]) -> Result<usize, String> {
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return Err("no .npy magic string".into());
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10usize),
        2 | 3 if bytes.len() >= 12 => {
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = start
        .checked_add(len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| format!("a header of {len} bytes in a file of {} bytes", bytes.len()))?;
    let data = bytes.len() - start - len;
    let header = String::from_utf8_lossy(header);
    for shape in header_shapes(&header)? {
        // Zero-length axes included: the parser's strides multiply all of them.
        if shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d.max(1))).is_none() {
            return Err(format!(
                "shape {} does not match the file's {data} bytes of data (its size overflows)",
                shape_text(&shape)
            ));
        }
    }
    Ok(data)
}

/// Decodes one `.npy` file held in `bytes` into an [`Array`] of `f64`; the error is the
/// reason the bytes are not one.
fn decode(bytes: &[u8]) -> Result<Array, String> {
    let data_len = data_len(bytes)?;
    let npy = npyz::NpyFile::new(bytes).map_err(|e| e.to_string())?;
    if npy.order() != npyz::Order::C {
        return Err("Fortran order is not supported".into());
    }
    let descr = npy.dtype().descr();
    let item: u64 = match descr.as_str() {
        "'<f8'" => 8,
        "'<f4'" => 4,
        other => return Err(format!("dtype {other}, expected <f4 or <f8")),
    };
    let shape = npy.shape().to_vec();
    let need = shape.iter().try_fold(item, |n, &d| n.checked_mul(d));
    if need != Some(data_len as u64) {
        let why = match need {
            Some(n) => format!("{descr} values of that shape take {n} bytes"),
            None => "its size overflows".into(),
        };
        return Err(format!(
            "shape {} does not match the file's {data_len} bytes of data ({why})",
            shape_text(&shape)
        ));
    }
    // Each axis is at most the data length (or another axis is 0): fits usize on 64 bits.
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("shape {} does not fit in memory", shape_text(npy.shape())))?;
    let data: Vec<f64> = if item == 8 {
        npy.into_vec::<f64>().map_err(|e| e.to_string())?
    } else {
        npy.into_vec::<f32>().map_err(|e| e.to_string())?.into_iter().map(f64::from).collect()
    };
    Ok(Array { shape, data })
}

/// Reads a `.npy` file of `f32` or `f64` values (as `f64`).
///
/// Errors: the file cannot be read ([`NpyError::Io`]); it is not a C-order float array,
/// or its shape does not match the bytes of data it holds ([`NpyError::Format`]).
pub fn read_npy(path: impl AsRef<Path>) -> Result<Array, NpyError> {
    let path = path.as_ref();
    decode_named(path, &read_file(path)?)
}

/// The array in the `.npy` bytes `bytes`, an error naming `path`.
pub(crate) fn decode_named(path: &Path, bytes: &[u8]) -> Result<Array, NpyError> {
    decode(bytes).map_err(|reason| format_err(path, reason))
}

/// Reads a `.npy` file that must hold a 2-D array of `cols` columns; returns the rows flat.
///
/// Returns the number of rows and the sample-major buffer (`rows × cols`).
pub fn read_npy_matrix(path: impl AsRef<Path>, cols: usize) -> Result<(usize, Vec<f64>), NpyError> {
    let path = path.as_ref();
    let a = read_npy(path)?;
    match a.shape.as_slice() {
        [rows, c] if *c == cols => Ok((*rows, a.data)),
        s => Err(format_err(path, format!("shape {s:?}, expected [n, {cols}]"))),
    }
}

/// Opens an `.npz` archive for reading arrays by name.
pub struct NpzReader {
    path: PathBuf,
    archive: npyz::npz::NpzArchive<BufReader<File>>,
}

/// An error of reading `path` that is the data's fault (a [`NpyError::Format`]) or the
/// system's (a [`NpyError::Io`]).
fn read_err(path: &Path, what: &str, e: std::io::Error) -> NpyError {
    match e.kind() {
        ErrorKind::InvalidData | ErrorKind::UnexpectedEof => format_err(path, format!("{what}{e}")),
        _ => NpyError::Io { op: FileOp::Read, path: path.to_path_buf(), source: e },
    }
}

impl NpzReader {
    /// Opens the archive at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NpyError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(io_err(FileOp::Read, &path))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(io_err(FileOp::Read, &path)(ErrorKind::IsADirectory.into()));
        }
        let archive =
            npyz::npz::NpzArchive::new(BufReader::new(file)).map_err(|e| read_err(&path, "", e))?;
        Ok(Self { path, archive })
    }

    /// The names of the arrays in the archive.
    pub fn names(&self) -> Vec<String> {
        self.archive.array_names().map(str::to_owned).collect()
    }

    /// Reads the array `name` (as `f64`).
    pub fn array(&mut self, name: &str) -> Result<Array, NpyError> {
        use npyz::zip::result::ZipError;
        let what = format!("array '{name}': ");
        let path = &self.path;
        let mut entry = match self.archive.zip_archive().by_name(&format!("{name}.npy")) {
            Ok(entry) => entry,
            Err(ZipError::FileNotFound) => {
                return Err(NpyError::MissingArray { path: path.clone(), name: name.into() })
            }
            Err(ZipError::Io(e)) => return Err(read_err(path, &what, e)),
            Err(e) => return Err(format_err(path, format!("{what}{e}"))),
        };
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| read_err(path, &what, e))?;
        decode(&bytes).map_err(|reason| format_err(path, format!("{what}{reason}")))
    }
}

/// Writes `data` (row-major, `shape`) as an `f64` `.npy` file, atomically (see
/// [`write_atomically`]).
pub fn write_npy(path: impl AsRef<Path>, shape: &[usize], data: &[f64]) -> Result<(), NpyError> {
    let path = path.as_ref();
    if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(data.len()) {
        return Err(format_err(path, "data length does not match the shape"));
    }
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    write_atomically(path, |w| {
        let mut writer =
            npyz::WriteOptions::new().default_dtype().shape(&shape).writer(w).begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
}

/// The longest chain of symbolic links followed to a target (Linux's own limit).
const MAX_LINKS: usize = 40;

/// How [`write_atomically`] writes to a path.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Write a temporary file beside this path (a regular file, or nothing yet: the user's
    /// path with its symbolic links followed) and rename it over the path.
    Replace(PathBuf),
    /// Open the user's path and write to it: a device, a FIFO, a socket, or a file reached
    /// through a `/proc` descriptor link (`/dev/stdout` redirected to a file), which has no
    /// path of its own to rename onto.
    InPlace {
        /// The path is a descriptor link to a regular file: append to it (unless it is
        /// standard output or error, which are always written through their descriptor).
        descriptor: bool,
    },
}

/// The error of writing over a directory.
fn is_a_directory(path: &Path) -> NpyError {
    io_err(FileOp::Write, path)(ErrorKind::IsADirectory.into())
}

/// The folder of `path`: its parent, or `.` for a bare file name (whose parent is empty).
pub(crate) fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Whether the symbolic link `link` lives in procfs, whose links (`/proc/self/fd/1`, behind
/// `/dev/stdout` and `/dev/fd/1`) stand for open files rather than paths.
fn is_proc_link(link: &Path) -> bool {
    let dir = folder_of(link);
    cfg!(target_os = "linux") && std::fs::canonicalize(dir).is_ok_and(|d| d.starts_with("/proc"))
}

/// Decides how to write `path`: in place for anything that is not a regular file, by
/// temporary file and rename at the end of its chain of symbolic links otherwise.
fn plan(path: &Path) -> Result<Plan, NpyError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err(is_a_directory(path)),
        Ok(m) if !m.is_file() => return Ok(Plan::InPlace { descriptor: false }),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {} // a new file, or a dangling link
        Err(e) => return Err(io_err(FileOp::Write, path)(e)),
    }
    let mut p = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                if is_proc_link(&p) {
                    return Ok(Plan::InPlace { descriptor: true });
                }
                let dest = std::fs::read_link(&p).map_err(io_err(FileOp::FollowLink, &p))?;
                // A relative target is relative to the link's folder.
                p = match p.parent() {
                    Some(dir) => dir.join(dest),
                    None => dest,
                };
            }
            // Checked again at the end of the chain: a rename never replaces a device.
            Ok(m) if m.is_file() => return Ok(Plan::Replace(p)),
            Ok(m) if m.is_dir() => return Err(is_a_directory(path)),
            Ok(_) => return Ok(Plan::InPlace { descriptor: false }),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Plan::Replace(p)),
            Err(e) => return Err(io_err(FileOp::FollowLink, &p)(e)),
        }
    }
    Err(io_err(FileOp::FollowLink, path)(std::io::Error::other(format!(
        "more than {MAX_LINKS} symbolic links"
    ))))
}

/// Where a write to a path must go, as [`resolve_for_write`] tells a writer that makes its
/// own temporary file (the figures: their backends write to a path, not a stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteTarget {
    /// A regular file, or nothing yet: the path at the end of the user's chain of symbolic
    /// links. Write a temporary file in this path's folder and rename it onto this path; the
    /// links stay links.
    File(PathBuf),
    /// Not a regular file (a device, FIFO or socket, or a file reached through a `/proc`
    /// descriptor link such as `/dev/stdout`): nothing may be renamed onto it. Write the
    /// contents through [`write_atomically`] on the user's path, which opens it in place.
    Special,
}

/// Resolves `path` for writing the way [`write_atomically`] does: follows its chain of
/// symbolic links (at most 40) to the regular file, or the missing file a dangling link
/// names, that is to be replaced ([`WriteTarget::File`]), or finds it is not a regular file
/// ([`WriteTarget::Special`]).
///
/// Errors: a directory at the path or at the end of its links ([`NpyError::Io`] with
/// [`ErrorKind::IsADirectory`], naming `path`); a link that cannot be read, or a loop of
/// links ([`FileOp::FollowLink`]); a path whose status cannot be read ([`FileOp::Write`]).
pub(crate) fn resolve_for_write(path: &Path) -> Result<WriteTarget, NpyError> {
    Ok(match plan(path)? {
        Plan::Replace(target) => WriteTarget::File(target),
        Plan::InPlace { .. } => WriteTarget::Special,
    })
}

/// The process's standard output (or error) when `path` is the file, pipe or terminal it
/// goes to (`--output /dev/stdout`, or `> file` after it): a duplicate of that descriptor,
/// which shares its offset, so that what the program prints before and after is kept in
/// order and not written over. Rust's buffer of the stream is flushed first.
#[cfg(unix)]
fn standard_stream(path: &Path) -> Option<File> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(path).ok()?;
    let out = std::io::stdout().as_fd().try_clone_to_owned().map(|fd| (File::from(fd), true));
    let err = std::io::stderr().as_fd().try_clone_to_owned().map(|fd| (File::from(fd), false));
    let (file, is_out) = [out, err].into_iter().flatten().find(|(f, _)| {
        f.metadata().is_ok_and(|m| (m.dev(), m.ino()) == (target.dev(), target.ino()))
    })?;
    let _ = if is_out { std::io::stdout().flush() } else { std::io::stderr().flush() };
    Some(file)
}

/// Elsewhere there are no descriptor links to follow.
#[cfg(not(unix))]
fn standard_stream(_path: &Path) -> Option<File> {
    None
}

/// Tells temporary files of one process apart.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a new temporary file in `dir` for the file `name` (never opening an existing one),
/// named `.{name}.{pid}.{n}.{suffix}`: `suffix` is `"tmp"` for [`write_atomically`], and ends
/// in the image format's extension for a figure (its backend picks the format by it).
pub(crate) fn create_temp(
    dir: &Path,
    name: &OsStr,
    suffix: &str,
) -> Result<(PathBuf, File), NpyError> {
    // A prefix of the name keeps the temporary name within the file-name length limit.
    let stem: String = name.to_string_lossy().chars().take(64).collect();
    let mut last = None;
    for _ in 0..100 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{stem}.{}.{n}.{suffix}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(io_err(FileOp::CreateTemp, dir)(e)),
        }
    }
    Err(io_err(FileOp::CreateTemp, dir)(last.unwrap_or_else(|| ErrorKind::AlreadyExists.into())))
}

/// Writes a new `target` (a regular file or none) through a temporary file beside it.
fn replace(
    target: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), NpyError> {
    replace_via(
        target,
        "tmp",
        |_, file| {
            let mut w = BufWriter::new(file);
            write(&mut w).and_then(|()| w.flush()).map_err(io_err(FileOp::Write, target))
        },
        |e| e,
    )
}

/// Replaces the regular file `target` (or creates it) by one that `fill` writes: `fill` gets
/// a new temporary file beside `target` (its path, named by [`create_temp`] with `suffix`,
/// and the file open for writing); once it returns, the file is synced, given the replaced
/// file's permissions and renamed onto `target`, and the folder synced (best effort). The
/// temporary file is removed if anything fails. `map` turns this function's own errors
/// ([`NpyError::Io`] naming `target`) into the caller's.
pub(crate) fn replace_via<E>(
    target: &Path,
    suffix: &str,
    fill: impl FnOnce(&Path, File) -> Result<(), E>,
    map: impl Fn(NpyError) -> E,
) -> Result<(), E> {
    let dir = folder_of(target);
    let name = target.file_name().ok_or_else(|| {
        map(io_err(FileOp::Write, target)(std::io::Error::new(
            ErrorKind::InvalidInput,
            "the path does not end in a file name",
        )))
    })?;
    let (tmp, file) = create_temp(dir, name, suffix).map_err(&map)?;
    let result = fill(&tmp, file).and_then(|()| {
        let finish = || -> Result<(), NpyError> {
            // Synced by a new handle: `fill` may have written through the path.
            let written = OpenOptions::new().write(true).open(&tmp);
            written.and_then(|f| f.sync_all()).map_err(io_err(FileOp::Write, target))?;
            // The new contents keep the old file's permissions (set after the writing: a
            // read-only mode would keep a writer that reopens the path out).
            if let Ok(m) = std::fs::metadata(target) {
                std::fs::set_permissions(&tmp, m.permissions())
                    .map_err(io_err(FileOp::Write, target))?;
            }
            std::fs::rename(&tmp, target).map_err(io_err(FileOp::Rename, target))
        };
        finish().map_err(&map)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        // Best effort: make the rename itself durable.
        #[cfg(unix)]
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    result
}

/// Writes a file through `write` so that, where the path is a file, readers see either the
/// old file or the whole new one; errors name the path and the step that failed
/// ([`NpyError::Io`]).
///
/// - A regular file, or a path where nothing is yet: the contents go to a new temporary
///   file in the same folder, which is synced and renamed over the path. The replaced file's
///   permissions are kept.
/// - A symbolic link (or a chain of them): the file at its end is replaced, as above, in
///   its own folder; the link stays a link. A dangling link gets its target created.
/// - A device, FIFO or socket (`/dev/null`, `/dev/stdout` on a terminal or a pipe), or a
///   file reached through a `/proc` descriptor link (`/dev/stdout` redirected to a file):
///   opened and written directly, since there is nothing to rename onto; an error of that
///   write (`/dev/full`: no space left) is returned. Where this is the process's standard
///   output or error, the write goes through its descriptor, after what was printed before
///   it; another file behind a descriptor link is appended to.
/// - A directory: an error ([`std::io::ErrorKind::IsADirectory`]) naming it.
///
/// ```
/// # use odeflow::io::write_atomically;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("notes.txt");
/// write_atomically(&path, |w| std::io::Write::write_all(w, b"first"))?;
/// write_atomically(&path, |w| std::io::Write::write_all(w, b"second"))?;
/// assert_eq!(std::fs::read(&path)?, b"second");
/// let err = write_atomically(dir.path(), |w| std::io::Write::write_all(w, b"x")).unwrap_err();
/// assert!(err.to_string().starts_with(&format!("cannot write {}", dir.path().display())));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), NpyError> {
    match plan(path)? {
        Plan::Replace(target) => replace(&target, write),
        Plan::InPlace { descriptor } => {
            let file = match standard_stream(path) {
                Some(stream) => stream,
                None => OpenOptions::new()
                    .write(true)
                    .append(descriptor)
                    .open(path)
                    .map_err(io_err(FileOp::Write, path))?,
            };
            let mut w = BufWriter::new(file);
            write(&mut w).and_then(|()| w.flush()).map_err(io_err(FileOp::Write, path))
        }
    }
}

/// Removes the temporary files that [`write_atomically`] and the figure writers leave in
/// `dir` when their process is killed between creating and renaming them:
/// `.{name}.{pid}.{n}.tmp` (or `….tmp.{ext}` for a figure), where `name` is one of `names`
/// or a file `dir` holds, the process `pid` no longer runs, and the file has not changed for
/// a minute (a process this one cannot see, in another pid namespace, is then not writing it
/// either). Returns the files removed. Housekeeping only: a file it cannot read or remove is
/// left, and it removes nothing where it cannot tell whether a process runs (it asks Linux's
/// `/proc`). `odeflow train` calls it on its run folder once it holds the folder's lock.
///
/// ```
/// # use odeflow::io::remove_stale_temporaries;
/// let dir = tempfile::tempdir()?;
/// // Another file's temporary name, and one of a process that runs (this one): both stay.
/// let other = dir.path().join(".notes.1234.0.tmp");
/// let live = dir.path().join(format!(".model.safetensors.{}.0.tmp", std::process::id()));
/// for p in [&other, &live] {
///     std::fs::write(p, b"x")?;
/// }
/// assert!(remove_stale_temporaries(dir.path(), &["model.safetensors"]).is_empty());
/// assert!(other.exists() && live.exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn remove_stale_temporaries(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let settled = |m: &std::fs::Metadata| {
        m.modified().is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() >= 60))
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((name, pid)) = file_name.to_str().and_then(temporary_file_of) else { continue };
        let known = names.contains(&name) || dir.join(name).is_file();
        let stale = entry.metadata().is_ok_and(|m| m.is_file() && settled(&m));
        if known && stale && !proc.join(pid.to_string()).exists() {
            let path = entry.path();
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed.sort();
    removed
}

/// The file and the process id in a name [`create_temp`] makes (`.{name}.{pid}.{n}.tmp`,
/// optionally followed by `.{ext}`), or `None` for any other name.
fn temporary_file_of(file_name: &str) -> Option<(&str, u32)> {
    let rest = file_name.strip_prefix('.')?;
    let (head, tail) = rest.rsplit_once(".tmp")?;
    let ext_ok = tail.is_empty()
        || tail
            .strip_prefix('.')
            .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()));
    let mut parts = head.rsplitn(3, '.');
    let (n, pid, name) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !(ext_ok && digits(n) && digits(pid) && !name.is_empty()) {
        return None;
    }
    Some((name, pid.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers").join(name)
    }

    #[test]
    fn temporary_file_names_are_recognised() {
        let of = temporary_file_of;
        assert_eq!(of(".model.safetensors.4242.0.tmp"), Some(("model.safetensors", 4242)));
        assert_eq!(of(".density.png.17.3.tmp.png"), Some(("density.png", 17)));
        assert_eq!(of(".a.b.c.1.22.tmp"), Some(("a.b.c", 1)));
        for other in [
            "model.safetensors",
            ".model.safetensors",
            ".x.12.tmp",
            ".x.a.1.tmp",
            ".x.1.2.tmpx",
            ".1.2.tmp",
        ] {
            assert_eq!(of(other), None, "{other}");
        }
    }

    /// A killed process's temporary files of known names go once they have settled; a
    /// running one's, a fresh one's, other names' and other files stay.
    #[test]
    fn stale_temporaries_are_removed() {
        let dir = tempfile::Builder::new().prefix("odeflow-stale-").tempdir().unwrap();
        let dir = dir.path();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        let write = |name: &str, settled: bool| {
            let path = dir.join(name);
            let file = File::create(&path).unwrap();
            if settled {
                file.set_modified(old).unwrap();
            }
            path
        };
        // Above Linux's largest pid (2²²), so never a running process.
        let dead = write(".model.safetensors.999999999.0.tmp", true);
        // A figure's, named after a file the folder holds.
        write("density.png", true);
        let dead_figure = write(".density.png.999999999.1.tmp.png", true);
        let kept = [
            write(&format!(".train_state.bin.{}.0.tmp", std::process::id()), true),
            write(".train_log.csv.999999999.2.tmp", false),
            write(".notes.999999999.3.tmp", true),
            write("model.safetensors", true),
            write(".hidden", true),
        ];
        std::fs::create_dir(dir.join(".run.json.999999999.4.tmp")).unwrap();
        let names = ["model.safetensors", "train_state.bin", "train_log.csv", "run.json"];
        let removed = remove_stale_temporaries(dir, &names);
        if !Path::new("/proc/self").exists() {
            assert!(removed.is_empty());
            return;
        }
        assert_eq!(removed, vec![dead_figure.clone(), dead.clone()]);
        assert!(!dead.exists() && !dead_figure.exists());
        assert!(kept.iter().all(|p| p.exists()) && dir.join(".run.json.999999999.4.tmp").is_dir());
    }

    #[test]
    fn reads_the_peer_test_points() {
        let (rows, data) = read_npy_matrix(peers("test10k_8gaussians.npy"), 2).unwrap();
        assert_eq!(rows, 10_000);
        assert_eq!(data.len(), 20_000);
        // 8gaussians: centres on a circle of radius 4/1.414, std 0.5/1.414.
        let r_mean = data.chunks(2).map(|p| p[0].hypot(p[1])).sum::<f64>() / rows as f64;
        assert!((r_mean - 4.0 / 1.414).abs() < 0.05, "mean radius {r_mean}");
    }

    #[test]
    fn reads_the_peer_checkpoint() {
        let mut npz = NpzReader::open(peers("init_toy.npz")).unwrap();
        assert_eq!(npz.names().len(), 20);
        let w = npz.array("1_W").unwrap();
        assert_eq!(w.shape, vec![64, 64]);
        // PyTorch init: |w| ≤ 1/sqrt(fan_in) = 1/8.
        assert!(w.data.iter().all(|v| v.abs() <= 0.125));
        assert!(matches!(npz.array("9_W"), Err(NpyError::MissingArray { .. })));
    }

    #[test]
    fn round_trip_and_bad_files() {
        let tmp = tempfile::Builder::new().prefix("odeflow-npy-").tempdir().unwrap();
        let dir = tmp.path();
        let p = dir.join("a.npy");
        let data = [1.0, -2.5, 3.25, f64::MIN_POSITIVE, 1e300, 0.0];
        write_npy(&p, &[3, 2], &data).unwrap();
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape, vec![3, 2]);
        assert_eq!(
            a.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(matches!(read_npy_matrix(&p, 3), Err(NpyError::Format { .. })));
        // A truncated file is an error, never a panic.
        let bytes = std::fs::read(&p).unwrap();
        let q = dir.join("truncated.npy");
        std::fs::write(&q, &bytes[..bytes.len() - 5]).unwrap();
        assert!(read_npy(&q).is_err());
        std::fs::write(&q, b"not an array").unwrap();
        assert!(matches!(read_npy(&q), Err(NpyError::Format { .. })));
        assert!(matches!(read_npy(dir.join("missing.npy")), Err(NpyError::Io { .. })));
    }

    /// A fresh folder for one test (tests run concurrently in one process), removed when
    /// the guard drops.
    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("odeflow-npy-{name}-")).tempdir().unwrap()
    }

    /// The bytes of a version-1.0 `.npy` file with the header dict `dict` and `data` after it.
    fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    fn f8_dict(shape: &str) -> String {
        format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}")
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_shape_whose_size_overflows_is_a_clear_error() {
        let tmp = scratch("overflow");
        let dir = tmp.path();
        // 2^62 · 4 = 2^64 wraps to 0 in u64 arithmetic; the file holds 4 values.
        let p = dir.join("overflow.npy");
        let data: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&p, npy_bytes(&f8_dict("(4611686018427387904, 4)"), &data)).unwrap();
        let err = read_npy(&p).unwrap_err();
        assert!(matches!(err, NpyError::Format { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("overflow.npy") && msg.contains("32 bytes of data"), "{msg}");
        assert!(msg.contains("(4611686018427387904, 4)"), "{msg}");
        // Fewer rows than the shape says (an oversized shape), and more bytes than it says.
        for (shape, bytes) in [("(3, 2)", 32), ("(1, 2)", 32), ("(5,)", 32)] {
            std::fs::write(&p, npy_bytes(&f8_dict(shape), &data[..bytes])).unwrap();
            let msg = read_npy(&p).unwrap_err().to_string();
            assert!(msg.contains(&format!("{bytes} bytes of data")), "{shape}: {msg}");
        }
        // The same shape with the right number of bytes reads.
        std::fs::write(&p, npy_bytes(&f8_dict("(2, 2)"), &data)).unwrap();
        assert_eq!(read_npy(&p).unwrap().shape, vec![2, 2]);
        // A header length past the end of the file.
        let mut bytes = npy_bytes(&f8_dict("(2, 2)"), &[]);
        bytes[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(read_npy(&p), Err(NpyError::Format { .. })));
        // The same overflow inside an .npz archive.
        let npz = dir.join("overflow.npz");
        {
            let mut zip = npyz::zip::ZipWriter::new(File::create(&npz).unwrap());
            zip.start_file("a.npy", npyz::zip::write::FileOptions::default()).unwrap();
            zip.write_all(&npy_bytes(&f8_dict("(4611686018427387904, 4)"), &data)).unwrap();
            zip.finish().unwrap();
        }
        let msg = NpzReader::open(&npz).unwrap().array("a").unwrap_err().to_string();
        assert!(msg.contains("overflow.npz") && msg.contains("32 bytes of data"), "{msg}");
    }

    #[test]
    fn io_errors_name_the_path_and_what_failed() {
        let tmp = scratch("messages");
        let dir = tmp.path();
        let missing = dir.join("missing.npy");
        let msg = read_npy(&missing).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("cannot read {}: ", missing.display())), "{msg}");
        let msg = NpzReader::open(dir.join("missing.npz")).err().unwrap().to_string();
        assert!(msg.starts_with("cannot read ") && msg.contains("missing.npz"), "{msg}");
        let no_dir = dir.join("no-such-dir");
        let msg = write_npy(no_dir.join("out.npy"), &[1], &[1.0]).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("cannot create a temporary file in {}: ", no_dir.display())),
            "{msg}"
        );
    }

    #[test]
    fn a_directory_target_is_an_error_naming_it() {
        let tmp = scratch("dir-target");
        let dir = tmp.path();
        let target = dir.join("out.npy");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"mine").unwrap();
        let err = write_npy(&target, &[1], &[1.0]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("cannot write {}: ", target.display())), "{msg}");
        assert!(
            matches!(&err, NpyError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::IsADirectory),
            "{err:?}"
        );
        // Nothing was touched, and no temporary file was left beside it.
        assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"mine");
        assert_eq!(names_in(dir), ["out.npy"]);
    }

    #[cfg(unix)]
    #[test]
    fn writing_through_a_symlink_replaces_the_file_it_points_to() {
        let tmp = scratch("symlink");
        let dir = tmp.path();
        let sub = dir.join("data");
        std::fs::create_dir(&sub).unwrap();
        let real = sub.join("real.npy");
        write_npy(&real, &[1], &[1.0]).unwrap();
        // link.npy → data/real.npy (relative), chain.npy → link.npy (absolute).
        let link = dir.join("link.npy");
        std::os::unix::fs::symlink("data/real.npy", &link).unwrap();
        let chain = dir.join("chain.npy");
        std::os::unix::fs::symlink(&link, &chain).unwrap();
        write_npy(&link, &[2], &[2.0, 3.0]).unwrap();
        assert_eq!(read_npy(&real).unwrap().data, [2.0, 3.0]);
        write_npy(&chain, &[1, 3], &[4.0, 5.0, 6.0]).unwrap();
        assert_eq!(read_npy(&real).unwrap().data, [4.0, 5.0, 6.0]);
        for l in [&link, &chain] {
            assert!(std::fs::symlink_metadata(l).unwrap().file_type().is_symlink());
        }
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("data/real.npy"));
        // A dangling link: the file it names is created, the link stays.
        let dangling = dir.join("dangling.npy");
        std::os::unix::fs::symlink("data/new.npy", &dangling).unwrap();
        write_npy(&dangling, &[1], &[7.0]).unwrap();
        assert_eq!(read_npy(sub.join("new.npy")).unwrap().data, [7.0]);
        assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
        // The temporary files went to the target's folder and are gone.
        assert_eq!(names_in(dir), ["chain.npy", "dangling.npy", "data", "link.npy"]);
        assert_eq!(names_in(&sub), ["new.npy", "real.npy"]);
        // A loop of links is an error, not a hang.
        let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let msg = write_npy(&a, &[1], &[1.0]).unwrap_err().to_string();
        assert!(msg.contains("a.npy"), "{msg}");
    }

    /// The resolution shared with the figures: the end of a chain of links, a dangling
    /// link's target, a directory refused by the user's path, a FIFO left to write in place.
    #[cfg(unix)]
    #[test]
    fn resolve_for_write_names_the_file_at_the_end_of_the_links() {
        use std::os::unix::fs::symlink;
        let tmp = scratch("resolve");
        let dir = tmp.path();
        let real = dir.join("data").join("real.png");
        std::fs::create_dir(dir.join("data")).unwrap();
        std::fs::write(&real, b"old").unwrap();
        let (link, chain) = (dir.join("link.png"), dir.join("chain.png"));
        symlink("data/real.png", &link).unwrap();
        symlink(&link, &chain).unwrap();
        let plain = dir.join("plain.png");
        assert_eq!(resolve_for_write(&plain).unwrap(), WriteTarget::File(plain.clone()));
        for p in [&link, &chain] {
            assert_eq!(resolve_for_write(p).unwrap(), WriteTarget::File(real.clone()));
        }
        let dangling = dir.join("dangling.png");
        symlink("data/new.png", &dangling).unwrap();
        assert_eq!(
            resolve_for_write(&dangling).unwrap(),
            WriteTarget::File(dir.join("data").join("new.png"))
        );
        let to_dir = dir.join("to-dir.png");
        symlink("data", &to_dir).unwrap();
        for p in [&dir.join("data"), &to_dir] {
            let msg = resolve_for_write(p).unwrap_err().to_string();
            assert!(msg.starts_with(&format!("cannot write {}: ", p.display())), "{msg}");
        }
        let fifo = dir.join("pipe.png");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            assert_eq!(resolve_for_write(&fifo).unwrap(), WriteTarget::Special);
        }
        // Nothing was created or changed.
        assert_eq!(std::fs::read(&real).unwrap(), b"old");
        assert!(!dir.join("data").join("new.png").exists());
    }

    #[cfg(unix)]
    #[test]
    fn replacing_a_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = scratch("permissions");
        let dir = tmp.path();
        let p = dir.join("a.npy");
        write_npy(&p, &[1], &[1.0]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_npy(&p, &[1], &[2.0]).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_npy(&p).unwrap().data, [2.0]);
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_to_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let tmp = scratch("fifo");
        let dir = tmp.path();
        let fifo = dir.join("pipe.npy");
        match std::process::Command::new("mkfifo").arg(&fifo).status() {
            Ok(s) if s.success() => {}
            _ => {
                eprintln!("skipped: mkfifo is not available");
                return;
            }
        }
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo))
        };
        write_npy(&fifo, &[2], &[1.5, -2.5]).unwrap();
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        let bytes = reader.join().unwrap().unwrap();
        assert_eq!(names_in(dir), ["pipe.npy"]);
        let copy = dir.join("copy.npy");
        std::fs::write(&copy, bytes).unwrap();
        let a = read_npy(&copy).unwrap();
        assert_eq!((a.shape, a.data), (vec![2], vec![1.5, -2.5]));
    }

    #[cfg(unix)]
    #[test]
    fn writing_to_dev_null_leaves_it_a_character_device() {
        use std::os::unix::fs::FileTypeExt;
        let null = Path::new("/dev/null");
        let is_char =
            |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device());
        if !is_char(null) {
            eprintln!("skipped: /dev/null is not a character device here");
            return;
        }
        // The plan is checked first: a regression must fail here, not rename onto /dev/null.
        assert_eq!(plan(null).unwrap(), Plan::InPlace { descriptor: false });
        write_npy(null, &[2], &[1.0, 2.0]).unwrap();
        crate::io::write_csv(null, &["x"], &[1.0]).unwrap();
        assert!(is_char(null));
        // Through a link to it, too: the link stays a link.
        let tmp = scratch("dev-null");
        let dir = tmp.path();
        let link = dir.join("out.npy");
        std::os::unix::fs::symlink(null, &link).unwrap();
        assert_eq!(plan(&link).unwrap(), Plan::InPlace { descriptor: false });
        write_npy(&link, &[1], &[1.0]).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(is_char(null));
        assert_eq!(names_in(dir), ["out.npy"]);
    }

    /// /dev/full takes the open and refuses the write: the error is returned. It is only
    /// opened for writing, never renamed onto (the plan is checked before the write).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_to_a_device_is_an_error() {
        use std::os::unix::fs::FileTypeExt;
        let full = Path::new("/dev/full");
        if !std::fs::symlink_metadata(full).is_ok_and(|m| m.file_type().is_char_device()) {
            eprintln!("skipped: /dev/full is not a character device here");
            return;
        }
        assert_eq!(plan(full).unwrap(), Plan::InPlace { descriptor: false });
        let err = write_npy(full, &[1], &[1.0]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("cannot write /dev/full: "), "{msg}");
        assert!(
            matches!(&err, NpyError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull),
            "{err:?}"
        );
    }
}
