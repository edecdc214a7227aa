//! Trace workloads: TrEnv's function set and its synthetic workloads W1 and W2, generated
//! exactly as its `gen_trace.py` generates them (same functions, slots, burst sizes, cycles,
//! warm-up cycles and seed, through [`PyRandom`]), and the per-second scaling that makes them
//! fit a small machine. The real-trace formats are read in [`super::traces`].

use super::pyrandom::PyRandom;

/// TrEnv's workload seed (`random.seed(2022310806)` at the generator's import).
pub const TRENV_SEED: u64 = 2_022_310_806;

/// One function of TrEnv's set, mapped onto a benchmark of `benchmarks/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionSpec {
    /// TrEnv's name (also the deployed function's name).
    pub name: &'static str,
    /// The directory under `benchmarks/` that implements it.
    pub benchmark: &'static str,
    /// Memory limit in MB (TrEnv's stack.yml).
    pub memory_mb: u64,
    /// Most arrivals in one second when a trace's minute is split (TrEnv's `upper_bound`).
    pub cap_per_second: u32,
}

/// TrEnv's functions in its YAML order. `js-json-serde` is TrEnv's Node.js function: Kindling
/// runs no Node.js yet, so json_serdes takes its place (under its own name and limit).
pub const FUNCTIONS: [FunctionSpec; 11] = [
    spec("chameleon", "chameleon", 300, 17),
    spec("pyaes", "pyaes", 64, 18),
    spec("dynamic-html", "dynamic_html", 64, 80),
    spec("image-processing", "thumbnailer", 224, 12),
    spec("image-recognition", "cnn", 768, 7),
    spec("video-processing", "video_processing", 224, 10),
    spec("crypto", "crypto", 84, 20),
    spec("image-flip-rotate", "image_rotate", 560, 15),
    spec("json-serde", "json_serdes", 100, 25),
    spec("js-json-serde", "json_serdes", 100, 25),
    spec("pagerank", "graph_pagerank", 280, 18),
];

const fn spec(
    name: &'static str,
    benchmark: &'static str,
    memory_mb: u64,
    cap_per_second: u32,
) -> FunctionSpec {
    FunctionSpec {
        name,
        benchmark,
        memory_mb,
        cap_per_second,
    }
}

/// The 26 function names TrEnv's trace workloads deploy: the 11 functions, then `_1` and `_2`
/// copies (same package, own name; TrEnv comments out the chameleon copies).
pub const TRACE_NAMES: [&str; 26] = [
    "image-flip-rotate",
    "video-processing",
    "chameleon",
    "pyaes",
    "image-processing",
    "image-recognition",
    "crypto",
    "json-serde",
    "pagerank",
    "js-json-serde",
    "dynamic-html",
    "image-flip-rotate_1",
    "video-processing_1",
    "pyaes_1",
    "image-processing_1",
    "image-recognition_1",
    "crypto_1",
    "pagerank_1",
    "dynamic-html_1",
    "image-flip-rotate_2",
    "video-processing_2",
    "pyaes_2",
    "image-processing_2",
    "image-recognition_2",
    "crypto_2",
    "dynamic-html_2",
];

/// The spec of a deployed name: a copy `<name>_<n>` is its base function's.
pub fn spec_of(name: &str) -> Option<&'static FunctionSpec> {
    let base = name.split_once('_').map_or(name, |(b, _)| b);
    FUNCTIONS.iter().find(|f| f.name == base)
}

/// The arrivals of one function: invocations per second, warm-up phase then measured phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// The deployed function's name.
    pub function: String,
    pub warmup: Vec<u32>,
    pub test: Vec<u32>,
}

/// A generated or read workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    pub loads: Vec<Load>,
    /// How the workload was made (trace functions mapped onto deployed names, scaling), for
    /// the report.
    pub notes: Vec<String>,
}

impl Workload {
    /// Seconds of the warm-up and of the measured phase.
    pub fn seconds(&self) -> (usize, usize) {
        let w = self.loads.iter().map(|l| l.warmup.len()).max().unwrap_or(0);
        let t = self.loads.iter().map(|l| l.test.len()).max().unwrap_or(0);
        (w, t)
    }

    /// Invocations of the warm-up and of the measured phase.
    pub fn totals(&self) -> (u64, u64) {
        let sum = |v: &[u32]| v.iter().map(|&n| u64::from(n)).sum::<u64>();
        self.loads
            .iter()
            .fold((0, 0), |(w, t), l| (w + sum(&l.warmup), t + sum(&l.test)))
    }

