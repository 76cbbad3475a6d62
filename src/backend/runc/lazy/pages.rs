//! Which of a process's pages a lazy restore leaves to the page daemon, and
//! where each lies in the checkpoint: CRIU's `pagemap-PID.img` lists the
//! dumped pages in runs (`images/pagemap.proto`); a run marked lazy was
//! left unmapped by `criu restore --lazy-pages` and must come from us. The
//! bytes of every present run follow each other in `pages-ID.img`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::super::image::Image;
use crate::backend::RestoreError;

const PAGEMAP_MAGIC: u32 = 0x5608_4025;
const MM_MAGIC: u32 = 0x5749_2820;

/// `pagemap_entry` flags (`criu/include/pagemap.h`).
const PE_PARENT: u32 = 1 << 0;
const PE_LAZY: u32 = 1 << 1;
const PE_PRESENT: u32 = 1 << 2;

pub const PAGE: u64 = 4096;

#[derive(Clone, PartialEq, prost::Message)]
struct PagemapHead {
    #[prost(uint32, required, tag = "1")]
    pages_id: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PagemapEntry {
    #[prost(uint64, required, tag = "1")]
    vaddr: u64,
    #[prost(uint32, required, tag = "2")]
    compat_nr_pages: u32,
    #[prost(bool, optional, tag = "3")]
    in_parent: Option<bool>,
    #[prost(uint32, optional, tag = "4")]
    flags: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    nr_pages: Option<u64>,
}

impl PagemapEntry {
    /// Its flags, as CRIU reads entries that older versions wrote.
    fn effective_flags(&self) -> u32 {
        match (self.in_parent, self.flags) {
            (Some(true), flags) => flags.unwrap_or(0) | PE_PARENT,
            (_, Some(flags)) => flags,
            (_, None) => PE_PRESENT,
        }
    }

    /// Its bytes, and where they end; `None` if that overflows.
    fn span(&self) -> Option<(u64, u64)> {
        let len = self.nr_pages.unwrap_or(self.compat_nr_pages.into()).checked_mul(PAGE)?;
        Some((len, self.vaddr.checked_add(len)?))
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct MmEntry {
    #[prost(message, repeated, tag = "14")]
    vmas: Vec<VmaEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VmaEntry {
    #[prost(uint64, required, tag = "1")]
    start: u64,
    #[prost(uint64, required, tag = "2")]
    end: u64,
}

/// A run of missing pages: where it ends, and where its bytes start in the
/// pages file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub end: u64,
    pub offset: u64,
}

/// A process's missing pages, by start address. A run never crosses a
/// mapping of the process as it was checkpointed, since one fill may not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents(BTreeMap<u64, Extent>);

impl Extents {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|(start, e)| e.end - start).sum()
    }

    /// Its runs, as (start, extent).
    pub fn runs(&self) -> impl Iterator<Item = (u64, Extent)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
    }

    /// Marks a run taken but not filled as missing again.
    pub fn put_back(&mut self, start: u64, extent: Extent) {
        self.insert(start, extent);
    }

    fn insert(&mut self, start: u64, extent: Extent) {
        if extent.end > start {
            self.0.insert(start, extent);
        }
    }

    /// The run holding `addr`, as (start, extent).
    pub fn find(&self, addr: u64) -> Option<(u64, Extent)> {
        let (&start, &extent) = self.0.range(..=addr).next_back()?;
        (addr < extent.end).then_some((start, extent))
    }

    /// Removes `[start, end)` and returns what of it was missing, in runs
    /// of (start, extent).
    pub fn take(&mut self, start: u64, end: u64) -> Vec<(u64, Extent)> {
        let first = self.0.range(..start).next_back().map_or(start, |(&s, _)| s);
        let inside: Vec<u64> = self.0.range(first..end).map(|(&s, _)| s).collect();
        let mut taken = Vec::new();
        for s in inside {
            let extent = self.0.remove(&s).expect("listed");
            if extent.end <= start {
                self.0.insert(s, extent);
                continue;
            }
            let (from, to) = (s.max(start), extent.end.min(end));
            self.insert(s, Extent { end: from, ..extent });
            self.insert(
                to,
                Extent {
                    end: extent.end,
                    offset: extent.offset + (to - s),
                },
            );
            taken.push((
                from,
                Extent {
                    end: to,
                    offset: extent.offset + (from - s),
                },
            ));
        }
        taken
    }

