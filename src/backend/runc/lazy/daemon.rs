//! podckpt's lazy-pages daemon: it serves the memory of processes that
//! `criu restore --lazy-pages` left unmapped, speaking CRIU's protocol, in
//! place of `criu lazy-pages`.
//!
//! Why not CRIU's own: its daemon copies one page per fault, through a read
//! into a buffer and then a fill, and shrinks its background transfer to
//! 64 KiB at every fault. A process that touches all its memory at once
//! after a restore ran up to twice as slow as one restored eagerly. Here a
//! fault fills the aligned 2 MiB around it, the background push follows the
//! last fault in 4 MiB fills, and every fill copies straight from the pages
//! file mapped into this process: one copy, in the kernel.
//!
//! The protocol (`criu/uffd.c`): CRIU connects to `lazy-pages.socket` and
//! sends, for each process of `pstree.img`, its PID (negative for a zombie,
//! which has no memory) and then its userfaultfd; once the restore is
//! done, the word RESTORE_FINISHED. The daemon exits 0 once every lazy page
//! of every process (and of each child they forked meanwhile) is in, or the
//! process has gone; any other exit leaves pages unserved, and the
//! supervisor kills the container.

use std::io::{IoSliceMut, Read};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap, munmap};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use super::pages::{Extent, Extents, PAGE, lazy_pages};
use super::uffd::{CopyError, Event, Uffd};
use crate::backend::runc::pstree;

/// The first argument that makes podckpt-runc this daemon.
pub const DAEMON_COMMAND: &str = "podckpt-lazy-pages-daemon";
/// The word CRIU sends once the restore is done.
const RESTORE_FINISHED: u32 = 0x5253_5446;
/// What a fault fills: the aligned window around the faulting page. A
/// process that touched one page of a run is likely to touch its
/// neighbours, and one fill of 2 MiB costs far less than 512 of 4 KiB.
const FAULT_WINDOW: u64 = 2 << 20;
/// What one background fill pushes. A fault waits for at most one of them
/// (about a millisecond).
const PUSH_CHUNK: u64 = 4 << 20;

/// The daemon's main: `podckpt-runc podckpt-lazy-pages-daemon IMAGES SOCKET`.
pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    let [images, socket] = args else {
        eprintln!("usage: podckpt-runc {DAEMON_COMMAND} IMAGES SOCKET");
        return ExitCode::FAILURE;
    };
    match serve(Path::new(images), Path::new(socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("lazy-pages daemon: {why}");
            ExitCode::FAILURE
        }
    }
}

/// A pages file mapped read-only.
struct Source {
    path: PathBuf,
    base: Option<NonNull<std::ffi::c_void>>,
    len: u64,
}

impl Source {
    fn map(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
        let base = match NonZeroUsize::new(len as usize) {
            None => None,
            Some(size) => {
                // SAFETY: a new private read-only mapping of a whole file.
                let base = unsafe { mmap(None, size, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE, &file, 0) }
                    .map_err(|e| format!("mapping {}: {e}", path.display()))?;
                // Start reading it in now, if it is not in the page cache.
                // SAFETY: the range is the mapping just made.
                let _ = unsafe { madvise(base, size.get(), MmapAdvise::MADV_WILLNEED) };
                Some(base)
            }
        };
        Ok(Self {
            path: path.to_owned(),
            base,
            len,
        })
    }

    /// Maps the file's pages at `src` into our page tables in one call.
    /// The kernel's fill copies from our memory with page faults disabled
    /// and takes a slow path (drop its locks, fault, retake them) for each
    /// source page not mapped yet.
    fn map_in(&self, src: *const u8, len: u64) {
        if let Some(start) = NonNull::new(src as *mut std::ffi::c_void) {
            // SAFETY: `src..src + len` lies in our mapping (see `at`).
            let _ = unsafe { madvise(start, len as usize, MmapAdvise::MADV_POPULATE_READ) };
        }
    }

