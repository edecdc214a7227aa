//! The real-trace formats: Azure Functions 2019 (`invocations_per_function_md.anon.dXX.csv`)
//! and Huawei 2023 (`requests_minute/day_XX.csv`), read for a window of minutes, split per
//! minute into per-second arrivals (TrEnv's even and skewed splits, with per-function caps) and
//! mapped onto the deployed function names.

use super::pyrandom::PyRandom;
use super::workload::{spec_of, Load, Workload};
use std::path::{Path, PathBuf};

/// Why a trace cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Malformed {
        path: PathBuf,
        line: u64,
        why: String,
    },
    #[error("{path}: {why}")]
    Unusable { path: PathBuf, why: String },
}

/// The trace formats `kindling bench trace` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Azure,
    Huawei,
}

/// Which minutes of which day, and how many functions to take.
#[derive(Debug, Clone)]
pub struct Window {
    /// Day of the trace (Azure: `dXX`, 1..14; Huawei: `day_XX`, 0..25).
    pub day: u32,
    /// First minute of the window, from the day's start.
    pub start_minute: usize,
    /// Minutes read; the first `warmup_minutes` warm up.
    pub minutes: usize,
    pub warmup_minutes: usize,
    /// Trace functions taken (the busiest in the window).
    pub functions: usize,
}

/// Per-minute counts of one trace function in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceFunction {
    pub id: String,
    pub per_minute: Vec<u32>,
}

/// The file of `format` for `day` when `path` is a directory, else `path`.
pub fn trace_file(format: Format, path: &Path, day: u32) -> PathBuf {
    if !path.is_dir() {
        return path.to_path_buf();
    }
    match format {
        Format::Azure => path.join(format!("invocations_per_function_md.anon.d{day:02}.csv")),
        Format::Huawei => {
            let nested = path.join("requests_minute");
            let dir = if nested.is_dir() {
                nested
            } else {
                path.to_path_buf()
            };
            dir.join(format!("day_{day:02}.csv"))
        }
    }
}

fn reader(path: &Path) -> Result<csv::Reader<std::fs::File>, TraceError> {
    let file = std::fs::File::open(path).map_err(|source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(csv::ReaderBuilder::new().flexible(true).from_reader(file))
}

fn malformed(path: &Path, line: u64, why: impl Into<String>) -> TraceError {
    TraceError::Malformed {
        path: path.to_path_buf(),
        line,
        why: why.into(),
    }
}

/// A count cell: an integer, a float (Huawei writes `3.0`; `int(v + 1e-3)` as TrEnv), or
/// empty/NaN for none.
fn count(cell: &str) -> Option<u32> {
    let cell = cell.trim();
    if cell.is_empty() || cell.eq_ignore_ascii_case("nan") {
        return Some(0);
    }
    if let Ok(n) = cell.parse::<u32>() {
        return Some(n);
    }
    let v: f64 = cell.parse().ok()?;
    (v.is_finite() && v >= 0.0 && v < f64::from(u32::MAX)).then_some((v + 1e-3) as u32)
}

/// Reads the functions of an Azure 2019 invocations file: `HashOwner, HashApp, HashFunction,
/// Trigger, 1..1440`, one row per function.
pub fn read_azure(path: &Path, w: &Window) -> Result<Vec<TraceFunction>, TraceError> {
    let mut r = reader(path)?;
    let header = r
        .headers()
        .map_err(|e| malformed(path, 1, e.to_string()))?
        .clone();
    let expected = ["HashOwner", "HashApp", "HashFunction", "Trigger"];
    if header.len() != 4 + 1440
        || header.iter().take(4).ne(expected)
        || header
            .iter()
            .skip(4)
            .enumerate()
            .any(|(i, h)| h != (i + 1).to_string())
    {
        return Err(malformed(
            path,
            1,
            "not an Azure 2019 invocations header (HashOwner,HashApp,HashFunction,Trigger,1..1440)",
        ));
    }
    check_window(path, w, 1440)?;
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            malformed(path, line, e.to_string())
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() != header.len() {
            return Err(malformed(
                path,
                line,
                format!("{} columns, the header has {}", rec.len(), header.len()),
            ));
        }
        let mut per_minute = Vec::with_capacity(w.minutes);
        for m in 0..1440 {
            let cell = &rec[4 + m];
            let n = cell.trim().parse::<u32>().map_err(|_| {
                malformed(
                    path,
                    line,
                    format!("minute {}: {cell:?} is not a count", m + 1),
                )
            })?;
            if (w.start_minute..w.start_minute + w.minutes).contains(&m) {
                per_minute.push(n);
            }
        }
        let id = format!(
            "{}/{}",
            &rec[1].get(..8).unwrap_or(&rec[1]),
            rec[2].get(..8).unwrap_or(&rec[2])
        );
        out.push(TraceFunction { id, per_minute });
    }
    Ok(out)
}