    /// Moves what is missing of `[from, from + len)` to `to`, as `mremap` did.
    pub fn shift(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.take(from, from + len);
        self.take(to, to + len);
        for (start, extent) in moved {
            let delta = |a: u64| a - from + to;
            self.insert(
                delta(start),
                Extent {
                    end: delta(extent.end),
                    ..extent
                },
            );
        }
    }

    /// The next run to push in the background: the first at or after
    /// `cursor` (else the first of all), at most `max` bytes of it.
    pub fn next_chunk(&self, cursor: u64, max: u64) -> Option<(u64, u64)> {
        let (&start, extent) = self
            .0
            .range(..=cursor)
            .next_back()
            .filter(|(_, e)| cursor < e.end)
            .map(|(_, e)| (&cursor, e))
            .or_else(|| self.0.range(cursor..).next())
            .or_else(|| self.0.iter().next())?;
        Some((start, extent.end.min(start.saturating_add(max))))
    }
}

/// A process's lazy pages: which are missing, and the file that holds them.
#[derive(Debug)]
pub struct LazyPages {
    pub extents: Extents,
    pub pages: PathBuf,
}

/// Reads the lazy pages of process `pid` from the images in `dir`.
pub fn lazy_pages(dir: &Path, pid: u32) -> Result<LazyPages, RestoreError> {
    let pagemap = Image::open(&dir.join(format!("pagemap-{pid}.img")), PAGEMAP_MAGIC, "pagemap")?;
    let mut bodies = pagemap.bodies();
    let head = bodies
        .next()
        .ok_or_else(|| pagemap.bad("no head"))?
        .and_then(|b| <PagemapHead as prost::Message>::decode(b).map_err(|e| pagemap.bad(&e.to_string())))?;
    let mm = Image::open(&dir.join(format!("mm-{pid}.img")), MM_MAGIC, "memory map")?;
    let vmas = mm.entries::<MmEntry>().next().ok_or_else(|| mm.bad("no entry"))??.vmas;

    let mut extents = Extents::default();
    let mut offset: u64 = 0;
    for body in bodies {
        let entry = <PagemapEntry as prost::Message>::decode(body?).map_err(|e| pagemap.bad(&e.to_string()))?;
        let flags = entry.effective_flags();
        let (len, end) = entry
            .span()
            .ok_or_else(|| pagemap.bad(&format!("the run at {:#x} ends past the address space", entry.vaddr)))?;
        if flags & PE_LAZY != 0 {
            if flags & (PE_PARENT | PE_PRESENT) != PE_PRESENT {
                return Err(pagemap.bad(&format!(
                    "the lazy pages at {:#x} are not in this checkpoint's pages file",
                    entry.vaddr
                )));
            }
            // One run per mapping it covers.
            let start = entry.vaddr;
            for vma in vmas.iter().filter(|v| v.start < end && start < v.end) {
                let from = start.max(vma.start);
                extents.insert(
                    from,
                    Extent {
                        end: end.min(vma.end),
                        offset: offset.saturating_add(from - start),
                    },
                );
            }
        }
        if flags & PE_PRESENT != 0 {
            offset = offset.saturating_add(len);
        }
    }
    Ok(LazyPages {
        extents,
        pages: dir.join(format!("pages-{}.img", head.pages_id)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn extents(runs: &[(u64, u64, u64)]) -> Extents {
        let mut e = Extents::default();
        for &(start, end, offset) in runs {
            e.insert(start, Extent { end, offset });
        }
        e
    }

    #[test]
    fn taking_splits_runs_and_keeps_their_offsets() {
        let mut e = extents(&[(0x1000, 0x5000, 0), (0x8000, 0x9000, 0x4000)]);
        let taken = e.take(0x2000, 0x8800);
        assert_eq!(
            taken,
            [
                (
                    0x2000,
                    Extent {
                        end: 0x5000,
                        offset: 0x1000
                    }
                ),
                (
                    0x8000,
                    Extent {
                        end: 0x8800,
                        offset: 0x4000
                    }
                )
            ]
        );
        assert_eq!(e, extents(&[(0x1000, 0x2000, 0), (0x8800, 0x9000, 0x4800)]));
        assert_eq!(e.find(0x1fff).map(|f| f.0), Some(0x1000));
        assert_eq!(e.find(0x2000), None);
        assert!(e.take(0x3000, 0x4000).is_empty());
    }

    #[test]
    fn a_remap_moves_what_is_missing() {
        let mut e = extents(&[(0x1000, 0x3000, 0x7000), (0x10000, 0x11000, 0)]);
        e.shift(0x1000, 0x20000, 0x2000);
        assert_eq!(e, extents(&[(0x10000, 0x11000, 0), (0x20000, 0x22000, 0x7000)]));
    }

    #[test]
    fn the_background_follows_the_cursor_then_wraps() {
        let e = extents(&[(0x1000, 0x9000, 0), (0x20000, 0x21000, 0)]);
        assert_eq!(e.next_chunk(0x3000, 0x2000), Some((0x3000, 0x5000)));
        assert_eq!(e.next_chunk(0x9000, 0x2000), Some((0x20000, 0x21000)));
        assert_eq!(e.next_chunk(0x30000, 0x2000), Some((0x1000, 0x3000)));
        assert_eq!(Extents::default().next_chunk(0, 1), None);
    }

    #[test]
    fn lazy_runs_are_read_with_their_place_in_the_pages_file_and_split_at_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |vaddr: u64, pages: u64, flags: Option<u32>| {
            PagemapEntry {
                vaddr,
                compat_nr_pages: pages as u32,
                in_parent: None,
                flags,
                nr_pages: Some(pages),
            }
            .encode_to_vec()
        };
        let pagemap = [
            PagemapHead { pages_id: 3 }.encode_to_vec(),
            entry(0x400000, 2, Some(PE_PRESENT)),
            entry(0x600000, 4, Some(PE_PRESENT | PE_LAZY)),
            entry(0x700000, 1, None),
            entry(0x800000, 1, Some(PE_PRESENT | PE_LAZY)),
        ];
        std::fs::write(
            dir.path().join("pagemap-7.img"),
            super::super::super::image::encode(PAGEMAP_MAGIC, &pagemap),
        )
        .unwrap();
        let vma = |start, end| VmaEntry { start, end };
        let mm = MmEntry {
            vmas: vec![
                vma(0x400000, 0x402000),
                vma(0x600000, 0x602000),
                vma(0x602000, 0x700000),
                vma(0x800000, 0x801000),
            ],
        };
        std::fs::write(
            dir.path().join("mm-7.img"),
            super::super::super::image::encode(MM_MAGIC, &[mm.encode_to_vec()]),
        )
        .unwrap();
        let lazy = lazy_pages(dir.path(), 7).unwrap();
        assert_eq!(lazy.pages, dir.path().join("pages-3.img"));
        assert_eq!(
            lazy.extents,
            extents(&[
                (0x600000, 0x602000, 2 * PAGE),
                (0x602000, 0x604000, 4 * PAGE),
                (0x800000, 0x801000, 7 * PAGE)
            ])
        );
        assert_eq!(lazy.extents.bytes(), 5 * PAGE);

        let parent = [
            PagemapHead { pages_id: 1 }.encode_to_vec(),
            entry(0x600000, 1, Some(PE_PARENT | PE_LAZY)),
        ];
        std::fs::write(
            dir.path().join("pagemap-7.img"),
            super::super::super::image::encode(PAGEMAP_MAGIC, &parent),
        )
        .unwrap();
        assert!(
            lazy_pages(dir.path(), 7)
                .unwrap_err()
                .to_string()
                .contains("not in this checkpoint")
        );
    }
}
