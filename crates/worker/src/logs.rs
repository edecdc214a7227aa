//! Function logs: what instances write to standard output and error, kept per function under
//! `<root>/logs/<function>.log`, apart from the worker's own log.
//!
//! An instance's stdout and stderr are the write ends of two pipes (cold instances get them
//! from the spawner; forked ones with their assignment, see `zygote.rs`); the worker reads the
//! other ends ([`InstanceOutput`]) and writes each line to the function's log, prefixed with
//! what the instance cannot forge:
//!
//! ```text
//! 2026-12-01T10:00:00.123Z sb-1a2b3-7 stdout request=3f2a-9 | the line as written
//! 2026-12-01T10:00:04.001Z sb-1a2b3-7 stderr background | written between requests
//! ```
//!
//! (UTC time, sandbox id, stream, the request the instance was serving, or `background`).
//! Control characters are escaped (`\x1b`), invalid UTF-8 replaced, and lines past
//! `max_line_bytes` cut and marked `[truncated]`. A log rotates past `max_file_bytes` and keeps
//! `max_files` old files, so a function's logs never take more than
//! `max_file_bytes * (max_files + 1)` bytes. A function writing without end is slowed to the
//! pace of the disk (its pipe fills and its writes wait), and the worker holds at most a few
//! kilobytes of its output at a time.
//!
//! The runtime flushes Python's `sys.stdout` and `sys.stderr` before each reply, so what a
//! request wrote is in the pipe when the reply arrives; the worker reads it before it tags the
//! instance's output as background again.

use kindling_sandbox::stdio::OutputPipes;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::net::unix::pipe;

/// Most lines `GET /logs/<name>?tail=N` returns.
pub const MAX_TAIL_LINES: usize = 10_000;
/// Most bytes a tail returns (the newest lines that fit).
const MAX_TAIL_BYTES: u64 = 4 << 20;
/// One read of a pipe.
const READ_CHUNK: usize = 8192;
/// What the collector reads of one pipe before letting other work run.
const READ_BUDGET: usize = 64 * 1024;
/// Most the end of a request reads: a pipe holds at most 1 MiB (the kernel's unprivileged
/// `pipe-max-size`), and what the request wrote is in it.
const DRAIN_BUDGET: usize = 1 << 20;
/// Tagged lines gathered before they are written to the log.
const FLUSH_BYTES: usize = 16 * 1024;
/// Longest request id shown.
const MAX_REQUEST_ID: usize = 64;
/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Most bytes one step of a follower returns.
const FOLLOW_CHUNK: usize = 64 * 1024;

/// Function logs (`[logs]`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Where `<function>.log` files go, mode 0600 (unset: `<root>/logs`). An absolute path.
    pub dir: Option<PathBuf>,
    /// A log past this size rotates to `<function>.log.1`.
    pub max_file_bytes: u64,
    /// Rotated files kept (`.log.1` to `.log.<n>`): a function's logs take at most
    /// `max_file_bytes * (max_files + 1)` bytes of disk.
    pub max_files: usize,
    /// Longer lines are cut there and marked `[truncated]` (80 to 1048576).
    pub max_line_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_file_bytes: 8 * 1024 * 1024,
            max_files: 2,
            max_line_bytes: 8192,
        }
    }
}

/// Bounds of the logs (`[logs]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub max_file_bytes: u64,
    pub max_files: usize,
    pub max_line_bytes: usize,
}

impl LogLimits {
    pub fn of(config: &LogConfig) -> Self {
        Self {
            max_file_bytes: config.max_file_bytes,
            max_files: config.max_files,
            max_line_bytes: config.max_line_bytes,
        }
    }
}

/// Why a log could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create the log directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("function `{0}` has no log")]
    NotFound(String),
    #[error("cannot read the log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The logs of every function.
pub struct Logs {
    dir: PathBuf,
    limits: LogLimits,
    /// The log files instances write to now.
    writers: Mutex<HashMap<String, Weak<Mutex<FunctionLog>>>>,
}