/// Reads the functions of a Huawei 2023 `day_XX.csv`: columns `day, time, 0..N`, one row per
/// minute (1440), a count or nothing per function.
pub fn read_huawei(path: &Path, w: &Window) -> Result<Vec<TraceFunction>, TraceError> {
    let mut r = reader(path)?;
    let header = r
        .headers()
        .map_err(|e| malformed(path, 1, e.to_string()))?
        .clone();
    if header.len() < 3 || &header[0] != "day" || &header[1] != "time" {
        return Err(malformed(
            path,
            1,
            "not a Huawei 2023 requests_minute header (day,time,<function>...)",
        ));
    }
    let mut out: Vec<TraceFunction> = header
        .iter()
        .skip(2)
        .map(|id| TraceFunction {
            id: id.to_string(),
            per_minute: Vec::with_capacity(w.minutes),
        })
        .collect();
    let mut rows = 0;
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            malformed(path, line, e.to_string())
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() != header.len() {
            return Err(malformed(
                path,
                line,
                format!("{} columns, the header has {}", rec.len(), header.len()),
            ));
        }
        for (c, cell) in rec.iter().enumerate() {
            let n = count(cell).ok_or_else(|| {
                malformed(
                    path,
                    line,
                    format!("column {:?}: {cell:?} is not a count", &header[c]),
                )
            })?;
            if c >= 2 && (w.start_minute..w.start_minute + w.minutes).contains(&rows) {
                out[c - 2].per_minute.push(n);
            }
        }
        rows += 1;
    }
    check_window(path, w, rows)?;
    Ok(out)
}

fn check_window(path: &Path, w: &Window, minutes: usize) -> Result<(), TraceError> {
    if w.start_minute + w.minutes > minutes || w.minutes == 0 {
        return Err(TraceError::Unusable {
            path: path.to_path_buf(),
            why: format!(
                "the window (minutes {}..{}) is outside the trace's {minutes} minutes",
                w.start_minute,
                w.start_minute + w.minutes
            ),
        });
    }
    Ok(())
}

/// TrEnv's even split: 59 cut points uniform in [0, n], sorted; the gaps are the seconds.
pub fn even_split(n: u32, rng: &mut PyRandom) -> Vec<u32> {
    let mut cuts: Vec<u32> = (0..59).map(|_| rng.randint(0, n)).collect();
    cuts.sort_unstable();
    let mut edges = Vec::with_capacity(61);
    edges.push(0);
    edges.extend(cuts);
    edges.push(n);
    edges.windows(2).map(|e| e[1] - e[0]).collect()
}

/// TrEnv's skewed split: 60 Poisson(0.1) weights scaled to `n` and floored, the remainder added
/// one by one to random seconds (all weights zero: the whole minute in one random second).
pub fn skew_split(n: u32, rng: &mut PyRandom) -> Vec<u32> {
    let mut bins: Vec<u32> = (0..60).map(|_| rng.poisson(0.1)).collect();
    let sum: u32 = bins.iter().sum();
    if sum == 0 {
        bins[rng.randbelow(60) as usize] = n;
        return bins;
    }
    for b in &mut bins {
        *b = (f64::from(*b) * f64::from(n) / f64::from(sum)).floor() as u32;
    }
    while bins.iter().sum::<u32>() < n {
        bins[rng.randbelow(60) as usize] += 1;
    }
    bins
}