    /// Where `offset..offset + len` of the file is in our memory.
    fn at(&self, offset: u64, len: u64) -> Option<*const u8> {
        let base = self.base?;
        (offset.checked_add(len)? <= self.len)
            .then(|| base.as_ptr().cast::<u8>().wrapping_add(offset as usize) as *const u8)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(base) = self.base {
            // SAFETY: unmaps exactly the mapping made in `map`.
            let _ = unsafe { munmap(base, self.len as usize) };
        }
    }
}

/// One process whose pages are being served.
struct Task {
    /// Its PID in the checkpoint, for the log; a forked child carries its
    /// parent's.
    pid: i32,
    uffd: Uffd,
    missing: Extents,
    source: Rc<Source>,
    /// Where the background push goes on from: just past the last fault.
    cursor: u64,
    /// Faulting pages whose fill must be tried again.
    waiting: Vec<u64>,
    exited: bool,
}

impl Task {
    /// Nothing more to serve: gone, or every page in.
    fn done(&self) -> bool {
        self.exited || (self.missing.is_empty() && self.waiting.is_empty())
    }
}

/// What the daemon did, for its log.
#[derive(Default)]
struct Tally {
    faulted: u64,
    pushed: u64,
    zero_pages: u64,
    forks: u64,
}

#[derive(Clone, Copy)]
enum Why {
    Fault,
    Push,
}

fn serve(images: &Path, socket: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut plans = std::collections::HashMap::new();
    let processes = pstree::processes(&images.join(pstree::PSTREE_IMAGE)).map_err(|e| e.to_string())?;
    for &pid in &processes {
        // A zombie has no memory, and no pagemap.
        if !images.join(format!("pagemap-{pid}.img")).exists() {
            continue;
        }
        let lazy = lazy_pages(images, pid).map_err(|e| e.to_string())?;
        let source = Rc::new(Source::map(&lazy.pages)?);
        if let Some((start, _)) = lazy
            .extents
            .runs()
            .find(|(start, e)| source.at(e.offset, e.end - start).is_none())
        {
            return Err(format!(
                "{} is shorter than its pagemap says (the run at {start:#x} of process {pid})",
                source.path.display()
            ));
        }
        plans.insert(pid as i32, (lazy.extents, source));
    }

    let listener = UnixListener::bind(socket).map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    let (mut criu, _) = listener.accept().map_err(|e| format!("accepting CRIU: {e}"))?;
    let mut tasks = Vec::new();
    for _ in &processes {
        let mut word = [0; 4];
        criu.read_exact(&mut word)
            .map_err(|e| format!("reading a PID from CRIU: {e}"))?;
        let pid = i32::from_ne_bytes(word);
        if pid < 0 {
            continue;
        }
        let uffd = receive_fd(&criu).map_err(|e| format!("receiving the userfaultfd of process {pid}: {e}"))?;
        let (missing, source) = plans
            .remove(&pid)
            .ok_or_else(|| format!("CRIU sent process {pid}, which the checkpoint's pagemaps do not hold"))?;
        tasks.push(Task {
            pid,
            uffd: Uffd::new(uffd),
            missing,
            source,
            cursor: 0,
            waiting: Vec::new(),
            exited: false,
        });
    }
    criu.set_nonblocking(true).map_err(|e| e.to_string())?;
    let total: u64 = tasks.iter().map(|t| t.missing.bytes()).sum();
    eprintln!("serving {} MiB of {} processes", total >> 20, tasks.len());

    let mut tally = Tally::default();
    let mut finished = None;
    let mut criu = Some(criu);
    loop {
        let pushing = finished.is_some() && tasks.iter().any(|t| !t.missing.is_empty());
        let retrying = tasks.iter().any(|t| !t.waiting.is_empty());
        let timeout = match (pushing, retrying) {
            (true, _) => PollTimeout::ZERO,
            (false, true) => PollTimeout::from(1u8),
            (false, false) => PollTimeout::NONE,
        };
        let (criu_ready, ready) = wait(criu.as_ref(), &tasks, timeout)?;
        if criu_ready && let Some(stream) = criu.as_mut() {
            match read_word(stream)? {
                Some(RESTORE_FINISHED) => finished = Some(started.elapsed()),
                Some(other) => return Err(format!("CRIU sent {other:#x} where it finishes the restore")),
                None if finished.is_none() => return Err("CRIU hung up before the restore finished".into()),
                None => criu = None,
            }
        }
        let mut born = Vec::new();
        for (task, _) in tasks.iter_mut().zip(ready).filter(|(_, ready)| *ready) {
            while !task.exited
                && let Some(event) = task
                    .uffd
                    .read_event()
                    .map_err(|e| format!("process {}: {e}", task.pid))?
            {
                if let Some(child) = handle(task, event, &mut tally)? {
                    born.push(child);
                }
            }
        }
        tally.forks += born.len() as u64;
        tasks.extend(born);
        for task in tasks.iter_mut().filter(|t| !t.waiting.is_empty()) {
            for page in std::mem::take(&mut task.waiting) {
                fault(task, page, &mut tally)?;
            }
        }
        // One chunk for the first process with pages missing: those of the
        // checkpoint before the children they forked since, most of which
        // exec at once and need nothing.
        if finished.is_some()
            && let Some(task) = tasks.iter_mut().find(|t| !t.missing.is_empty())
        {
            push(task, &mut tally)?;
        }
        if finished.is_some() {
            tasks.retain(|t| !t.done());
            if tasks.is_empty() {
                break;
            }
        }
    }
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "every page is in: {:.1} MiB on faults, {:.1} MiB pushed, {} zero pages, {} forks; restore finished at {:.3} s, done at {:.3} s",
        mib(tally.faulted),
        mib(tally.pushed),
        tally.zero_pages,
        tally.forks,
        finished.unwrap_or_default().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits for CRIU's socket or a process's events; says which are ready.
fn wait(criu: Option<&UnixStream>, tasks: &[Task], timeout: PollTimeout) -> Result<(bool, Vec<bool>), String> {
    let mut fds: Vec<PollFd> = criu
        .iter()
        .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN))
        .chain(tasks.iter().map(|t| PollFd::new(t.uffd.as_fd(), PollFlags::POLLIN)))
        .collect();
    loop {
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
            Ok(_) => break,
        }
    }
    let mut ready = fds.iter().map(|fd| fd.revents().is_some_and(|r| !r.is_empty()));
    let criu_ready = criu.is_some() && ready.next().unwrap_or(false);
    Ok((criu_ready, ready.collect()))
}

