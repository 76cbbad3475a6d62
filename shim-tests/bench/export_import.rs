//! `podckpt export` and `podckpt import` against the tools a person would
//! use instead, in the same run. No test bed needed; needs `tar`, `zstd`
//! and `sha256sum`.
//!
//!   cargo bench --bench export_import [-- --dir DIR]
//!
//! For checkpoints whose page image holds 256 MiB and 1 GiB of (a) random
//! and (b) typical memory (a heap: zero pages, repeated records, pointer
//! arrays), made under DIR (default /var/tmp), each round alternates:
//! - export: `podckpt export` to a file (synced) and into a pipe, against
//!   `tar -c | zstd -T0` (its default level 3, and level 1, podckpt's), into
//!   a file, alone and followed by `sync` of that file;
//! - import: `podckpt import` (verified, synced, sealed) against
//!   `zstd -d | tar -x` followed by `sha256sum` of every file, alone and
//!   followed by `sync` of every file.
//!
//! Then the time and size of export at levels 1, 3, 6 and 9.
//! Prints a Markdown report with medians and ratios.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const ROUNDS: usize = 5;
const PODCKPT: &str = env!("CARGO_BIN_EXE_podckpt");

#[derive(Clone, Copy)]
enum Kind {
    Random,
    Typical,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::Typical => "typical",
        }
    }
}

/// A heap as a process holds it: a quarter zero pages, half pages of
/// text records that differ in their numbers, the rest arrays of nearby
/// pointers; every 64 KiB a word of noise, so that no long stretch repeats.
fn typical(bytes: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(bytes);
    let mut record = 0u64;
    while out.len() < bytes {
        let mut page = Vec::with_capacity(4096);
        match next() % 20 {
            0..=4 => page.resize(4096, 0),
            5..=15 => {
                while page.len() < 4096 {
                    record += 1;
                    let _ = writeln!(
                        page,
                        "user-{:08}:{{\"name\":\"n{:05}\",\"score\":{},\"flags\":[1,2,3]}}",
                        record,
                        record % 977,
                        record * 7 % 1000
                    );
                }
                page.truncate(4096);
            }
            _ => {
                let base = next() & !0xfff_u64 & 0x7fff_ffff_f000;
                for _ in 0..512 {
                    page.extend_from_slice(&(base + 16 * (next() % 64)).to_le_bytes());
                }
            }
        }
        if out.len() % 65536 == 0 {
            page[..8].copy_from_slice(&next().to_le_bytes());
        }
        out.extend_from_slice(&page);
    }
    out.truncate(bytes);
    out
}

/// A committed checkpoint in `dir` whose page image holds `mib` MiB of `kind`.
fn make_checkpoint(dir: &Path, mib: usize, kind: Kind) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes = mib << 20;
    let pages = match kind {
        Kind::Random => {
            let mut v = vec![0u8; bytes];
            std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut v).unwrap();
            v
        }
        Kind::Typical => typical(bytes),
    };
    support::committed_checkpoint(
        dir,
        &[
            ("c-counter/checkpoint/pages-1.img", pages),
            ("c-counter/checkpoint/core-1.img", vec![7u8; 3000]),
            ("c-counter/config.dump", b"{}".to_vec()),
            ("pod.options", b"{\"version\":1,\"containers\":{}}".to_vec()),
            ("pod.dump", b"{}".to_vec()),
        ],
    );
}

fn sh(script: &str) -> f64 {
    let start = Instant::now();
    let status = Command::new("bash").args(["-c", script]).status().unwrap();
    assert!(status.success(), "{script}");
    start.elapsed().as_secs_f64()
}