/// TrEnv's per-second bound: the excess of each second moves, one by one, to the emptiest
/// second. A minute larger than 60 × `cap` cannot hold; the cap is then ⌈n/60⌉.
pub fn cap(bins: &mut [u32], cap: u32) {
    let total: u32 = bins.iter().sum();
    let cap = cap.max(total.div_ceil(bins.len().max(1) as u32));
    for i in 0..bins.len() {
        while bins[i] > cap {
            let low = (0..bins.len()).min_by_key(|&j| bins[j]).unwrap_or(i);
            bins[i] -= 1;
            bins[low] += 1;
        }
    }
}

/// Splits each minute into seconds as TrEnv does for `format`, then caps every second at the
/// function's bound (TrEnv re-splits an over-bound minute evenly; the cap is applied after
/// any split here, so it always holds). `_1`/`_2` copies skew less often than base functions.
pub fn split_minutes(
    format: Format,
    function: &str,
    per_minute: &[u32],
    rng: &mut PyRandom,
) -> Vec<u32> {
    let base = !function.contains('_');
    let bound = spec_of(function).map_or(u32::MAX, |s| s.cap_per_second);
    let peak = per_minute.iter().copied().max().unwrap_or(0);
    let mut out = Vec::with_capacity(per_minute.len() * 60);
    for &n in per_minute {
        if n == 0 {
            out.extend([0; 60]);
            continue;
        }
        let skewed = match format {
            Format::Azure => {
                let p = if base { 0.4 } else { 0.2 };
                rng.random() >= 1.0 - p || function.starts_with("dynamic-html")
            }
            Format::Huawei => {
                let p = if base { 0.4 } else { 0.1 };
                (base && n == peak) || rng.random() < p
            }
        };
        let mut bins = if skewed {
            skew_split(n, rng)
        } else {
            even_split(n, rng)
        };
        cap(&mut bins, bound);
        out.extend(bins);
    }
    out
}

