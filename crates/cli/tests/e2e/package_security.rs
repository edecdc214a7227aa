//! Hostile requirements, builds and archives (issue 9, items 3 and 7), end to end against a real
//! worker and the real package index: requirement lines that used to reach uv as paths or URLs,
//! a package build that tries to poison the resolution of later deploys, the ownership of the
//! store and the shared uv cache, a GNU long-name tar bomb, and a 10 MB requirement line.

use crate::harness::Worker;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const UV: &str = "uv = \"/usr/local/bin/uv\"\n";
/// The default uids of installer jobs (config `installer_uid`, `build_uid`).
const INSTALLER_UID: u32 = 65530;
const BUILD_UID: u32 = 65531;

fn pack(files: &[(&str, &[u8])]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (f, body) in files {
        std::fs::write(dir.path().join(f), body).expect("write");
    }
    kindling_worker::archive::pack_dir(dir.path()).expect("pack")
}

fn deploy(w: &Worker, name: &str, files: &[(&str, &[u8])]) -> (u16, Value, usize) {
    let r = w.request("POST", &format!("/registry/{name}"), &[], &pack(files));
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| serde_json::json!({ "error": r.text() }));
    (r.status, v, r.body.len())
}

const SIX_FN: &[u8] = b"import six\n\ndef f(event):\n    return {\"six\": six.__file__}\n";

/// Every entry under `root`, not following symlinks.
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Each line that reached uv as a local path or a URL before (research/security.md C13) is
/// refused with a 400 naming it; nothing reaches uv.
#[test]
fn bypassing_requirement_lines_are_refused() {
    let w = Worker::start(UV);
    for line in [
        "foo/bar",
        "evil@/kindling",
        "evil\t@\t/kindling",
        "evil@file:/kindling",
        "evil@http:/127.0.0.1:9/x.tar.gz",
    ] {
        let reqs = format!("six\n{line}\n");
        let (status, v, _) = deploy(
            &w,
            "fn",
            &[("f.py", SIX_FN), ("requirements.txt", reqs.as_bytes())],
        );
        let msg = v["error"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{line:?}: {v}");
        assert!(
            msg.contains("refused") && msg.contains("line 2"),
            "{line:?}: {msg}"
        );
        assert!(msg.contains(line.trim()), "{line:?}: {msg}");
    }
    assert_eq!(w.stats()["pull-package.cnt"], 0);
    w.assert_no_leaks();
    w.stop();
}

/// A 10 MB requirement line (a 10 KB upload) gets a short 400 (it was a 31 MB response).
#[test]
fn a_10_mb_requirement_line_gets_a_short_400() {
    let w = Worker::start(UV);
    let mut reqs = b"six==".to_vec();
    reqs.resize(10 << 20, b'1');
    let archive = pack(&[("f.py", SIX_FN), ("requirements.txt", &reqs)]);
    assert!(archive.len() < 64 << 10, "{} bytes", archive.len());
    let r = w.request("POST", "/registry/big", &[], &archive);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.body.len() < 1024, "a {}-byte response", r.body.len());
    assert!(r.text().contains("larger than the limit"), "{}", r.text());
    w.assert_no_leaks();
    w.stop();
}

/// Peak RSS (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// A gzip'd tar whose first entry is a GNU long name of `len` bytes (research/security.md C9:
/// 611 KB gzip'd, 629 MB of name), written through the encoder without holding it in memory.
fn long_name_bomb(len: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_mode(0o644);
    header.set_size(len);
    header.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(header.as_bytes()).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        gz.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    // Padding to the next block, then the entry the name describes.
    let pad = (512 - len % 512) % 512;
    gz.write_all(&vec![0u8; pad as usize]).unwrap();
    let mut file = tar::Header::new_gnu();
    file.as_old_mut().name[..1].copy_from_slice(b"x");
    file.set_mode(0o644);
    file.set_size(0);
    file.set_cksum();
    gz.write_all(file.as_bytes()).unwrap();
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap()
}

/// A long-name tar bomb is refused at once, with a short message and without the worker's
/// memory growing (it took 14 s, 3.8 GB of RSS and a 629 MB response).
#[test]
fn long_name_tar_bomb_is_refused_quickly_with_bounded_memory() {
    let bomb = long_name_bomb(256 << 20);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let w = Worker::start("");
    let before = peak_rss(w.pid());
    let started = Instant::now();
    let r = w.request("POST", "/registry/bomb", &[], &bomb);
    let took = started.elapsed();
    let grew = peak_rss(w.pid()).saturating_sub(before);
    assert_eq!(
        r.status,
        400,
        "{}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
    );
    assert!(r.body.len() < 512, "a {}-byte response", r.body.len());
    assert!(r.text().contains("long name"), "{}", r.text());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        grew < 32 << 20,
        "the worker's peak RSS grew by {} MB",
        grew >> 20
    );
    assert!(w.request("GET", "/registry/bomb", &[], b"").status == 404);
    w.assert_no_leaks();
    w.stop();
}

