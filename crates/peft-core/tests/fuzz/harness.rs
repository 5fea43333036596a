//! A small mutation fuzzer on stable Rust: no coverage instrumentation, but seeded corpora,
//! format-aware mutations (bytes, little-endian integers, JSON numbers, dictionary tokens) and
//! a cheap feedback signal: an input whose error is of a kind not seen before joins the corpus,
//! so mutations reach past the first check of a parser. A panic, a hang (watchdog) or an
//! allocation past the bound (the test binary's global allocator) fails the run and names the
//! saved input. Budget per target: `PEFT_FUZZ_SECS` (default 30 s; the long run by hand is 600).
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// splitmix64: seeded, so a run is reproducible from `PEFT_FUZZ_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING_BYTES: &[u8] = b"\x00\x01\x7f\x80\xff\"{}[],:-.e0123456789 \n\\";
const INTERESTING_INTS: &[u64] =
    &[0, 1, 2, 7, 255, 256, 65535, 1 << 31, u32::MAX as u64, 1 << 32, 1 << 40, 1 << 62, u64::MAX, u64::MAX - 1];
/// Numbers a JSON field should never accept silently: huge, negative, fractional, overflowing.
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "-1e308",
    "1e999",
    "4294967296",
    "4294967295",
    "18446744073709551616",
    "9007199254740993",
    "2147483648",
    "1.5",
    "1e9",
    "1e12",
    "-0",
    "0.0",
    "65536",
    "100000000",
];

/// What one fuzz target is: its seeds, dictionary, where its header ends, and the code under test.
pub struct Target<'a> {
    pub name: &'static str,
    pub seeds: Vec<Vec<u8>>,
    pub dict: &'a [&'a [u8]],
    /// Mutations land in the first `focus(seed)` bytes 9 times in 10 (the header, not the data).
    pub focus: fn(&[u8]) -> usize,
    /// `Err(message)` is a handled rejection; a panic is a failure.
    pub run: &'a (dyn Fn(&[u8]) -> std::result::Result<(), String> + Sync),
}

pub struct Stats {
    pub execs: u64,
    pub accepted: u64,
    pub kinds: usize,
    pub corpus: usize,
}

pub fn budget() -> Duration {
    let secs = std::env::var("PEFT_FUZZ_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

pub fn seed() -> u64 {
    std::env::var("PEFT_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED)
}

/// Where failing inputs are kept (under the cargo target dir).
pub fn crash_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The error's kind: its text without digits, quoted parts and paths, so that "r=12" and
/// "r=13" count once and a new check reached counts as new.
fn kind(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '`' | '\'' | '"' => quoted = !quoted,
            _ if quoted || c.is_ascii_digit() => {}
            _ => out.push(c),
        }
        if out.len() >= 80 {
            break;
        }
    }
    out.split_whitespace().filter(|w| !w.contains('/')).collect::<Vec<_>>().join(" ")
}

pub fn mutate(input: &[u8], rng: &mut Rng, dict: &[&[u8]], focus: usize) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len().max(1);
        let region = if rng.below(10) < 9 { focus.clamp(1, len) } else { len };
        let at = rng.below(region);
        let last = b.len().saturating_sub(1);
        match rng.below(9) {
            0 if !b.is_empty() => b[at.min(last)] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at.min(last)] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())],
            2 => {
                let v = INTERESTING_INTS[rng.below(INTERESTING_INTS.len())].to_le_bytes();
                let n = if rng.below(2) == 0 { 4 } else { 8 };
                for (i, byte) in v[..n].iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + i) {
                        *slot = *byte;
                    }
                }
            }
            3 if b.len() > 1 => {
                let n = 1 + rng.below(16.min(b.len() - at.min(b.len() - 1)));
                let at = at.min(b.len() - 1);
                b.drain(at..(at + n).min(b.len()));
            }
            4 if !b.is_empty() => {
                let from = rng.below(b.len());
                let n = 1 + rng.below(32.min(b.len() - from));
                let chunk = b[from..from + n].to_vec();
                let at = at.min(b.len());
                b.splice(at..at, chunk);
            }
            5 if !dict.is_empty() => {
                let tok = dict[rng.below(dict.len())];
                let at = at.min(b.len());
                b.splice(at..at, tok.iter().copied());
            }
            6 => replace_number(&mut b, at, rng),
            7 if rng.below(4) == 0 => b.truncate(rng.below(b.len() + 1)),
            _ => {}
        }
    }
    b
}