/// One 32-bit word from CRIU, or `None` once it hung up.
fn read_word(stream: &mut UnixStream) -> Result<Option<u32>, String> {
    let mut word = [0; 4];
    match stream.read(&mut word) {
        Ok(0) => Ok(None),
        Ok(4) => Ok(Some(u32::from_ne_bytes(word))),
        Ok(n) => Err(format!("CRIU sent {n} bytes where it sends a word")),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err("CRIU's socket was ready with nothing".into()),
        Err(e) => Err(format!("reading from CRIU: {e}")),
    }
}

/// A descriptor CRIU passed with one byte of data.
fn receive_fd(stream: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel installed this descriptor for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(std::io::Error::other("no descriptor came with the message"))
}

/// Acts on one event of `task`; a fork gives the child's task.
fn handle(task: &mut Task, event: Event, tally: &mut Tally) -> Result<Option<Task>, String> {
    match event {
        Event::Pagefault(addr) => fault(task, addr & !(PAGE - 1), tally)?,
        // The child's memory is a copy of the parent's, missing pages and
        // all: it needs what the parent still misses.
        Event::Fork(uffd) => {
            return Ok(Some(Task {
                pid: task.pid,
                uffd,
                missing: task.missing.clone(),
                source: task.source.clone(),
                cursor: task.cursor,
                waiting: Vec::new(),
                exited: false,
            }));
        }
        Event::Remap { from, to, len } => task.missing.shift(from, to, len),
        Event::Remove { start, end } => {
            // The process expects zeros there now: let the kernel give them.
            match task.uffd.unregister(start, end - start) {
                Ok(()) => {}
                Err(CopyError::Exited) => task.exited = true,
                Err(e) => eprintln!("process {}: unregistering {start:#x}-{end:#x}: {e:?}", task.pid),
            }
            task.missing.take(start, end);
        }
        Event::Unmap { start, end } => {
            task.missing.take(start, end);
        }
    }
    Ok(None)
}