impl Logs {
    /// Opens the log directory (created root-only: logs may hold what functions print of
    /// their secrets).
    pub fn open(dir: &Path, limits: LogLimits) -> Result<Self, LogError> {
        let dir_err = |source| LogError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
            writers: Mutex::new(HashMap::new()),
        })
    }

    /// The current log file of `function` (a name the registry accepts).
    pub fn path(&self, function: &str) -> PathBuf {
        self.dir.join(format!("{function}.log"))
    }

    fn writer(&self, function: &str) -> Arc<Mutex<FunctionLog>> {
        let mut writers = self.writers.lock();
        if let Some(w) = writers.get(function).and_then(Weak::upgrade) {
            return w;
        }
        writers.retain(|_, w| w.strong_count() > 0);
        let w = Arc::new(Mutex::new(FunctionLog::new(
            self.path(function),
            self.limits,
        )));
        writers.insert(function.to_string(), Arc::downgrade(&w));
        w
    }

    /// Starts collecting the output of an instance of `function` in sandbox `sandbox` from
    /// the read ends of its pipes, until the instance and everything it started have closed
    /// them. Needs a tokio runtime.
    pub fn collect(
        &self,
        function: &str,
        sandbox: &str,
        pipes: OutputPipes,
    ) -> io::Result<InstanceOutput> {
        let shared = Arc::new(Shared {
            pipes: [
                pipe::Receiver::from_owned_fd(pipes.stdout)?,
                pipe::Receiver::from_owned_fd(pipes.stderr)?,
            ],
            state: Mutex::new(Tagger::new(sandbox, &self.limits, self.writer(function))),
        });
        tokio::spawn(collect(shared.clone()));
        Ok(InstanceOutput { shared })
    }

    /// The last `lines` lines of `function`'s log (at most [`MAX_TAIL_LINES`] and 4 MiB),
    /// oldest first, and where a follower continues from.
    pub fn tail(&self, function: &str, lines: usize) -> Result<Tail, LogError> {
        let lines = lines.min(MAX_TAIL_LINES);
        let current = self.path(function);
        let mut files = vec![current.clone()];
        files.extend((1..=self.limits.max_files).map(|k| rotated(&current, k)));
        let mut newest_first: Vec<Vec<u8>> = Vec::new();
        let (mut have, mut bytes) = (0usize, 0u64);
        let mut from = None;
        for (k, path) in files.iter().enumerate() {
            let read_err = |source| LogError::Read {
                path: path.clone(),
                source,
            };
            let mut file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if k == 0 {
                        continue;
                    }
                    break;
                }
                Err(e) => return Err(read_err(e)),
            };
            let meta = file.metadata().map_err(read_err)?;
            if k == 0 {
                from = Some(Follower::at(current.clone(), meta.ino(), meta.len()));
            }
            if have >= lines || bytes >= MAX_TAIL_BYTES {
                break;
            }
            let take = meta.len().min(MAX_TAIL_BYTES - bytes);
            file.seek(SeekFrom::Start(meta.len() - take))
                .map_err(read_err)?;
            let mut buf = Vec::with_capacity(take as usize);
            file.take(take).read_to_end(&mut buf).map_err(read_err)?;
            // Only whole lines: not the one cut at the start of what was read.
            let mut text: &[u8] = &buf;
            if take < meta.len() {
                text = text
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&[][..], |p| &text[p + 1..]);
            }
            let (kept, n) = last_lines(text, lines - have);
            have += n;
            bytes += take;
            newest_first.push(kept.to_vec());
            if take < meta.len() {
                break;
            }
        }
        let Some(from) = from
            .or_else(|| (!newest_first.is_empty()).then(|| Follower::at(current.clone(), 0, 0)))
        else {
            return Err(LogError::NotFound(function.to_string()));
        };
        let text = newest_first.into_iter().rev().flatten().collect();
        Ok(Tail {
            text,
            lines: have,
            from,
        })
    }

    /// A follower of `function`'s log from its current end (when it has none yet, from its
    /// beginning once it appears).
    pub fn follower(&self, function: &str) -> Follower {
        let path = self.path(function);
        match std::fs::metadata(&path) {
            Ok(m) => Follower::at(path, m.ino(), m.len()),
            Err(_) => Follower::at(path, 0, 0),
        }
    }
}

