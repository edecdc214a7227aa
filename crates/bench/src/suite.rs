//! The benchmark suite of `benchmarks/` (SeBS layout): which benchmarks there are, the
//! function upload of each, its `config.json`, and its `input.py` run by `python3` (standard
//! library only) to generate the event and to validate outputs.

use crate::results::{tail, Invocation, Size, Status};
use anyhow::{anyhow, bail, Context, Result};
use flate2::write::GzEncoder;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Benchmarks in `dir`: directories with `input.py` and `python/function.py`.
pub fn discover(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the benchmarks directory {} (pass --benchmarks-dir)",
            dir.display()
        )
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !name.starts_with(['_', '.'])
            && path.join("input.py").is_file()
            && path.join("python").join("function.py").is_file()
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Checks `wanted` against the benchmarks in `dir`, naming the valid ones on a miss.
pub fn check_benchmarks(dir: &Path, wanted: &[String]) -> Result<()> {
    let valid = discover(dir)?;
    if valid.is_empty() {
        bail!("no benchmarks in {} (pass --benchmarks-dir)", dir.display());
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .filter(|w| !valid.contains(w))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        bail!(
            "unknown benchmark{} {}; valid benchmarks: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            valid.join(", ")
        );
    }
    Ok(())
}

/// A gzipped tar of function files, as the registry takes it: owned by root, mtime 0, in the
/// order they are added.
///
/// Not `kindling_worker::archive::pack_dir`, which packs one whole directory: a benchmark's
/// upload is `python/` without byte code, plus `config.json` from beside it, and the built-in
/// functions of `bench startup`/`fork`/`packages` are files in memory.
struct Packer(tar::Builder<GzEncoder<Vec<u8>>>);

impl Packer {
    fn new() -> Self {
        Packer(tar::Builder::new(GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        )))
    }

    fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn dir(&mut self, rel: &Path) -> Result<()> {
        let mut h = Self::header(0, 0o755, tar::EntryType::Directory);
        self.0.append_data(&mut h, rel, std::io::empty())?;
        Ok(())
    }

    fn file(&mut self, rel: impl AsRef<Path>, data: &[u8]) -> Result<()> {
        let mut h = Self::header(data.len() as u64, 0o644, tar::EntryType::Regular);
        self.0.append_data(&mut h, rel, data)?;
        Ok(())
    }

    /// The files and directories under `dir`, by name, without `__pycache__` and `.pyc`.
    fn tree(&mut self, root: &Path, dir: &Path) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            let rel = path.strip_prefix(root)?;
            let kind = e.file_type()?;
            if kind.is_dir() {
                if name == "__pycache__" {
                    continue;
                }
                self.dir(rel)?;
                self.tree(root, &path)?;
            } else if kind.is_file() && !name.ends_with(".pyc") {
                let data = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                self.file(rel, &data)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        Ok(self.0.into_inner()?.finish()?)
    }
}

/// The function upload of a benchmark, as run_local.py packs it: the files of `python/` at the
/// root (without `__pycache__` and `.pyc`), plus `config.json`.
pub fn pack_benchmark(dir: &Path) -> Result<Vec<u8>> {
    pack_benchmark_with_memory(dir, None)
}

/// [`pack_benchmark`] with config.json's `memory` set to `memory_mb` if given (a trace's copy
/// of a benchmark with a limit of its own).
pub fn pack_benchmark_with_memory(dir: &Path, memory_mb: Option<u64>) -> Result<Vec<u8>> {
    let mut packer = Packer::new();
    let code = dir.join("python");
    packer.tree(&code, &code)?;
    let config = dir.join("config.json");
    let text = match config.is_file() {
        true => Some(std::fs::read(&config)?),
        false => None,
    };
    match (text, memory_mb) {
        (Some(text), None) => packer.file("config.json", &text)?,
        (text, Some(m)) => {
            let mut json = match text {
                Some(t) => serde_json::from_slice::<Value>(&t)
                    .with_context(|| format!("{} is not JSON", config.display()))?,
                None => serde_json::json!({}),
            };
            json["memory"] = m.into();
            packer.file("config.json", &serde_json::to_vec(&json)?)?;
        }
        (None, None) => {}
    }
    packer.finish()
}

/// The upload of a function given as `(file name, contents)`.
pub fn pack_files(files: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut packer = Packer::new();
    for (name, body) in files {
        packer.file(name, body.as_bytes())?;
    }
    packer.finish()
}