/// Serves a fault at `page`: the window around it, or a zero page where
/// the checkpoint holds nothing.
fn fault(task: &mut Task, page: u64, tally: &mut Tally) -> Result<(), String> {
    let Some((start, extent)) = task.missing.find(page) else {
        return match task.uffd.zeropage(page, PAGE) {
            Ok(()) => {
                tally.zero_pages += 1;
                Ok(())
            }
            // Filled meanwhile, or no longer mapped: nothing to do.
            Err(CopyError::Exists { .. } | CopyError::NoMapping { .. }) => Ok(()),
            Err(CopyError::Again { .. }) => {
                task.waiting.push(page);
                Ok(())
            }
            Err(CopyError::Exited) => {
                task.exited = true;
                Ok(())
            }
            Err(CopyError::Other(e)) => Err(format!("process {}: zero page at {page:#x}: {e}", task.pid)),
        };
    };
    let window = page & !(FAULT_WINDOW - 1);
    let (from, to) = (start.max(window), extent.end.min(window + FAULT_WINDOW));
    if !fill(task, from, to, Why::Fault, tally)? {
        task.waiting.push(page);
    }
    task.cursor = to;
    Ok(())
}

/// Pushes the next chunk of `task` in the background.
fn push(task: &mut Task, tally: &mut Tally) -> Result<(), String> {
    if let Some((from, to)) = task.missing.next_chunk(task.cursor, PUSH_CHUNK) {
        fill(task, from, to, Why::Push, tally)?;
        task.cursor = to;
    }
    Ok(())
}

/// Fills what is missing of `[from, to)` from the checkpoint. False when
/// the process was changing its mappings: what was not filled is still
/// missing, to be tried again once its events are read.
fn fill(task: &mut Task, from: u64, to: u64, why: Why, tally: &mut Tally) -> Result<bool, String> {
    let mut runs = task.missing.take(from, to).into_iter();
    while let Some((run, extent)) = runs.next() {
        let mut start = run;
        let mut page_by_page = false;
        while start < extent.end && !task.exited {
            let end = if page_by_page { start + PAGE } else { extent.end };
            let offset = extent.offset + (start - run);
            let src = task
                .source
                .at(offset, end - start)
                .expect("checked against the file at start");
            task.source.map_in(src, end - start);
            // SAFETY: `src` lies inside the mapped pages file.
            let result = unsafe { task.uffd.copy(start, src, end - start) };
            let copied = match &result {
                Ok(()) => end - start,
                Err(CopyError::Again { copied } | CopyError::Exists { copied } | CopyError::NoMapping { copied }) => {
                    *copied
                }
                Err(_) => 0,
            };
            match why {
                Why::Fault => tally.faulted += copied,
                Why::Push => tally.pushed += copied,
            }
            start += copied;
            match result {
                Ok(()) => {}
                // Already there: leave that page as it is.
                Err(CopyError::Exists { .. }) => start += PAGE,
                // The run crosses a mapping split since the checkpoint (an
                // mprotect), or a page is no longer mapped: go page by page,
                // leaving out what is not mapped.
                Err(CopyError::NoMapping { .. }) if page_by_page => start += PAGE,
                Err(CopyError::NoMapping { .. }) => page_by_page = true,
                Err(CopyError::Again { .. }) => {
                    let offset = extent.offset + (start - run);
                    task.missing.put_back(start, Extent { offset, ..extent });
                    for (start, extent) in runs {
                        task.missing.put_back(start, extent);
                    }
                    return Ok(false);
                }
                Err(CopyError::Exited) => task.exited = true,
                Err(CopyError::Other(e)) => {
                    return Err(format!(
                        "process {}: filling {start:#x}-{:#x}: {e}",
                        task.pid, extent.end
                    ));
                }
            }
        }
    }
    Ok(true)
}