    /// Most arrivals in one second of the measured phase, all functions together.
    pub fn peak_per_second(&self) -> u32 {
        let (_, len) = self.seconds();
        (0..len)
            .map(|s| {
                self.loads
                    .iter()
                    .map(|l| l.test.get(s).copied().unwrap_or(0))
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    /// Multiplies every second's arrivals by `factor`, rounding to the nearest integer; a
    /// second with arrivals keeps at least one, so every burst still happens.
    pub fn scale(&mut self, factor: f64) {
        let scale = |n: &mut u32| {
            if *n > 0 {
                *n = ((f64::from(*n) * factor).round() as u32).max(1);
            }
        };
        for l in &mut self.loads {
            l.warmup.iter_mut().for_each(scale);
            l.test.iter_mut().for_each(scale);
        }
        if factor != 1.0 {
            self.notes
                .push(format!("burst sizes scaled by {factor} (at least 1)"));
        }
    }

    /// The deployed names of the workload's functions, in order.
    pub fn functions(&self) -> Vec<&str> {
        self.loads.iter().map(|l| l.function.as_str()).collect()
    }
}

/// One row of TrEnv's workload YAML: `max_concurrency`, `peak_times`, `interval`, `last`.
struct Slot {
    name: &'static str,
    concurrency: u32,
    peak_times: usize,
    interval: usize,
    last: usize,
}

const fn slot(
    name: &'static str,
    concurrency: u32,
    peak_times: usize,
    interval: usize,
    last: usize,
) -> Slot {
    Slot {
        name,
        concurrency,
        peak_times,
        interval,
        last,
    }
}

/// workload-1.yml.
const W1: [Slot; 11] = [
    slot("chameleon", 25, 1, 1, 10),
    slot("pyaes", 15, 2, 1, 15),
    slot("dynamic-html", 200, 1, 0, 4),
    slot("image-processing", 9, 3, 1, 15),
    slot("image-recognition", 4, 3, 5, 20),
    slot("video-processing", 8, 3, 1, 20),
    slot("crypto", 15, 2, 1, 12),
    slot("image-flip-rotate", 15, 2, 1, 15),
    slot("json-serde", 20, 1, 0, 10),
    slot("js-json-serde", 20, 1, 0, 10),
    slot("pagerank", 15, 2, 0, 12),
];

/// workload-2.yml.
const W2: [Slot; 11] = [
    slot("chameleon", 15, 1, 0, 10),
    slot("dynamic-html", 200, 1, 0, 4),
    slot("image-processing", 16, 2, 1, 13),
    slot("image-recognition", 4, 2, 10, 30),
    slot("video-processing", 12, 3, 1, 23),
    slot("image-flip-rotate", 20, 2, 0, 15),
    slot("crypto", 16, 1, 0, 15),
    slot("pyaes", 14, 2, 0, 15),
    slot("json-serde", 25, 1, 0, 10),
    slot("js-json-serde", 25, 1, 0, 10),
    slot("pagerank", 25, 1, 0, 15),
];

/// TrEnv's cycles: 12 in all, of which the first 2 warm up.
pub const TRENV_CYCLES: usize = 10;
pub const TRENV_WARMUP_CYCLES: usize = 2;

/// W1: each function bursts in its own slot of a 143-s cycle, `peak_times` bursts
/// `interval + 1` s apart, of `int(min(|N(c, max(ceil(c/10), 1))|, 1.1c))` arrivals each.
pub fn w1(cycles: usize, warmup_cycles: usize, seed: u64) -> Workload {
    let mut rng = PyRandom::new(seed);
    // gen_trace.py shuffles a list it never reads; the draw still advances the generator.
    let mut unused: Vec<usize> = (0..W1.len()).collect();
    rng.shuffle(&mut unused);
    generate("w1", &W1, cycles, warmup_cycles, |c| {
        let std = (f64::from(c) * 0.1).ceil().max(1.0);
        let n = rng.normalvariate(f64::from(c), std).abs();
        n.min(f64::from(c) * 1.1) as u32
    })
}

/// W2: as W1 but every burst is exactly `max_concurrency` (160-s cycle, 450 per cycle).
pub fn w2(cycles: usize, warmup_cycles: usize) -> Workload {
    generate("w2", &W2, cycles, warmup_cycles, |c| c)
}

/// Lays the slots out in one cycle (in YAML order, each `last` seconds long) and draws each
/// burst with `size`, function by function, cycle by cycle, second by second, as gen_trace.py
/// does (the draw order matters for W1).
fn generate(
    name: &str,
    slots: &[Slot],
    cycles: usize,
    warmup_cycles: usize,
    mut size: impl FnMut(u32) -> u32,
) -> Workload {
    let period: usize = slots.iter().map(|s| s.last).sum();
    let mut start = 0;
    let mut loads = Vec::new();
    for s in slots {
        let span = s.interval * (s.peak_times - 1) + s.peak_times;
        let mut all = Vec::with_capacity(period * (cycles + warmup_cycles));
        for _ in 0..cycles + warmup_cycles {
            for t in 0..period {
                let burst = t >= start && t < start + span && (t - start) % (s.interval + 1) == 0;
                all.push(if burst { size(s.concurrency) } else { 0 });
            }
        }
        let test = all.split_off(period * warmup_cycles);
        loads.push(Load {
            function: s.name.to_string(),
            warmup: all,
            test,
        });
        start += s.last;
    }
    Workload {
        name: name.to_string(),
        loads,
        notes: vec![format!(
            "TrEnv's {name}: {cycles} measured cycles of {period} s after {warmup_cycles} warm-up cycles"
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(l: &Load) -> u64 {
        l.test.iter().map(|&n| u64::from(n)).sum()
    }

    #[test]
    fn w2_matches_trenv_counts() {
        let w = w2(TRENV_CYCLES, TRENV_WARMUP_CYCLES);
        assert_eq!(w.totals(), (900, 4500));
        assert_eq!(w.seconds(), (320, 1600));
        let dynamic = w
            .loads
            .iter()
            .find(|l| l.function == "dynamic-html")
            .expect("fn");
        assert_eq!(dynamic.test[10], 200);
        assert_eq!(dynamic.test[160 + 10], 200);
        let video = w
            .loads
            .iter()
            .find(|l| l.function == "video-processing")
            .expect("fn");
        assert_eq!(&video.test[57..62], &[12, 0, 12, 0, 12]);
    }

    // Totals printed by gen_trace.py's W1 with CPython 3.11 (trenv.md §2).
    #[test]
    fn w1_matches_trenv_counts() {
        let w = w1(TRENV_CYCLES, TRENV_WARMUP_CYCLES, TRENV_SEED);
        assert_eq!(w.totals(), (859, 4338));
        assert_eq!(w.seconds(), (286, 1430));
        assert_eq!(w.peak_per_second(), 220);
        let expected = [
            ("chameleon", 225),
            ("pyaes", 284),
            ("dynamic-html", 2010),
            ("image-processing", 248),
            ("image-recognition", 96),
            ("video-processing", 226),
            ("crypto", 285),
            ("image-flip-rotate", 283),
            ("json-serde", 192),
            ("js-json-serde", 196),
            ("pagerank", 293),
        ];
        for (l, (name, n)) in w.loads.iter().zip(expected) {
            assert_eq!((l.function.as_str(), total(l)), (name, n));
        }
        let w = w1(TRENV_CYCLES, TRENV_WARMUP_CYCLES, 1);
        assert_ne!(w.totals(), (859, 4338), "the seed is used");
    }

    #[test]
    fn scaling_multiplies_bursts_and_keeps_every_burst() {
        let mut w = w2(TRENV_CYCLES, TRENV_WARMUP_CYCLES);
        let before: Vec<usize> = w
            .loads
            .iter()
            .map(|l| l.test.iter().filter(|&&n| n > 0).count())
            .collect();
        w.scale(0.1);
        let after: Vec<usize> = w
            .loads
            .iter()
            .map(|l| l.test.iter().filter(|&&n| n > 0).count())
            .collect();
        assert_eq!(before, after);
        assert_eq!(w.peak_per_second(), 20);
        // 15→2, 200→20, 16→2 (×2), 4→1 (×2), 12→1 (×3), 20→2 (×2), 16→2, 14→1 (×2), 25→3 (×3)
        assert_eq!(w.totals().1, 10 * (2 + 20 + 4 + 2 + 3 + 4 + 2 + 2 + 9));
        let mut same = w2(1, 1);
        let copy = same.clone();
        same.scale(1.0);
        assert_eq!(same, copy);
    }

    #[test]
    fn every_name_has_a_benchmark() {
        for n in TRACE_NAMES {
            assert!(spec_of(n).is_some(), "{n}");
        }
        assert_eq!(
            spec_of("js-json-serde").map(|s| s.benchmark),
            Some("json_serdes")
        );
        assert_eq!(spec_of("nope"), None);
    }
}