/// Builds the workload of a trace: the `window.functions` busiest trace functions in the
/// window, each mapped onto `names` in turn (round-robin: with more trace functions than names,
/// a name receives the arrivals of several, summed), split into seconds.
pub fn workload(
    format: Format,
    path: &Path,
    functions: Vec<TraceFunction>,
    names: &[&str],
    window: &Window,
    seed: u64,
) -> Result<Workload, TraceError> {
    let mut busy: Vec<TraceFunction> = functions
        .into_iter()
        .filter(|f| f.per_minute.iter().any(|&n| n > 0))
        .collect();
    if busy.is_empty() || names.is_empty() {
        return Err(TraceError::Unusable {
            path: path.to_path_buf(),
            why: "no function has invocations in the window".into(),
        });
    }
    // Busiest first; ties keep the file's order (stable sort).
    busy.sort_by_key(|f| {
        std::cmp::Reverse(f.per_minute.iter().map(|&n| u64::from(n)).sum::<u64>())
    });
    busy.truncate(window.functions.max(1));
    let mut rng = PyRandom::new(seed);
    let seconds = window.minutes * 60;
    let warm = window.warmup_minutes.min(window.minutes) * 60;
    let used = names.len().min(busy.len());
    let mut loads: Vec<Load> = names[..used]
        .iter()
        .map(|n| Load {
            function: n.to_string(),
            warmup: vec![0; warm],
            test: vec![0; seconds - warm],
        })
        .collect();
    let mut notes = vec![format!(
        "{} trace {} day {}, minutes {}..{} ({} warm-up), the {} busiest functions",
        match format {
            Format::Azure => "Azure 2019",
            Format::Huawei => "Huawei 2023",
        },
        path.display(),
        window.day,
        window.start_minute,
        window.start_minute + window.minutes,
        window.warmup_minutes,
        busy.len()
    )];
    if busy.len() > names.len() {
        notes.push(format!(
            "{} trace functions onto {} functions: mapped round-robin (trace function i → function i mod {}), arrivals summed",
            busy.len(),
            names.len(),
            names.len()
        ));
    }
    for (i, f) in busy.iter().enumerate() {
        let load = &mut loads[i % names.len()];
        let secs = split_minutes(format, &load.function, &f.per_minute, &mut rng);
        for (s, n) in secs.into_iter().enumerate() {
            if s < warm {
                load.warmup[s] += n;
            } else {
                load.test[s - warm] += n;
            }
        }
        notes.push(format!("trace function {} → {}", f.id, load.function));
    }
    Ok(Workload {
        name: match format {
            Format::Azure => "azure".into(),
            Format::Huawei => "huawei".into(),
        },
        loads,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::workload::TRACE_NAMES;
    use std::fmt::Write as _;

    fn window(minutes: usize, functions: usize) -> Window {
        Window {
            day: 3,
            start_minute: 60,
            minutes,
            warmup_minutes: 1,
            functions,
        }
    }

    /// An Azure file of `rows` functions; function r has `r + m % 3` invocations in minute
    /// m (1-based) and nothing outside minutes 61..=63.
    fn azure_file(dir: &Path, rows: usize) -> PathBuf {
        let mut text = String::from("HashOwner,HashApp,HashFunction,Trigger");
        for m in 1..=1440 {
            write!(text, ",{m}").expect("write");
        }
        text.push('\n');
        for r in 0..rows {
            write!(text, "owner{r},app{r}xxxxxx,fn{r}xxxxxxx,http").expect("write");
            for m in 1..=1440 {
                let n = if (61..=63).contains(&m) { r + m % 3 } else { 0 };
                write!(text, ",{n}").expect("write");
            }
            text.push('\n');
        }
        let path = trace_file(Format::Azure, dir, 3);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn azure_rows_are_read_for_the_window() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = azure_file(dir.path(), 3);
        let fns = read_azure(&path, &window(3, 26)).expect("read");
        assert_eq!(fns.len(), 3);
        // Minutes 61, 62, 63: m % 3 = 1, 2, 0.
        assert_eq!(fns[2].per_minute, [3, 4, 2]);
        assert_eq!(fns[0].id, "app0xxxx/fn0xxxxx");
        let w = workload(Format::Azure, &path, fns, &TRACE_NAMES, &window(3, 26), 1).expect("w");
        // Function 0 has 1+2+0 = 3 invocations, 1 2 and 3 in 1..3 (3, 6, 9).
        assert_eq!(w.loads.len(), 3);
        let sum = |l: &Load| l.warmup.iter().chain(&l.test).sum::<u32>();
        assert_eq!(w.loads.iter().map(sum).collect::<Vec<_>>(), [9, 6, 3]);
        assert_eq!(w.seconds(), (60, 120));
        assert_eq!(w.loads[0].function, "image-flip-rotate", "busiest first");
    }

    #[test]
    fn huawei_columns_are_read_with_nan_and_floats() {
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("requests_minute");
        std::fs::create_dir(&sub).expect("mkdir");
        let mut text = String::from("day,time,0,1,2\n");
        for m in 0..1440 {
            let (a, b) = if (60..63).contains(&m) {
                ("5.0", "")
            } else {
                ("", "nan")
            };
            writeln!(text, "0,{},{a},{b},{}", m * 60, m % 2).expect("write");
        }
        std::fs::write(sub.join("day_00.csv"), text).expect("write");
        let path = trace_file(Format::Huawei, dir.path(), 0);
        assert!(path.ends_with("requests_minute/day_00.csv"));
        let fns = read_huawei(&path, &window(3, 26)).expect("read");
        assert_eq!(fns.len(), 3);
        assert_eq!(fns[0].per_minute, [5, 5, 5]);
        assert_eq!(fns[1].per_minute, [0, 0, 0]);
        assert_eq!(fns[2].per_minute, [0, 1, 0]);
        let w = workload(Format::Huawei, &path, fns, &TRACE_NAMES, &window(3, 26), 1).expect("w");
        assert_eq!(w.loads.len(), 2, "function 1 has nothing in the window");
        assert_eq!(w.totals(), (5, 11));
    }

    #[test]
    fn more_trace_functions_than_names_are_mapped_round_robin() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = azure_file(dir.path(), 5);
        let fns = read_azure(&path, &window(3, 5)).expect("read");
        let w = workload(Format::Azure, &path, fns, &["a", "b"], &window(3, 5), 1).expect("w");
        assert_eq!(w.functions(), ["a", "b"]);
        let sum = |l: &Load| l.warmup.iter().chain(&l.test).sum::<u32>();
        // Totals 15, 12, 9, 6, 3: a gets 15 + 9 + 3, b gets 12 + 6.
        assert_eq!(w.loads.iter().map(sum).collect::<Vec<_>>(), [27, 18]);
        assert!(
            w.notes.iter().any(|n| n.contains("round-robin")),
            "{:?}",
            w.notes
        );
    }

    #[test]
    fn splits_keep_the_sum_and_respect_caps() {
        let mut rng = PyRandom::new(5);
        for n in [1, 2, 7, 59, 60, 61, 300, 1000, 5000] {
            let e = even_split(n, &mut rng);
            assert_eq!((e.len(), e.iter().sum::<u32>()), (60, n));
            let mut s = skew_split(n, &mut rng);
            assert_eq!((s.len(), s.iter().sum::<u32>()), (60, n));
            cap(&mut s, 10);
            assert_eq!(s.iter().sum::<u32>(), n);
            assert!(
                *s.iter().max().expect("max") <= 10.max(n.div_ceil(60)),
                "{n}: {s:?}"
            );
        }
        for format in [Format::Azure, Format::Huawei] {
            for name in ["image-recognition", "pyaes_1", "dynamic-html"] {
                let per_minute = [0, 3, 400, 100, 1];
                let secs = split_minutes(format, name, &per_minute, &mut rng);
                assert_eq!(secs.len(), 300);
                for (m, &n) in per_minute.iter().enumerate() {
                    let minute = &secs[m * 60..(m + 1) * 60];
                    assert_eq!(minute.iter().sum::<u32>(), n);
                    let bound = spec_of(name)
                        .expect("spec")
                        .cap_per_second
                        .max(n.div_ceil(60));
                    assert!(minute.iter().all(|&s| s <= bound), "{name} {n}: {minute:?}");
                }
            }
        }
    }

    #[test]
    fn malformed_rows_name_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = azure_file(dir.path(), 2);
        let text = std::fs::read_to_string(&path).expect("read");
        let broken = text.replacen(",http,0,", ",http,x,", 1);
        std::fs::write(&path, broken).expect("write");
        let err = read_azure(&path, &window(3, 26))
            .expect_err("malformed")
            .to_string();
        assert!(err.contains(&format!("{}:2:", path.display())), "{err}");
        assert!(err.contains("minute 1"), "{err}");

        let huawei = dir.path().join("day_01.csv");
        std::fs::write(&huawei, "day,time,0\n0,0,1\n0,60,many\n").expect("write");
        let err = read_huawei(&huawei, &window(1, 1))
            .expect_err("malformed")
            .to_string();
        assert!(err.contains(&format!("{}:3:", huawei.display())), "{err}");
        std::fs::write(&huawei, "day,time,0\n0,0,1\n0,60\n").expect("write");
        let err = read_huawei(&huawei, &window(1, 1))
            .expect_err("short row")
            .to_string();
        assert!(err.contains(":3:") && err.contains("2 columns"), "{err}");
        std::fs::write(&huawei, "a,b,c\n").expect("write");
        let err = read_huawei(&huawei, &window(1, 1))
            .expect_err("header")
            .to_string();
        assert!(err.contains(":1:") && err.contains("Huawei"), "{err}");
        let err = read_azure(&huawei, &window(1, 1))
            .expect_err("header")
            .to_string();
        assert!(err.contains(":1:") && err.contains("Azure"), "{err}");
        std::fs::write(&huawei, "day,time,0\n0,0,1\n").expect("write");
        let err = read_huawei(&huawei, &window(1, 1))
            .expect_err("window")
            .to_string();
        assert!(err.contains("outside the trace's 1 minutes"), "{err}");
        let err = read_huawei(&dir.path().join("nope.csv"), &window(1, 1))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("nope.csv"), "{err}");
    }
}
