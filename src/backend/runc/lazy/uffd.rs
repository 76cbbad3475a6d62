//! The few userfaultfd operations the page daemon needs, on a descriptor
//! CRIU's restorer opened and sent over (it also did the `UFFDIO_API`
//! handshake, asking for fork, remap, remove and unmap events).
//!
//! The layouts and request numbers are the kernel's ABI
//! (`include/uapi/linux/userfaultfd.h`). They are written out here because
//! the `userfaultfd` crate generates them with bindgen at build time, which
//! needs libclang on every machine that builds podckpt.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

const UFFDIO: u8 = 0xAA;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

/// `struct uffd_msg`: an event byte, padding, then a 24-byte union.
#[repr(C)]
#[derive(Default)]
struct Message {
    event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    arg: [u64; 3],
}

#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    /// Bytes copied, or a negative errno.
    copy: i64,
}

#[repr(C)]
struct Zeropage {
    range: Range,
    mode: u64,
    zeropage: i64,
}

nix::ioctl_read!(ioctl_unregister, UFFDIO, 0x01, Range);
nix::ioctl_readwrite!(ioctl_copy, UFFDIO, 0x03, Copy);
nix::ioctl_readwrite!(ioctl_zeropage, UFFDIO, 0x04, Zeropage);

/// What a process did that the daemon must know of.
#[derive(Debug)]
pub enum Event {
    /// A thread touched a missing page at this address and waits.
    Pagefault(u64),
    /// The process forked; the child's missing pages come through this
    /// new descriptor.
    Fork(Uffd),
    /// `mremap` moved `[from, from + len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `madvise(MADV_DONTNEED/REMOVE)` dropped `[start, end)`: the process
    /// expects zeros there now, never the checkpoint's bytes.
    Remove { start: u64, end: u64 },
    /// `[start, end)` was unmapped.
    Unmap { start: u64, end: u64 },
}

/// Why a copy stopped short.
#[derive(Debug)]
pub enum CopyError {
    /// The process is gone (its memory can no longer be filled).
    Exited,
    /// The process is changing its mappings (an event not yet read): try
    /// again once the events are read. `copied` bytes did go in.
    Again {
        copied: u64,
    },
    /// The page at `copied` bytes in is already there.
    Exists {
        copied: u64,
    },
    /// The range is not (wholly) inside one registered mapping any more.
    NoMapping {
        copied: u64,
    },
    Other(io::Error),
}

/// A userfaultfd descriptor of one process.
#[derive(Debug)]
pub struct Uffd(OwnedFd);

impl Uffd {
    pub fn new(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// The next event, or `None` when none is queued (the descriptor is
    /// non-blocking).
    pub fn read_event(&self) -> io::Result<Option<Event>> {
        let mut message = Message::default();
        let size = std::mem::size_of::<Message>();
        // SAFETY: reads at most `size` bytes into a plain-old-data struct
        // of that size.
        let read = unsafe { nix::libc::read(self.0.as_raw_fd(), (&raw mut message).cast(), size) };
        if read < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        if read as usize != size {
            return Err(io::Error::other(format!("a userfaultfd message of {read} bytes")));
        }
        let [a, b, c] = message.arg;
        Ok(Some(match message.event {
            // pagefault: flags, address, thread id.
            EVENT_PAGEFAULT => Event::Pagefault(b),
            EVENT_FORK => {
                // SAFETY: the kernel installed this descriptor in our table
                // for us alone when it queued the event.
                let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(a as u32 as i32) };
                Event::Fork(Uffd(fd))
            }
            EVENT_REMAP => Event::Remap { from: a, to: b, len: c },
            EVENT_REMOVE => Event::Remove { start: a, end: b },
            EVENT_UNMAP => Event::Unmap { start: a, end: b },
            other => return Err(io::Error::other(format!("unknown userfaultfd event {other:#x}"))),
        }))
    }