/// The last lines of a log.
pub struct Tail {
    /// Whole lines, oldest first.
    pub text: Vec<u8>,
    pub lines: usize,
    /// Continues after them.
    pub from: Follower,
}

/// The last `n` lines of `text` (whole lines, each ending in `\n` unless the last has none):
/// their bytes and how many there are.
fn last_lines(text: &[u8], n: usize) -> (&[u8], usize) {
    if n == 0 || text.is_empty() {
        return (&[], 0);
    }
    // The final newline ends the last line; it does not start another.
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut count = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            count += 1;
            if count == n {
                return (&text[i + 1..], n);
            }
        }
    }
    (text, count + 1)
}

fn rotated(path: &Path, k: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// A function's log file, shared by its instances.
struct FunctionLog {
    path: PathBuf,
    limits: LogLimits,
    file: Option<File>,
    size: u64,
    /// A write failed (disk full?): said once, until one succeeds again.
    failing: bool,
}

impl FunctionLog {
    fn new(path: PathBuf, limits: LogLimits) -> Self {
        Self {
            path,
            limits,
            file: None,
            size: 0,
            failing: false,
        }
    }

    /// Appends whole tagged lines, rotating first if they would take the file past its size.
    fn append(&mut self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let written = self.open().and_then(|()| {
            if self.size > 0 && self.size + lines.len() as u64 > self.limits.max_file_bytes {
                self.rotate()?;
                self.open()?;
            }
            match self.file.as_mut() {
                Some(f) => f.write_all(lines),
                None => Ok(()),
            }
        });
        match written {
            Ok(()) => {
                self.size += lines.len() as u64;
                self.failing = false;
            }
            Err(e) => {
                // The lines are lost; the function is not held up by the disk.
                if !self.failing {
                    tracing::warn!(log = %self.path.display(), "cannot write function log: {e}");
                }
                self.failing = true;
                self.file = None;
            }
        }
    }

    fn open(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(())
    }

    /// `<f>.log` becomes `<f>.log.1`, `.1` becomes `.2` and so on; the oldest goes.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        self.size = 0;
        if self.limits.max_files == 0 {
            return std::fs::remove_file(&self.path);
        }
        for k in (1..self.limits.max_files).rev() {
            match std::fs::rename(rotated(&self.path, k), rotated(&self.path, k + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))
    }
}

/// The two streams of an instance.
const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// Turns an instance's output into tagged lines for its function's log.
struct Tagger {
    sandbox: String,
    max_line: usize,
    log: Arc<Mutex<FunctionLog>>,
    /// The request in flight, if any.
    request: Option<String>,
    /// Each stream's line so far, and whether the rest of an overlong line is being skipped.
    partial: [Vec<u8>; 2],
    skipping: [bool; 2],
    closed: [bool; 2],
    /// Tagged lines not written yet, and how many bytes of them are written at once: a
    /// quarter of a log file at most, so that lines never take a file past its size.
    out: Vec<u8>,
    flush_at: usize,
}

impl Tagger {
    fn new(sandbox: &str, limits: &LogLimits, log: Arc<Mutex<FunctionLog>>) -> Self {
        Self {
            sandbox: sandbox.to_string(),
            max_line: limits.max_line_bytes,
            flush_at: FLUSH_BYTES.min((limits.max_file_bytes / 4) as usize),
            log,
            request: None,
            partial: [Vec::new(), Vec::new()],
            skipping: [false, false],
            closed: [false, false],
            out: Vec::new(),
        }
    }

    /// Takes bytes the instance wrote to stream `i`.
    fn take(&mut self, i: usize, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (segment, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    let s = &bytes[..p];
                    bytes = &bytes[p + 1..];
                    (s, true)
                }
                None => (std::mem::take(&mut bytes), false),
            };
            if self.skipping[i] {
                self.skipping[i] = !ended;
                continue;
            }
            let room = self.max_line - self.partial[i].len();
            if segment.len() > room {
                self.partial[i].extend_from_slice(&segment[..room]);
                self.emit(i, true);
                self.skipping[i] = !ended;
                continue;
            }
            self.partial[i].extend_from_slice(segment);
            if ended {
                self.emit(i, false);
            }
        }
    }

    /// Ends the lines written so far without a newline.
    fn finish_lines(&mut self) {
        for i in 0..2 {
            if !self.partial[i].is_empty() {
                self.emit(i, false);
            }
            self.skipping[i] = false;
        }
    }

    /// Writes stream `i`'s line so far as one tagged line.
    fn emit(&mut self, i: usize, truncated: bool) {
        let line = std::mem::take(&mut self.partial[i]);
        timestamp(SystemTime::now(), &mut self.out);
        self.out.push(b' ');
        self.out.extend_from_slice(self.sandbox.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(STREAMS[i].as_bytes());
        match &self.request {
            Some(r) => {
                self.out.extend_from_slice(b" request=");
                self.out.extend_from_slice(r.as_bytes());
            }
            None => self.out.extend_from_slice(b" background"),
        }
        self.out.extend_from_slice(b" | ");
        escape_into(&mut self.out, &line);
        if truncated {
            self.out.extend_from_slice(" [truncated]".as_bytes());
        }
        self.out.push(b'\n');
        // The buffer is kept for the next line.
        self.partial[i] = line;
        self.partial[i].clear();
        if self.out.len() >= self.flush_at {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        self.log.lock().append(&self.out);
        self.out.clear();
        if self.out.capacity() > 4 * self.flush_at {
            self.out.shrink_to(self.flush_at);
        }
    }
}

/// Writes `raw` as text: valid UTF-8 as it is, control characters but tab escaped (so that
/// nothing a function prints can move a terminal's cursor or start an escape sequence),
/// invalid bytes as U+FFFD.
fn escape_into(out: &mut Vec<u8>, raw: &[u8]) {
    if raw.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t') {
        out.extend_from_slice(raw);
        return;
    }
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\t' || !c.is_control() {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            } else if (c as u32) < 0x100 {
                let _ = write!(out, "\\x{:02x}", c as u32);
            } else {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
}

