//! Extraction's peak memory is bounded whatever the archive: each hostile archive is extracted
//! in a child process (this binary again), which reports its peak RSS (VmHWM) when done.
//!
//! A plain binary (`harness = false`): the child must be a fresh process, and one case at a
//! time keeps the measurements apart.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use kindling_worker::archive::{extract, ArchiveLimits};

/// Peak RSS an extraction may reach, whatever the archive (the binary itself takes a few MB).
const MAX_PEAK_RSS: u64 = 64 << 20;

fn gz_writer() -> flate2::write::GzEncoder<Vec<u8>> {
    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())
}

/// A header block of `kind` declaring `size` bytes, named `name`.
fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h
}

/// `len` bytes of `byte` through the encoder, without holding them.
fn repeat(gz: &mut impl Write, byte: u8, len: u64) {
    let chunk = vec![byte; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        gz.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
}

/// An extension record (GNU long name, pax header) of 200 MB, then a file.
fn extension_bomb(kind: tar::EntryType) -> Vec<u8> {
    let len = 200 << 20;
    let mut gz = gz_writer();
    gz.write_all(header("././@LongLink", kind, len).as_bytes())
        .unwrap();
    repeat(&mut gz, b'a', len);
    gz.write_all(header("x", tar::EntryType::Regular, 0).as_bytes())
        .unwrap();
    gz.write_all(&[0; 1024]).unwrap();
    gz.finish().unwrap()
}

/// Many entries, each with a long name in a directory of its own.
fn many_long_names() -> Vec<u8> {
    let mut builder = tar::Builder::new(gz_writer());
    let component = "n".repeat(200);
    for i in 0..20_000 {
        let path = format!("{i}/{}/f", [component.as_str(); 18].join("/"));
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        builder
            .append_data(&mut h, &path, std::io::empty())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// One 200 MB file of zeros (allowed: it streams to disk).
fn big_file() -> Vec<u8> {
    let len = 200 << 20;
    let mut gz = gz_writer();
    gz.write_all(header("big", tar::EntryType::Regular, len).as_bytes())
        .unwrap();
    repeat(&mut gz, 0, len);
    gz.write_all(&[0; 1024]).unwrap();
    gz.finish().unwrap()
}

/// The child: extracts the archive at `$KINDLING_EXTRACT` into a fresh directory and prints
/// whether it was refused and its peak RSS.
fn child(archive: &Path) {
    let data = std::fs::read(archive).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let result = extract(&data, dest.path(), &ArchiveLimits::default());
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap();
    let outcome = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("refused: {e}"),
    };
    println!("{hwm}\t{outcome}");
}

fn main() {
    if let Some(archive) = std::env::var_os("KINDLING_EXTRACT") {
        child(Path::new(&archive));
        return;
    }
    let cases: [(&str, Vec<u8>, bool); 4] = [
        (
            "GNU long name of 200 MB",
            extension_bomb(tar::EntryType::GNULongName),
            false,
        ),
        (
            "pax header of 200 MB",
            extension_bomb(tar::EntryType::XHeader),
            false,
        ),
        ("20,000 entries with 3.6 KB names", many_long_names(), false),
        ("a 200 MB file", big_file(), true),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (mut passed, mut failed) = (0, 0);
    for (i, (what, archive, accepted)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case-{i}.tar.gz"));
        std::fs::write(&path, archive).unwrap();
        let out = Command::new(std::env::current_exe().unwrap())
            .env("KINDLING_EXTRACT", &path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (kb, outcome) = text.trim().split_once('\t').unwrap_or(("0", "no report"));
        let peak = kb.parse::<u64>().unwrap_or(u64::MAX / 1024) * 1024;
        let ok = out.status.success()
            && peak <= MAX_PEAK_RSS
            && (outcome == "ok") == *accepted
            && outcome.len() < 400;
        println!(
            "{} {what} ({} KB upload): peak RSS {} MB, {outcome}",
            if ok { "ok  " } else { "FAIL" },
            archive.len() >> 10,
            peak >> 20
        );
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("extract_memory: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
