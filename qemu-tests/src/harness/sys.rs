//! The crate's only unsafe code: a handler for SIGINT and SIGTERM, which rustix does not
//! offer outside its runtime API. The handler does the one async-signal-safe thing, writing
//! the signal's number to a pipe; a thread reading the other end does the real work, where
//! taking locks and starting processes is allowed.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::fs::OFlags;
use rustix::pipe::PipeFlags;

/// The pipe's write end, for the handler; -1 until [`signals_to_pipe`] ran.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// ```c
/// void handler(int sig);  /* sigaction(2), SA_RESTART */
/// ```
extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe and `byte` outlives the call; errno is put back
    // so the interrupted code sees its own. A full pipe (O_NONBLOCK) just drops the byte:
    // one pending byte already wakes the reader.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, std::ptr::from_ref(&byte).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// From now on SIGINT and SIGTERM no longer end the process: each writes its number as one
/// byte to the returned pipe end instead. Call once per process.
pub fn signals_to_pipe() -> io::Result<OwnedFd> {
    let (reader, writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    rustix::fs::fcntl_setfl(&writer, OFlags::NONBLOCK)?;
    // Leaked on purpose: the handler may write to it until the process ends.
    SIGNAL_PIPE.store(writer.into_raw_fd(), Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is a valid value (no flags, SIG_DFL) that is then
        // filled in; sigemptyset only writes the mask it is given.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: see above.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: a valid action, no old action wanted; the handler is async-signal-safe.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(reader)
}
