//! The pages a forked process has written: in its private writable mappings, the pages that are
//! present and mapped by it alone (`/proc/<pid>/pagemap` bit 56, "exclusively mapped"). In a
//! child of a zygote those are the pages copied on write (or newly allocated) since the fork;
//! the pages still shared with the zygote are not. Plain file reads, no `unsafe`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

/// The page size pagemap is indexed by on the architectures Kindling runs on.
pub const PAGE_SIZE: u64 = 4096;

const PRESENT: u64 = 1 << 63;
const EXCLUSIVE: u64 = 1 << 56;

/// A private writable mapping of `/proc/<pid>/maps`: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
}

/// Parses `/proc/<pid>/maps` text, keeping the private writable mappings (`rw-p`).
pub fn private_writable(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if perms != "rw-p" {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
            })
        })
        .collect()
}

/// The addresses of the pages of `mapping` whose pagemap entries (native-endian u64s, one per
/// page from `mapping.start`) say present and exclusively mapped.
pub fn written_in(mapping: Mapping, entries: &[u8]) -> Vec<u64> {
    entries
        .chunks_exact(8)
        .enumerate()
        .filter_map(|(i, raw)| {
            let mut word = [0u8; 8];
            word.copy_from_slice(raw);
            let entry = u64::from_ne_bytes(word);
            (entry & PRESENT != 0 && entry & EXCLUSIVE != 0)
                .then(|| mapping.start + i as u64 * PAGE_SIZE)
        })
        .collect()
}

/// The pages process `pid` has written to itself (see the module doc), in address order, at
/// most `limit` of them. Needs ptrace-read access to the process (root).
pub fn written_pages(pid: i32, limit: usize) -> io::Result<Vec<u64>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut pages = Vec::new();
    for mapping in private_writable(&maps) {
        let count = ((mapping.end - mapping.start) / PAGE_SIZE) as usize;
        let mut entries = vec![0u8; count * 8];
        pagemap.seek(SeekFrom::Start(mapping.start / PAGE_SIZE * 8))?;
        pagemap.read_exact(&mut entries)?;
        pages.extend(written_in(mapping, &entries));
        if pages.len() >= limit {
            pages.truncate(limit);
            break;
        }
    }
    Ok(pages)
}

/// Sorted page addresses as runs `(first page address, page count)`.
pub fn runs(pages: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for page in pages {
        match out.last_mut() {
            Some((start, count)) if *start + *count * PAGE_SIZE == page => *count += 1,
            _ => out.push((page, 1)),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fe:01 1317     /usr/bin/python3.11
55d0c0c00000-55d0c0c02000 rw-p 00200000 fe:01 1317     /usr/bin/python3.11
55d0c1000000-55d0c1010000 rw-p 00000000 00:00 0        [heap]
7f0000000000-7f0000001000 rw-s 00000000 00:05 9        /dev/zero (deleted)
7f0000002000-7f0000003000 ---p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0        [stack]
";

    #[test]
    fn keeps_private_writable_mappings_only() {
        let m = private_writable(MAPS);
        assert_eq!(
            m,
            vec![
                Mapping {
                    start: 0x55d0c0c00000,
                    end: 0x55d0c0c02000
                },
                Mapping {
                    start: 0x55d0c1000000,
                    end: 0x55d0c1010000
                },
                Mapping {
                    start: 0x7ffd00000000,
                    end: 0x7ffd00021000
                },
            ]
        );
    }

    #[test]
    fn written_pages_are_present_and_exclusive() {
        let m = Mapping {
            start: 0x1000_0000,
            end: 0x1000_4000,
        };
        let entries: Vec<u8> = [PRESENT | EXCLUSIVE | 42, PRESENT, 0, EXCLUSIVE | PRESENT]
            .iter()
            .flat_map(|e| e.to_ne_bytes())
            .collect();
        assert_eq!(written_in(m, &entries), vec![0x1000_0000, 0x1000_3000]);
    }

    #[test]
    fn runs_merge_neighbouring_pages() {
        let pages = [0x1000, 0x2000, 0x3000, 0x8000, 0xa000, 0xb000];
        assert_eq!(runs(pages), vec![(0x1000, 3), (0x8000, 1), (0xa000, 2)]);
        assert!(runs([]).is_empty());
    }

    #[test]
    fn reads_this_process() {
        // Every page this process wrote is its own (nothing was forked): a written buffer shows.
        // Another test's thread may fork meanwhile (spawning a program), which shares every
        // page until it is written again: so write and look again a few times.
        let mut buf = vec![0u8; 64 * PAGE_SIZE as usize];
        let first = buf.as_ptr() as u64;
        let aligned = first.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut seen = 0;
        for round in 1..=20u8 {
            for b in buf.iter_mut().step_by(PAGE_SIZE as usize) {
                *b = round;
            }
            let pages = written_pages(std::process::id() as i32, usize::MAX).unwrap();
            if pages.contains(&aligned) {
                std::hint::black_box(&buf);
                return;
            }
            seen = pages.len();
        }
        panic!("{aligned:#x} not among {seen} pages");
    }
}