    /// Copies `len` bytes from `src` (our memory) to `dst` (the process's)
    /// and wakes the threads waiting on that range.
    ///
    /// # Safety
    /// `src..src + len` must be readable memory of this process.
    pub unsafe fn copy(&self, dst: u64, src: *const u8, len: u64) -> Result<(), CopyError> {
        let mut arg = Copy {
            dst,
            src: src as u64,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: the struct is the kernel's layout; the caller vouches for
        // the source range.
        let result = unsafe { ioctl_copy(self.0.as_raw_fd(), &mut arg) };
        fill_result(result.map(drop), arg.copy)
    }

    /// Maps the zero page at `[start, start + len)` and wakes the waiters.
    pub fn zeropage(&self, start: u64, len: u64) -> Result<(), CopyError> {
        let mut arg = Zeropage {
            range: Range { start, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: the struct is the kernel's layout.
        let result = unsafe { ioctl_zeropage(self.0.as_raw_fd(), &mut arg) };
        fill_result(result.map(drop), arg.zeropage)
    }

    /// Stops handling faults in `[start, start + len)`: from now on the
    /// kernel fills them as for any process.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), CopyError> {
        let mut arg = Range { start, len };
        // SAFETY: the struct is the kernel's layout.
        let result = unsafe { ioctl_unregister(self.0.as_raw_fd(), &mut arg) };
        match result {
            Ok(_) => Ok(()),
            // The kernel's answer when the process has gone.
            Err(nix::errno::Errno::ENOMEM) => Err(CopyError::Exited),
            Err(e) => Err(CopyError::Other(e.into())),
        }
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }
}

/// Reads the kernel's answer to a fill: on failure `done` holds the bytes
/// filled before it stopped, or a negative errno.
fn fill_result(result: nix::Result<()>, done: i64) -> Result<(), CopyError> {
    use nix::errno::Errno;
    let Err(errno) = result else {
        return Ok(());
    };
    let copied = done.max(0) as u64;
    // A partial fill is reported as EAGAIN with the bytes done; the reason
    // it stopped is the errno of the next try, from the first unfilled page.
    let errno = if done < 0 { Errno::from_raw(-done as i32) } else { errno };
    Err(match errno {
        Errno::ESRCH | Errno::ENOSPC => CopyError::Exited,
        Errno::EAGAIN => CopyError::Again { copied },
        Errno::EEXIST => CopyError::Exists { copied },
        Errno::ENOENT => CopyError::NoMapping { copied },
        other => CopyError::Other(other.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layouts_are_the_kernels() {
        assert_eq!(std::mem::size_of::<Message>(), 32);
        assert_eq!(std::mem::size_of::<Copy>(), 40);
        assert_eq!(std::mem::size_of::<Zeropage>(), 32);
        // _IOWR(0xAA, 0x03, struct uffdio_copy), as the kernel headers give it.
        assert_eq!(
            nix::request_code_readwrite!(UFFDIO, 0x03, std::mem::size_of::<Copy>()),
            0xC028_AA03
        );
        assert_eq!(
            nix::request_code_read!(UFFDIO, 0x01, std::mem::size_of::<Range>()),
            0x8010_AA01
        );
    }

    #[test]
    fn a_partial_fill_is_told_apart_from_its_cause() {
        use nix::errno::Errno;
        assert!(matches!(
            fill_result(Err(Errno::EAGAIN), 8192),
            Err(CopyError::Again { copied: 8192 })
        ));
        assert!(matches!(
            fill_result(Err(Errno::EEXIST), -17),
            Err(CopyError::Exists { copied: 0 })
        ));
        assert!(matches!(fill_result(Err(Errno::ESRCH), -3), Err(CopyError::Exited)));
        assert!(matches!(
            fill_result(Err(Errno::ENOENT), -2),
            Err(CopyError::NoMapping { copied: 0 })
        ));
        assert!(fill_result(Ok(()), 4096).is_ok());
    }
}