/// `2026-12-01T10:00:00.123Z`.
fn timestamp(t: SystemTime, out: &mut Vec<u8>) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_date(secs / 86_400);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date `days` after 1970-01-01: counted in 400-year eras of 146097
/// days from 0000-03-01, so that the leap day ends each year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// What the collector of one instance shares with the instance's handle.
struct Shared {
    pipes: [pipe::Receiver; 2],
    state: Mutex<Tagger>,
}

/// How a read of a pipe ended.
#[derive(PartialEq)]
enum Drained {
    /// Nothing more to read now.
    Empty,
    /// The budget was used up; more may wait.
    Budget,
    /// Every writer has closed it.
    Closed,
}

impl Shared {
    fn tagger(&self) -> parking_lot::MutexGuard<'_, Tagger> {
        self.state.lock()
    }

    /// Reads what stream `i` holds, up to `budget` bytes, into `tagger`: through the reactor
    /// (whose readiness an empty pipe clears), or at once, whatever the reactor has noticed
    /// yet (the end of a request).
    fn read(&self, tagger: &mut Tagger, i: usize, budget: usize, now: bool) -> Drained {
        let read = if now {
            self.read_raw(tagger, i, budget)
        } else {
            self.pipes[i].try_io(|| self.read_raw(tagger, i, budget))
        };
        let drained = match read {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Drained::Empty,
            Err(_) => {
                tagger.closed[i] = true;
                tagger.finish_lines();
                Drained::Closed
            }
        };
        tagger.flush();
        drained
    }

    /// Reads stream `i` until it is empty (`WouldBlock`), closed, or `budget` bytes are taken.
    fn read_raw(&self, tagger: &mut Tagger, i: usize, budget: usize) -> io::Result<Drained> {
        if tagger.closed[i] {
            return Ok(Drained::Closed);
        }
        let mut buf = [0u8; READ_CHUNK];
        let mut taken = 0;
        while taken < budget {
            match kindling_sandbox::stdio::read(self.pipes[i].as_fd(), &mut buf) {
                Ok(0) => {
                    tagger.closed[i] = true;
                    tagger.finish_lines();
                    return Ok(Drained::Closed);
                }
                Ok(n) => {
                    tagger.take(i, &buf[..n]);
                    taken += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Drained::Budget)
    }
}

/// Reads an instance's pipes as they fill, until both are closed.
async fn collect(shared: Arc<Shared>) {
    loop {
        let open = shared.tagger().closed.map(|c| !c);
        if !open[0] && !open[1] {
            break;
        }
        let (i, ready) = tokio::select! {
            r = shared.pipes[0].readable(), if open[0] => (0, r),
            r = shared.pipes[1].readable(), if open[1] => (1, r),
        };
        if ready.is_err() {
            shared.tagger().closed[i] = true;
            continue;
        }
        // A read that finds the pipe empty clears its readiness.
        let drained = {
            let mut tagger = shared.tagger();
            shared.read(&mut tagger, i, READ_BUDGET, false)
        };
        if drained == Drained::Budget {
            tokio::task::yield_now().await;
        }
    }
    let mut tagger = shared.tagger();
    tagger.finish_lines();
    tagger.flush();
}

/// The handle of one instance's output collection: says which request the instance serves.
pub struct InstanceOutput {
    shared: Arc<Shared>,
}

impl InstanceOutput {
    /// The instance starts serving `request`: what it writes from now on is tagged with it.
    pub fn begin(&self, request: &str) {
        let mut tagger = self.shared.tagger();
        // A background line still open ends here.
        tagger.finish_lines();
        tagger.flush();
        let end = request
            .char_indices()
            .nth(MAX_REQUEST_ID)
            .map_or(request.len(), |(i, _)| i);
        tagger.request = Some(request[..end].to_string());
    }

    /// The request was answered (or given up on): what the instance wrote for it is read now,
    /// tagged with it; what comes later is background.
    pub fn end(&self) {
        let mut tagger = self.shared.tagger();
        for i in 0..2 {
            self.shared.read(&mut tagger, i, DRAIN_BUDGET, true);
        }
        tagger.finish_lines();
        tagger.flush();
        tagger.request = None;
    }
}

/// Reads what is appended to a function's log, across rotations.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    /// The inode read from, and how far.
    ino: u64,
    offset: u64,
}