/// Runs `input.py` of a benchmark: `generate <size> [function's storage dir]` prints
/// `{"event": ...}`, after writing the benchmark's input objects as `<dir>/<bucket>/<key>`;
/// `validate` reads `{"event": ..., "outputs": [...]}` and prints one `{"ok", "error"}` per
/// output (a validator that raises is a failed check, never a pass).
const INPUT_DRIVER: &str = r#"
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("kindling_bench_input", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
if sys.argv[2] == "generate":
    size = sys.argv[3]
    storage = sys.argv[4] if len(sys.argv) > 4 else ""
    if hasattr(m, "storage_inputs"):
        if not storage:
            print("this benchmark reads object storage: pass --storage-dir (the worker's storage directory)", file=sys.stderr)
            sys.exit(3)
        for bucket, objects in m.storage_inputs(size).items():
            for key, data in objects.items():
                path = os.path.join(storage, bucket, key)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
    json.dump({"event": m.generate_input(size)}, sys.stdout)
else:
    req = json.load(sys.stdin)
    out = []
    for o in req["outputs"]:
        try:
            out.append({"ok": bool(m.validate(req["event"], o)), "error": None})
        except Exception as e:
            out.append({"ok": False, "error": "validate() raised %s: %s" % (type(e).__name__, e)})
    json.dump(out, sys.stdout)
"#;

async fn run_driver(python: &str, args: &[&str], stdin: Vec<u8>) -> Result<Vec<u8>> {
    let mut child = tokio::process::Command::new(python)
        .arg("-c")
        .arg(INPUT_DRIVER)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {python} (pass --python)"))?;
    let mut pipe = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
    let writer = tokio::spawn(async move {
        let _ = pipe.write_all(&stdin).await;
    });
    let out = child.wait_with_output().await?;
    let _ = writer.await;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{}", tail(err.trim_end(), 3000));
    }
    Ok(out.stdout)
}

/// The event of a benchmark for `size` (`generate_input(size)`), after writing its input
/// objects under `storage_dir` (the function's buckets) if it has any.
pub async fn generate_event(
    python: &str,
    input_py: &Path,
    size: Size,
    storage_dir: Option<&Path>,
) -> Result<Value> {
    let path = input_py.to_string_lossy();
    let storage = storage_dir.map(|p| p.to_string_lossy().into_owned());
    let mut args = vec![path.as_ref(), "generate", size.as_str()];
    if let Some(s) = &storage {
        args.push(s);
    }
    let out = run_driver(python, &args, Vec::new())
        .await
        .context("generate_input() failed")?;
    let mut v: Value = serde_json::from_slice(&out).context("generate_input() printed no JSON")?;
    Ok(v["event"].take())
}

/// Validates every distinct output of `invocations` once, turning `ok` into `incorrect` where
/// `validate()` says no (or raises, or the validator cannot run).
pub async fn validate(
    python: &str,
    input_py: &Path,
    event: &Value,
    invocations: &mut [Invocation],
) -> Result<()> {
    let mut distinct: Vec<Value> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut which = vec![None; invocations.len()];
    for (i, inv) in invocations.iter().enumerate() {
        if inv.status != Status::Ok {
            continue;
        }
        let output = inv.handler_output().cloned().unwrap_or(Value::Null);
        let key = output.to_string();
        let n = *index.entry(key).or_insert_with(|| {
            distinct.push(output);
            distinct.len() - 1
        });
        which[i] = Some(n);
    }
    if distinct.is_empty() {
        return Ok(());
    }
    let request = serde_json::to_vec(&serde_json::json!({"event": event, "outputs": distinct}))?;
    let path = input_py.to_string_lossy();
    let verdicts: Vec<(bool, Option<String>)> =
        match run_driver(python, &[path.as_ref(), "validate"], request).await {
            Ok(out) => {
                #[derive(Deserialize)]
                struct Verdict {
                    ok: bool,
                    error: Option<String>,
                }
                let v: Vec<Verdict> = serde_json::from_slice(&out)
                    .context("validate() driver printed no JSON list")?;
                v.into_iter().map(|v| (v.ok, v.error)).collect()
            }
            Err(e) => vec![(false, Some(format!("the validator failed: {e:#}"))); distinct.len()],
        };
    for (inv, n) in invocations.iter_mut().zip(which) {
        let Some(n) = n else { continue };
        let (ok, why) = verdicts
            .get(n)
            .cloned()
            .unwrap_or((false, Some("the validator gave no verdict".into())));
        if !ok {
            inv.status = Status::Incorrect;
            inv.stats.failure = true;
            inv.error = Some(why.unwrap_or_else(|| "validate() returned False".into()));
        }
    }
    Ok(())
}

fn config_value(dir: &Path, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?[key].as_f64()
}