/// Replaces the ASCII number at or after `at` with an interesting one (JSON/Jinja-aware).
fn replace_number(b: &mut Vec<u8>, at: usize, rng: &mut Rng) {
    let Some(start) = (at..b.len()).find(|&i| b[i].is_ascii_digit()) else { return };
    let end = (start..b.len()).find(|&i| !(b[i].is_ascii_digit() || b"eE.+".contains(&b[i]))).unwrap_or(b.len());
    let with = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())].as_bytes();
    b.splice(start..end, with.iter().copied());
}

/// Runs `t` for the budget; panics (failing the test) on the first crash or hang.
pub fn fuzz(t: &Target) -> Stats {
    // `PEFT_FUZZ_REPLAY=<saved input>` runs this target on that one input (named `<target>-*`).
    if let Some(path) = std::env::var_os("PEFT_FUZZ_REPLAY").map(PathBuf::from) {
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}-", t.name))) {
            let start = Instant::now();
            let result = (t.run)(&std::fs::read(&path).unwrap());
            eprintln!("replay {}: {:?} in {:?}", path.display(), result, start.elapsed());
        }
        return Stats { execs: 1, accepted: 0, kinds: 0, corpus: 0 };
    }
    let deadline = Instant::now() + budget();
    let mut rng = Rng::new(seed() ^ t.name.bytes().fold(0u64, |h, c| h.wrapping_mul(31).wrapping_add(c as u64)));
    let mut corpus: Vec<Vec<u8>> = t.seeds.clone();
    let mut kinds = HashSet::new();
    let (mut execs, mut accepted) = (0u64, 0u64);
    let current = crash_dir().join(format!("{}-current.bin", t.name));
    quiet_panics_inside_inputs();
    let watch = Watchdog::start(t.name, current.clone());
    // The seeds themselves must load: otherwise the target tests nothing.
    for s in &t.seeds {
        if let Err(e) = (t.run)(s) {
            panic!("fuzz {}: a seed is rejected, so the target would test nothing: {e}", t.name);
        }
    }
    while Instant::now() < deadline {
        let base = &corpus[rng.below(corpus.len())];
        let input = mutate(base, &mut rng, t.dict, (t.focus)(base));
        std::fs::write(&current, &input).unwrap();
        watch.begin();
        IN_INPUT.with(|f| f.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        IN_INPUT.with(|f| f.set(false));
        watch.end();
        execs += 1;
        match outcome {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(message)) => {
                if kinds.insert(kind(&message)) && corpus.len() < 512 {
                    corpus.push(input);
                }
            }
            Err(panic) => {
                let saved = crash_dir().join(format!("{}-crash-{execs}.bin", t.name));
                std::fs::write(&saved, &input).unwrap();
                let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("fuzz {}: panic on input #{execs} (saved to {}): {}", t.name, saved.display(), what.unwrap_or_default());
            }
        }
    }
    watch.stop();
    let _ = std::fs::remove_file(&current);
    let stats = Stats { execs, accepted, kinds: kinds.len(), corpus: corpus.len() };
    eprintln!("fuzz {}: {} inputs, {} accepted, {} error kinds, corpus {}", t.name, stats.execs, stats.accepted, stats.kinds, stats.corpus);
    stats
}

thread_local! {
    static IN_INPUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic inside one input is reported by `fuzz` with the saved input (and the code under
/// test catches some on purpose): the default hook's backtraces would only bury that line.
/// Every other panic, the report itself and failing asserts included, prints as usual.
fn quiet_panics_inside_inputs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_INPUT.with(|f| f.get()) {
                default(info)
            }
        }));
    });
}

/// Aborts the process, naming the saved input, when one input runs longer than `HANG`.
struct Watchdog {
    started: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    epoch: Instant,
}

const HANG: Duration = Duration::from_secs(20);

impl Watchdog {
    fn start(name: &'static str, current: PathBuf) -> Self {
        let (started, done, epoch) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Instant::now());
        let (s, d) = (started.clone(), done.clone());
        std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let at = s.load(Ordering::Relaxed);
                if at != 0 && (epoch.elapsed().as_millis() as u64).saturating_sub(at) > HANG.as_millis() as u64 {
                    eprintln!("fuzz {name}: one input ran past {HANG:?} (a hang); it is saved at {}", current.display());
                    std::process::abort();
                }
            }
        });
        Watchdog { started, done, epoch }
    }
    fn begin(&self) {
        self.started.store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }
    fn end(&self) {
        self.started.store(0, Ordering::Relaxed);
    }
    fn stop(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}