impl Follower {
    fn at(path: PathBuf, ino: u64, offset: u64) -> Self {
        Self {
            path,
            file: None,
            ino,
            offset,
        }
    }

    /// One look at the log: the bytes written since the last (whole lines, unless a write was
    /// caught halfway), or `None` if there are none yet; look again after
    /// [`Follower::poll_interval`].
    pub fn step(&mut self) -> io::Result<Option<Vec<u8>>> {
        for _ in 0..2 {
            if self.file.is_none() {
                match File::open(&self.path) {
                    Ok(f) => {
                        let ino = f.metadata()?.ino();
                        if ino != self.ino {
                            self.ino = ino;
                            self.offset = 0;
                        }
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            let Some(file) = self.file.as_mut() else {
                return Ok(None);
            };
            let len = file.metadata()?.len();
            if len < self.offset {
                self.offset = 0;
            }
            if len > self.offset {
                let take = (len - self.offset).min(FOLLOW_CHUNK as u64);
                file.seek(SeekFrom::Start(self.offset))?;
                let mut buf = Vec::with_capacity(take as usize);
                file.take(take).read_to_end(&mut buf)?;
                self.offset += buf.len() as u64;
                return Ok(Some(buf));
            }
            // At the end of the file read from: if the log rotated meanwhile, that file is
            // complete (the worker writes no more to it) and the new one follows.
            match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() != self.ino => {
                    if file.metadata()?.len() > self.offset {
                        continue;
                    }
                    self.file = None;
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// How long to wait between looks.
    pub fn poll_interval() -> Duration {
        FOLLOW_POLL
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(max_file_bytes: u64, max_files: usize, max_line_bytes: usize) -> LogLimits {
        LogLimits {
            max_file_bytes,
            max_files,
            max_line_bytes,
        }
    }

    /// A tagger writing to a fresh log; returns it and the log's path.
    fn tagger(dir: &Path, l: LogLimits) -> (Tagger, PathBuf) {
        let path = dir.join("f.log");
        let log = Arc::new(Mutex::new(FunctionLog::new(path.clone(), l)));
        (Tagger::new("sb-1-2", &l, log), path)
    }

    /// The log's lines without their timestamps.
    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (ts, rest) = l.split_once(' ').unwrap();
                assert_eq!(ts.len(), 24, "{ts}");
                assert!(ts.ends_with('Z'), "{ts}");
                rest.to_string()
            })
            .collect()
    }

    #[test]
    fn lines_are_tagged_with_sandbox_stream_and_request() {
        let dir = tempfile::tempdir().unwrap();
        let (mut t, path) = tagger(dir.path(), limits(1 << 20, 1, 100));
        t.take(0, b"before\n");
        t.request = Some("r-1".into());
        // Split across reads, both streams interleaved.
        t.take(0, b"hel");
        t.take(1, b"oops\n");
        t.take(0, b"lo\nworld\n");
        t.take(0, b"no newline");
        t.finish_lines();
        t.request = None;
        t.take(1, b"after\n");
        t.flush();
        assert_eq!(
            lines(&path),
            [
                "sb-1-2 stdout background | before",
                "sb-1-2 stderr request=r-1 | oops",
                "sb-1-2 stdout request=r-1 | hello",
                "sb-1-2 stdout request=r-1 | world",
                "sb-1-2 stdout request=r-1 | no newline",
                "sb-1-2 stderr background | after",
            ]
        );
    }

    #[test]
    fn a_function_cannot_forge_or_hide_a_tag() {
        let dir = tempfile::tempdir().unwrap();
        let (mut t, path) = tagger(dir.path(), limits(1 << 20, 1, 100));
        t.take(
            0,
            b"x\r2026-01-01T00:00:00.000Z sb-9 stdout request=forged | y\n\x1b[2Jz\xff\tq\xc2\x9b\n",
        );
        t.flush();
        assert_eq!(
            lines(&path),
            [
                "sb-1-2 stdout background | x\\x0d2026-01-01T00:00:00.000Z sb-9 stdout request=forged | y",
                "sb-1-2 stdout background | \\x1b[2Jz\u{FFFD}\tq\\x9b",
            ]
        );
    }

    #[test]
    fn long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut t, path) = tagger(dir.path(), limits(1 << 20, 1, 100));
        let long = vec![b'a'; 250];
        t.take(0, &long[..150]);
        t.take(0, &long[150..]);
        t.take(0, b"\nshort\n");
        // Exactly at the limit is not cut.
        t.take(0, &[b'b'; 100]);
        t.take(0, b"\n");
        // A line without end is cut once, and whatever follows it up to its newline dropped.
        t.take(0, &vec![b'c'; 1000]);
        t.flush();
        let got = lines(&path);
        assert_eq!(
            got[0],
            format!("sb-1-2 stdout background | {} [truncated]", "a".repeat(100))
        );
        assert_eq!(got[1], "sb-1-2 stdout background | short");
        assert_eq!(
            got[2],
            format!("sb-1-2 stdout background | {}", "b".repeat(100))
        );
        assert_eq!(
            got[3],
            format!("sb-1-2 stdout background | {} [truncated]", "c".repeat(100))
        );
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn logs_rotate_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let l = limits(10_000, 2, 100);
        let (mut t, path) = tagger(dir.path(), l);
        for n in 0..5000 {
            t.take(0, format!("line {n}\n").as_bytes());
        }
        t.flush();
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let (r1, r2, r3) = (rotated(&path, 1), rotated(&path, 2), rotated(&path, 3));
        for p in [&path, &r1, &r2] {
            assert!(
                size(p) > 0 && size(p) <= 10_000,
                "{}: {}",
                p.display(),
                size(p)
            );
        }
        assert!(!r3.exists());
        // The newest lines are in the current file, the ones before them in .1.
        let last = lines(&path);
        assert_eq!(last.last().unwrap(), "sb-1-2 stdout background | line 4999");
        let before = lines(&r1);
        let n_before: usize = before
            .last()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let n_first: usize = last[0].rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(n_before + 1, n_first);
        // Files are the worker's alone.
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // No rotated files kept: the log starts over.
        let dir = tempfile::tempdir().unwrap();
        let (mut t, path) = tagger(dir.path(), limits(10_000, 0, 100));
        for n in 0..5000 {
            t.take(0, format!("line {n}\n").as_bytes());
        }
        t.flush();
        assert!(size(&path) <= 10_000);
        assert!(!rotated(&path, 1).exists());
    }

    #[test]
    fn tail_reads_back_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(dir.path(), limits(10_000, 2, 100)).unwrap();
        assert!(matches!(logs.tail("f", 10), Err(LogError::NotFound(_))));
        let (mut t, _) = tagger(dir.path(), limits(10_000, 2, 100));
        for n in 0..300 {
            t.take(0, format!("line {n}\n").as_bytes());
        }
        t.flush();
        assert!(rotated(&logs.path("f"), 1).exists());
        let tail = logs.tail("f", 250).unwrap();
        let text = String::from_utf8(tail.text).unwrap();
        let got: Vec<&str> = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        let want: Vec<String> = (50..300).map(|n| n.to_string()).collect();
        assert_eq!(got, want);
        assert_eq!(tail.lines, 250);
        assert!(logs.tail("f", 0).unwrap().text.is_empty());
        assert_eq!(logs.tail("f", 3).unwrap().lines, 3);
    }

    #[test]
    fn last_lines_of_a_text() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), (&b"b\nc\n"[..], 2));
        assert_eq!(last_lines(b"a\nb\nc\n", 5), (&b"a\nb\nc\n"[..], 3));
        assert_eq!(last_lines(b"a\nb", 1), (&b"b"[..], 1));
        assert_eq!(last_lines(b"", 3), (&b""[..], 0));
    }

    #[test]
    fn a_follower_continues_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let l = limits(10_000, 1, 100);
        let logs = Logs::open(dir.path(), l).unwrap();
        let mut follower = logs.follower("f");
        assert!(follower.step().unwrap().is_none());
        let (mut t, _) = tagger(dir.path(), l);
        let mut seen = Vec::new();
        for n in 0..400 {
            t.take(0, format!("line {n}\n").as_bytes());
            t.flush();
            while let Some(data) = follower.step().unwrap() {
                seen.extend(data);
            }
        }
        let text = String::from_utf8(seen).unwrap();
        let got: Vec<usize> = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(got, (0..400).collect::<Vec<_>>());
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_788), (2026, 12, 1));
        let mut out = Vec::new();
        timestamp(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_119_200_123),
            &mut out,
        );
        assert_eq!(String::from_utf8(out).unwrap(), "2026-12-01T10:00:00.123Z");
    }

    #[tokio::test]
    async fn an_instance_output_is_collected_and_tagged() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(dir.path(), limits(1 << 20, 1, 100)).unwrap();
        let (read, write) = OutputPipes::new().unwrap();
        let output = logs.collect("f", "sb-9", read).unwrap();
        let mut out = File::from(write.stdout);
        let mut err = File::from(write.stderr);
        out.write_all(b"idle\n").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        output.begin("req-1");
        out.write_all(b"in request\n").unwrap();
        err.write_all(b"partial").unwrap();
        // Read at the end of the request even if the collector has not got to it.
        output.end();
        out.write_all(b"later\n").unwrap();
        drop(out);
        drop(err);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            lines(&logs.path("f")),
            [
                "sb-9 stdout background | idle",
                "sb-9 stdout request=req-1 | in request",
                "sb-9 stderr request=req-1 | partial",
                "sb-9 stdout background | later",
            ]
        );
    }
}
