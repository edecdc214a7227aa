//! Fuzz targets: each parser of outside input, driven with arbitrary bytes, with the properties
//! that must hold whatever the input (no panic, bounded errors, nothing written outside the
//! destination). They are run by the libFuzzer targets under `fuzz/` and, replaying the
//! committed corpus plus a time-bounded mutation run, by `tests/fuzz_corpus.rs` in `cargo test`.
//! Not part of the worker's API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most bytes an error message from a parser may take, whatever the input.
const MAX_ERROR_BYTES: usize = 2048;

/// A fuzz target: arbitrary bytes in, a panic if a property fails.
pub type Target = fn(&[u8]);

/// A parser of a function's config file.
type ConfigParser = fn(&Path) -> Result<crate::function_config::FunctionConfig, String>;

/// The targets, by name (the corpus directory of each is `fuzz/corpus/<name>`).
pub const TARGETS: [(&str, Target); 7] = [
    ("archive", archive),
    ("requirements", requirements),
    ("instance_reply", instance_reply),
    ("zygote_frame", zygote_frame),
    ("storage_request", storage_request),
    ("worker_config", worker_config),
    ("function_config", function_config),
];

fn bounded(what: &str, message: &str) {
    assert!(
        message.len() <= MAX_ERROR_BYTES,
        "{what}: a {}-byte error message",
        message.len()
    );
}

/// A fresh empty directory of the fuzzing process; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kindling-fuzz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Archive extraction: `data` as a tar (gzip'd here unless it already is). Small limits keep
/// runs fast; whatever happens, nothing lands beside the destination and errors stay short.
pub fn archive(data: &[u8]) {
    let gz = if data.starts_with(&[0x1f, 0x8b]) {
        data.to_vec()
    } else {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip to memory");
        e.finish().expect("gzip to memory")
    };
    let scratch = Scratch::new();
    let dest = scratch.0.join("dest");
    std::fs::create_dir(&dest).expect("fuzz destination");
    let limits = crate::archive::ArchiveLimits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 1000,
    };
    match crate::archive::extract(&gz, &dest, &limits) {
        Ok(()) => {
            // What was extracted is a function directory the registry can hash.
            crate::archive::tree_hash(&dest).expect("hash of an extracted tree");
        }
        Err(e) => bounded("archive", &e.to_string()),
    }
    let beside: Vec<_> = std::fs::read_dir(&scratch.0)
        .expect("fuzz scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(beside, ["dest"], "extraction wrote beside its destination");
}

/// Requirements parsing: the policy in both modes and the lock parser. What the safe mode
/// accepts is canonical (it checks the same again) and names no URL or path.
pub fn requirements(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::packages::validate_requirements(&text, false) {
        Ok(reqs) => {
            assert!(!reqs.unsafe_lines);
            let again = crate::packages::validate_requirements(&reqs.lines.join("\n"), false)
                .expect("canonical requirements are accepted again");
            assert_eq!(again.lines, reqs.lines, "canonical form is not stable");
            for line in &reqs.lines {
                assert!(!line.starts_with('-'), "an option passed: {line}");
                assert!(!line.contains(" @ "), "a direct reference passed: {line}");
            }
        }
        Err(e) => bounded("requirements", &e.to_string()),
    }
    if let Err(e) = crate::packages::validate_requirements(&text, true) {
        bounded("requirements (unsafe allowed)", &e.to_string());
    }
    let _ = crate::packages::parse_compiled(&text);
}

/// An instance's reply frame payload (`<status> <ms>\n<body>`, or a web function's `http ...`).
pub fn instance_reply(data: &[u8]) {
    let _ = crate::instance::parse_reply(data.to_vec());
}

/// Feeds `data` to `read` through a socket pair, as a peer would send it, then hangs up.
fn through_socket<T>(
    data: &[u8],
    read: impl FnOnce(&mut std::os::unix::net::UnixStream) -> T,
) -> T {
    let (mut ours, mut theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = theirs.write_all(&data);
    });
    let out = read(&mut ours);
    drop(ours);
    let _ = writer.join();
    out
}

/// The zygote protocol's reply reader: a length-prefixed frame, then a typed reply.
pub fn zygote_frame(data: &[u8]) {
    through_socket(data, |s| {
        if let Err(e) = crate::zygote::read_reply(s, Duration::from_secs(1), None) {
            bounded("zygote frame", &e.to_string());
        }
    });
}

/// The object storage protocol's request parser (the payload of a frame, which the reader
/// bounds before it buffers it).
pub fn storage_request(data: &[u8]) {
    if let Err(e) = crate::storage::parse_request(data) {
        bounded("storage request", &e.to_string());
    }
}

/// The worker's TOML config.
pub fn worker_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = toml::from_str::<crate::config::Config>(&text) {
        let _ = cfg.validate();
    }
}

/// A function's `ol.yaml` and SeBS `config.json` (the first byte picks which).
pub fn function_config(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let scratch = Scratch::new();
    let (name, parse): (&str, ConfigParser) = if which % 2 == 0 {
        ("ol.yaml", crate::function_config::ol_config)
    } else {
        ("config.json", crate::function_config::sebs_config)
    };
    let path = scratch.0.join(name);
    std::fs::write(&path, rest).expect("fuzz config file");
    let _ = parse(&path);
}