/// `memory` of the benchmark's config.json (MB).
pub fn config_memory(dir: &Path) -> Option<u64> {
    config_value(dir, "memory").map(|m| m as u64)
}

/// How long the client waits for one reply: twice the function's `timeout` (60 s when
/// config.json has none) plus 30 s, so that the worker's own timeout answers first.
pub fn reply_limit(dir: &Path) -> Duration {
    let timeout = config_value(dir, "timeout")
        .filter(|t| *t > 0.0)
        .unwrap_or(60.0);
    Duration::from_secs_f64(timeout * 2.0 + 30.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Fails the calling test when `python3` cannot run: a test that needs it must not pass
    /// without it.
    pub(crate) fn require_python3() {
        let ran = std::process::Command::new("python3")
            .args(["-c", ""])
            .status();
        assert!(
            ran.as_ref().is_ok_and(|s| s.success()),
            "this test runs python3, which is not installed or does not run ({ran:?}); \
             install python3 (CI has it)"
        );
    }

    #[test]
    fn unknown_benchmarks_are_named_with_the_valid_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        for b in ["gzip", "json_serdes", "_shared"] {
            std::fs::create_dir_all(dir.path().join(b).join("python")).expect("mkdir");
            std::fs::write(dir.path().join(b).join("input.py"), "").expect("write");
            std::fs::write(dir.path().join(b).join("python/function.py"), "").expect("write");
        }
        assert_eq!(
            discover(dir.path()).expect("discover"),
            ["gzip", "json_serdes"]
        );
        check_benchmarks(dir.path(), &["gzip".into()]).expect("known");
        let err = check_benchmarks(dir.path(), &["gzip".into(), "nope".into()])
            .expect_err("unknown")
            .to_string();
        assert_eq!(
            err,
            "unknown benchmark nope; valid benchmarks: gzip, json_serdes"
        );
        let err =
            check_benchmarks(&dir.path().join("missing"), &["gzip".into()]).expect_err("no dir");
        assert!(format!("{err:#}").contains("--benchmarks-dir"));
    }

    #[test]
    fn package_holds_python_files_and_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = dir.path();
        std::fs::create_dir_all(b.join("python/templates")).expect("mkdir");
        std::fs::create_dir_all(b.join("python/__pycache__")).expect("mkdir");
        std::fs::write(b.join("python/function.py"), "def handler(e): return {}\n").expect("w");
        std::fs::write(b.join("python/templates/page.html"), "<p/>").expect("w");
        std::fs::write(b.join("python/__pycache__/function.cpython-311.pyc"), "x").expect("w");
        std::fs::write(b.join("config.json"), r#"{"memory": 256}"#).expect("w");
        std::fs::write(b.join("input.py"), "").expect("w");
        let packed = pack_benchmark(b).expect("pack");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(packed.as_slice()));
        let mut names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "config.json",
                "function.py",
                "templates",
                "templates/page.html"
            ]
        );
        assert_eq!(config_memory(b), Some(256));
    }

    #[test]
    fn the_input_driver_generates_and_validates() {
        // input.py is standard-library Python; CI has python3, so its absence is a failure.
        require_python3();
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("input.py");
        std::fs::write(
            &input,
            "def generate_input(size):\n    return {'n': {'test': 1}[size]}\n\n\
             def validate(event, output):\n    if output['result'] == 'boom':\n        raise ValueError('bad')\n    \
             return output['result'] == event['n'] * 2\n",
        )
        .expect("write");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let event = generate_event("python3", &input, Size::Test, None)
                .await
                .expect("gen");
            assert_eq!(event, serde_json::json!({"n": 1}));
            let mk = |out: Value| Invocation {
                output: serde_json::json!({"result": {"result": out}}),
                ..Invocation::failed(String::new(), 0.0, 0.0, Duration::ZERO)
            };
            let mut invs = vec![mk(2.into()), mk(3.into()), mk("boom".into()), mk(2.into())];
            for i in &mut invs {
                i.status = Status::Ok;
                i.error = None;
            }
            invs.push(Invocation::failed(
                "HTTP 500".into(),
                0.0,
                0.0,
                Duration::ZERO,
            ));
            validate("python3", &input, &event, &mut invs)
                .await
                .expect("validate");
            let statuses: Vec<Status> = invs.iter().map(|i| i.status).collect();
            assert_eq!(
                statuses,
                [
                    Status::Ok,
                    Status::Incorrect,
                    Status::Incorrect,
                    Status::Ok,
                    Status::Error
                ]
            );
            assert!(invs[2]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("ValueError")));
            assert!(invs[1].stats.failure);
        });
    }
}