/// The store holds installed packages root-owned and read-only; the shared uv cache belongs to
/// the installer uid alone; no job's scratch stays behind.
#[test]
fn the_store_is_sealed_and_the_cache_is_the_installers() {
    let w = Worker::start(UV);
    let (status, v, _) = deploy(
        &w,
        "six",
        &[("f.py", SIX_FN), ("requirements.txt", b"six\n")],
    );
    assert_eq!(status, 200, "{v}");
    let r = w.run("six", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let root = w.root.path();
    let store = walk(&root.join("packages"));
    assert!(store.len() > 5, "{store:?}");
    for p in store.iter().skip(1) {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{}", p.display());
        assert_eq!(
            m.permissions().mode() & 0o222,
            0,
            "{} is writable",
            p.display()
        );
    }
    let cache = walk(&root.join("pkgwork/cache"));
    assert!(cache.len() > 5, "the shared cache was not used: {cache:?}");
    for p in &cache {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert_eq!(
            m.uid(),
            INSTALLER_UID,
            "{} is not the installer's",
            p.display()
        );
    }
    let top = std::fs::metadata(root.join("pkgwork/cache")).unwrap();
    assert_eq!(top.permissions().mode() & 0o777, 0o700);
    let jobs: Vec<_> = std::fs::read_dir(root.join("pkgwork/jobs"))
        .unwrap()
        .collect();
    assert!(jobs.is_empty(), "scratch left behind: {jobs:?}");
    w.assert_no_leaks();
    w.stop();
}

/// An in-tree build backend that reports who it runs as and what it could write, leaves a
/// `uv.toml` pointing at a bogus index in its working directory, its cache and every other
/// place it can reach, then fails so that its report reaches the deploy's error.
const BACKEND: &str = r#"
import json, os, sys

def _try_write(path, make_parents=True):
    try:
        if make_parents:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write('index-url = "http://127.0.0.1:9/simple"\n[[index]]\nurl = "http://127.0.0.1:9/simple"\ndefault = true\n')
        return "written"
    except OSError as e:
        return e.__class__.__name__

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    cwd = os.getcwd()
    cache = cwd
    while cache != "/" and os.path.basename(cache) != "cache":
        cache = os.path.dirname(cache)
    report = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": _try_write(os.path.join(cwd, "uv.toml")),
        "cache": _try_write(os.path.join(cache, "uv.toml")),
        # The host paths of the store and the shared cache (a directory of that name in the
        # sandbox's own /tmp would not be them: no parents are made).
        "store": _try_write("@STORE@/uv.toml", False),
        "shared_cache": _try_write("@CACHE@/uv.toml", False),
        "packages": _try_write("/packages/uv.toml"),
        "home": _try_write(os.path.expanduser("~/.config/uv/uv.toml")),
    }
    sys.stderr.write("KINDLING-PROBE " + json.dumps(report, separators=(",", ":")) + "\n")
    sys.stderr.flush()
    raise RuntimeError("probe done")
"#;

/// An sdist whose metadata is dynamic (so resolving it runs its build backend).
fn probe_sdist(store: &Path, cache: &Path) -> Vec<u8> {
    let backend = BACKEND
        .replace("@STORE@", &store.display().to_string())
        .replace("@CACHE@", &cache.display().to_string());
    let pyproject = "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"evilbuild\"\ndynamic = [\"version\", \"dependencies\"]\n";
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in [
        ("pyproject.toml", pyproject),
        ("backend.py", backend.as_str()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder
            .append_data(&mut h, format!("evilbuild-0.1/{name}"), data.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A local sdist let through by `allow_unsafe_requirements` is built as the unprivileged build
/// uid in a scratch directory with a private cache: the `uv.toml` it writes into its working
/// directory and its cache, and its attempts on the store and the shared cache, change nothing
/// for the next deploy, which resolves `six` from the real index and runs.
#[test]
fn a_hostile_build_cannot_affect_later_installs() {
    let w = Worker::start(&format!("{UV}allow_unsafe_requirements = true\n"));
    let root = w.root.path().to_path_buf();
    let sdist = probe_sdist(&root.join("packages"), &root.join("pkgwork/cache"));
    let (status, v, len) = deploy(
        &w,
        "evil",
        &[
            ("f.py", b"def f(event):\n    return {}\n"),
            ("evilbuild-0.1.tar.gz", &sdist),
            (
                "requirements.txt",
                b"evilbuild @ file:///handler/evilbuild-0.1.tar.gz\n",
            ),
        ],
    );
    assert_eq!(status, 400, "{v}");
    assert!(len < 32 << 10, "a {len}-byte response");
    let msg = v["error"].as_str().unwrap();
    let probe = msg
        .lines()
        .find_map(|l| l.split_once("KINDLING-PROBE ").map(|(_, j)| j))
        .unwrap_or_else(|| panic!("the build never ran:\n{msg}"));
    let report: Value = serde_json::from_str(probe).unwrap_or_else(|e| panic!("{e}: {probe}"));
    assert_eq!(report["uid"], BUILD_UID, "{report}");
    assert_eq!(report["gid"], BUILD_UID, "{report}");
    // Its own working directory and cache are its to write (and thrown away) ...
    assert_eq!(report["cwd"], "written", "{report}");
    assert_eq!(report["cache"], "written", "{report}");
    // ... the worker's store and shared cache are not even visible.
    assert_ne!(report["store"], "written", "{report}");
    assert_ne!(report["shared_cache"], "written", "{report}");

    let uv_tomls: Vec<_> = walk(&root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "uv.toml"))
        .collect();
    assert!(uv_tomls.is_empty(), "the build left {uv_tomls:?}");
    for p in walk(&root.join("pkgwork/cache")) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_ne!(m.uid(), BUILD_UID, "{} is the build's", p.display());
    }
    let jobs: Vec<_> = std::fs::read_dir(root.join("pkgwork/jobs"))
        .unwrap()
        .collect();
    assert!(jobs.is_empty(), "scratch left behind: {jobs:?}");

    // Another function's deploy still resolves from the real index and runs.
    let (status, v, _) = deploy(
        &w,
        "other",
        &[("f.py", SIX_FN), ("requirements.txt", b"six\n")],
    );
    assert_eq!(status, 200, "{v}\n{}", w.log_text());
    let r = w.run("other", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["six"]
        .as_str()
        .unwrap()
        .starts_with("/packages/six=="));
    w.assert_no_leaks();
    w.stop();
}