fn timed(command: &mut Command) -> f64 {
    let start = Instant::now();
    let out = command.stderr(Stdio::piped()).output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed().as_secs_f64()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn fresh(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(path);
}

/// Seconds of each measure in each round.
type Samples = BTreeMap<&'static str, Vec<f64>>;

fn round(work: &Path, checkpoint: &Path, samples: &mut Samples) {
    let ours = work.join("ours.podckpt");
    let theirs = work.join("theirs.tar.zst");
    let into = work.join("into");
    let state = work.join("state");
    let cp = checkpoint.display();
    let (t, i) = (theirs.display(), into.display());
    let mut add = |name, seconds| samples.entry(name).or_default().push(seconds);

    fresh(&ours);
    add(
        "export, synced",
        timed(Command::new(PODCKPT).arg("export").arg(checkpoint).arg("-o").arg(&ours)),
    );
    fresh(&theirs);
    add(
        "tar | zstd -T0, synced",
        sh(&format!("tar -C {cp} -cf - . | zstd -T0 -q -o {t} && sync {t}")),
    );
    fresh(&theirs);
    add(
        "tar | zstd -T0",
        sh(&format!("tar -C {cp} -cf - . | zstd -T0 -q -o {t}")),
    );
    fresh(&theirs);
    add(
        "tar | zstd -T0 -1",
        sh(&format!("tar -C {cp} -cf - . | zstd -T0 -1 -q -o {t}")),
    );
    let piped = work.join("piped.podckpt");
    fresh(&piped);
    add(
        "export | file",
        timed(
            Command::new(PODCKPT)
                .arg("export")
                .arg(checkpoint)
                .stdout(std::fs::File::create(&piped).unwrap()),
        ),
    );

    // Both imports read the same level: podckpt's.
    fresh(&theirs);
    sh(&format!("tar -C {cp} -cf - . | zstd -T0 -1 -q -o {t}"));
    fresh(&into);
    add(
        "import",
        timed(
            Command::new(PODCKPT)
                .arg("import")
                .arg(&ours)
                .arg(&into)
                .arg("--state-dir")
                .arg(&state),
        ),
    );
    fresh(&into);
    add(
        "zstd -d | tar -x; sha256sum",
        sh(&format!(
            "mkdir {i} && zstd -d -q -c {t} | tar -C {i} -xf - && find {i} -type f -exec sha256sum {{}} + >/dev/null"
        )),
    );
    fresh(&into);
    add(
        "zstd -d | tar -x; sha256sum; sync",
        sh(&format!(
            "mkdir {i} && zstd -d -q -c {t} | tar -C {i} -xf - && find {i} -type f -exec sha256sum {{}} + >/dev/null && find {i} -type f -exec sync {{}} +"
        )),
    );
    fresh(&into);
    fresh(&state);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .map(|i| PathBuf::from(&args[i + 1]))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let work = tempfile::tempdir_in(&base).unwrap();
    println!("| checkpoint | measure | median s | ratio | stream MiB | ratio to data |");
    println!("|---|---|---|---|---|---|");
    let mut levels = Vec::new();
    for mib in [256, 1024] {
        for kind in [Kind::Random, Kind::Typical] {
            let checkpoint = work.path().join(format!("{mib}-{}", kind.name()));
            make_checkpoint(&checkpoint, mib, kind);
            let mut samples = Samples::new();
            for _ in 0..ROUNDS {
                round(work.path(), &checkpoint, &mut samples);
            }
            let median = |name: &str| support::median(samples[name].clone());
            let stream = size(&work.path().join("ours.podckpt")) as f64 / (1 << 20) as f64;
            let label = format!("{mib} MiB {}", kind.name());
            let rows = [
                ("export, synced", "tar | zstd -T0, synced"),
                ("export | file", "tar | zstd -T0"),
                ("export | file", "tar | zstd -T0 -1"),
                ("import", "zstd -d | tar -x; sha256sum"),
                ("import", "zstd -d | tar -x; sha256sum; sync"),
            ];
            let cell = |name: &str| name.replace('|', "\\|");
            for (ours, theirs) in rows {
                println!(
                    "| {label} | {} / {} | {:.3} / {:.3} | **{:.2}** | {stream:.1} | {:.3} |",
                    cell(ours),
                    cell(theirs),
                    median(ours),
                    median(theirs),
                    median(ours) / median(theirs),
                    stream / mib as f64,
                );
            }
            if mib == 256 {
                for level in [1, 3, 6, 9] {
                    let out = work.path().join("level.podckpt");
                    let mut times = Vec::new();
                    for _ in 0..ROUNDS {
                        fresh(&out);
                        times.push(timed(
                            Command::new(PODCKPT)
                                .arg("export")
                                .arg(&checkpoint)
                                .arg("--level")
                                .arg(level.to_string())
                                .stdout(std::fs::File::create(&out).unwrap()),
                        ));
                    }
                    levels.push((label.clone(), level, support::median(times), size(&out)));
                }
            }
            std::fs::remove_dir_all(&checkpoint).unwrap();
        }
    }
    println!();
    println!("| checkpoint | level | export median s | MiB/s | stream MiB | ratio to data |");
    println!("|---|---|---|---|---|---|");
    for (label, level, seconds, bytes) in levels {
        let mib = bytes as f64 / (1 << 20) as f64;
        println!(
            "| {label} | {level} | {seconds:.3} | {:.0} | {mib:.1} | {:.3} |",
            256.0 / seconds,
            mib / 256.0
        );
    }
}
