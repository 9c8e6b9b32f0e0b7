//! Captured job output, with big outputs kept out of memory.
//!
//! A job's stdout and stderr go to capture files: unlinked temporary files in `$TMPDIR`
//! (`O_TMPFILE`; an anonymous memory file where the file system has no `O_TMPFILE`), one per
//! stream and worker, emptied for each job ([`Captures`]). When the job
//! has ended, its worker reads a stream of up to [`SPILL_OVER`] bytes back and sends the bytes
//! with the job's report, as before. A bigger stream stays in its file: the worker sends the
//! file's descriptor to the runner over a socket made before the workers were forked (one
//! message per stream, tagged with the job's seq, sent before the report), and the runner copies
//! it to its stdout (or `--results`) with a bounded buffer when the job's turn comes. So the
//! runner's memory stays bounded whatever the jobs print, and output is still grouped per job.
//! Nothing is left on disk: the files never have a name, and a descriptor in flight is freed by
//! the kernel when the last process holding the socket exits.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::cmsg_space;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};

/// Streams bigger than this stay in their file instead of travelling as bytes (4 MiB).
pub(crate) const SPILL_OVER: u64 = 4 << 20;

/// Which stream of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Stream {
    /// Its stdout.
    Stdout = 1,
    /// Its stderr.
    Stderr = 2,
}

/// A captured stream as the worker reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Captured {
    /// The bytes, when the stream was at most [`SPILL_OVER`] bytes.
    pub(crate) bytes: Vec<u8>,
    /// Otherwise its length: the file itself went over the spill socket.
    pub(crate) spilled: Option<u64>,
}

impl Captured {
    /// Captured bytes (a message of multiproc's own, a small output).
    pub(crate) fn bytes(bytes: Vec<u8>) -> Self {
        Captured {
            bytes,
            spilled: None,
        }
    }

    /// The stream's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.spilled.unwrap_or(self.bytes.len() as u64)
    }
}

/// A new capture file: an unlinked temporary file in `$TMPDIR`, else an anonymous memory file.
pub(crate) fn capture_file() -> io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    match open(
        &std::env::temp_dir(),
        flags,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => Ok(fd),
        Err(_) => nix::sys::memfd::memfd_create(
            c"multiproc-output",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(Into::into),
    }
}

/// The socket that carries spilled files from the workers to the runner. Made before the
/// workers are forked; workers use [`SpillSocket::send_fd`], the runner [`SpillSocket::take`].
#[derive(Debug)]
pub(crate) struct SpillSocket {
    send: OwnedFd,
    recv: OwnedFd,
    /// Files received for other streams than the one asked for.
    pending: HashMap<(u64, u8), File>,
}

/// How long the runner waits for a file a report says was sent (it is sent before the report).
const TAKE_WAIT: Duration = Duration::from_secs(10);

impl SpillSocket {
    /// A new socket pair (`SOCK_SEQPACKET`: one message per file).
    pub(crate) fn new() -> io::Result<Self> {
        let (send, recv) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok(SpillSocket {
            send,
            recv,
            pending: HashMap::new(),
        })
    }

    /// The end the workers send on (inherited through fork).
    pub(crate) fn send_fd(&self) -> RawFd {
        self.send.as_raw_fd()
    }

    /// The runner's side: the file of job `seq`'s `stream`, which its worker sent before its
    /// report.
    pub(crate) fn take(&mut self, seq: u64, stream: Stream) -> io::Result<File> {
        let key = (seq, stream as u8);
        let deadline = Instant::now() + TAKE_WAIT;
        loop {
            if let Some(f) = self.pending.remove(&key) {
                return Ok(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !readable(&self.recv, left)? {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("job {seq}: its spilled output did not arrive"),
                ));
            }
            let (tag, file) = receive(self.recv.as_raw_fd())?;
            self.pending.insert(tag, file);
        }
    }
}

/// Waits until `fd` is readable, at most `wait`.
fn readable(fd: &OwnedFd, wait: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms = wait.as_millis().min(u128::from(u16::MAX)) as u16;
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Receives one tagged file.
fn receive(fd: RawFd) -> io::Result<((u64, u8), File)> {
    let mut tag = [0u8; 9];
    let mut iov = [IoSliceMut::new(&mut tag)];
    let mut space = cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut file = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: SCM_RIGHTS gave this process a new descriptor that nothing else owns.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                file.get_or_insert(File::from(owned));
            }
        }
    }
    let bytes = msg.bytes;
    let file = file.ok_or_else(|| io::Error::other("a spill message without a file"))?;
    if bytes != tag.len() {
        return Err(io::Error::other("a short spill message"));
    }
    let seq = u64::from_le_bytes(tag[..8].try_into().expect("8 bytes"));
    Ok(((seq, tag[8]), file))
}

/// A worker's capture files, one per stream, reused from job to job (emptied first): creating
/// two files per job costs more than the job itself for tiny jobs. A file is not reused once it
/// was sent to the runner, nor when something the job started may still write to it.
#[derive(Debug, Default)]
pub(crate) struct Captures {
    files: [Option<File>; 2],
}

impl Captures {
    /// The child's end of the capture file of `stream` for the next job (an empty file).
    pub(crate) fn for_job(&mut self, stream: Stream) -> io::Result<OwnedFd> {
        let slot = &mut self.files[stream as usize - 1];
        let mut file = match slot.take() {
            Some(f) => f,
            None => File::from(capture_file()?),
        };
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        let child = OwnedFd::from(file.try_clone()?);
        *slot = Some(file);
        Ok(child)
    }

    /// After the job: reads `stream` back if it is small (keeping the file for the next job when
    /// `reuse`), else sends the file to the runner. A failure to read or send is reported in
    /// the bytes (the job's output is lost, not the run).
    pub(crate) fn collect(
        &mut self,
        stream: Stream,
        spill_fd: RawFd,
        seq: u64,
        reuse: bool,
    ) -> Captured {
        let slot = &mut self.files[stream as usize - 1];
        let Some(f) = slot.take() else {
            return Captured::default();
        };
        let len = match f.metadata() {
            Ok(m) => m.len(),
            Err(e) => return lost(seq, &e),
        };
        if len <= SPILL_OVER {
            let mut buf = vec![0u8; len as usize];
            let read = std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0);
            if reuse {
                *slot = Some(f);
            }
            return match read {
                Ok(()) => Captured::bytes(buf),
                Err(e) => lost(seq, &e),
            };
        }
        let mut tag = [0u8; 9];
        tag[..8].copy_from_slice(&seq.to_le_bytes());
        tag[8] = stream as u8;
        let fds = [f.as_raw_fd()];
        let sent = sendmsg::<()>(
            spill_fd,
            &[IoSlice::new(&tag)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        );
        match sent {
            Ok(_) => Captured {
                bytes: Vec::new(),
                spilled: Some(len),
            },
            Err(e) => lost(seq, &e.into()),
        }
    }
}

fn lost(seq: u64, e: &io::Error) -> Captured {
    Captured::bytes(format!("multiproc: job {seq}: its output is lost: {e}\n").into_bytes())
}

/// A stream as the runner holds it until it is printed.
#[derive(Debug)]
pub(crate) enum Held {
    /// Small: in memory.
    Bytes(Vec<u8>),
    /// Spilled: the file, read from its start when printed.
    File(File),
}

impl Held {
    /// The stream of a report, taking a spilled file from the socket. A file that cannot be
    /// had becomes a message saying so.
    pub(crate) fn of(c: Captured, seq: u64, stream: Stream, spill: &mut SpillSocket) -> Held {
        if c.spilled.is_none() {
            return Held::Bytes(c.bytes);
        }
        match spill.take(seq, stream) {
            Ok(f) => Held::File(f),
            Err(e) => Held::Bytes(format!("multiproc: {e}\n").into_bytes()),
        }
    }

    /// The whole stream in memory (a spilled file read back).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub(crate) fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            Held::Bytes(b) => Ok(b),
            Held::File(mut f) => {
                let mut b = Vec::new();
                f.seek(SeekFrom::Start(0))?;
                io::Read::read_to_end(&mut f, &mut b)?;
                Ok(b)
            }
        }
    }

    /// Whether there is nothing to print.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Held::Bytes(b) => b.is_empty(),
            Held::File(_) => false,
        }
    }

    /// Writes the whole stream to `w` (a file in chunks, never all in memory).
    pub(crate) fn write_to(&mut self, w: &mut dyn Write) -> io::Result<()> {
        match self {
            Held::Bytes(b) => w.write_all(b),
            Held::File(f) => {
                f.seek(SeekFrom::Start(0))?;
                io::copy(f, w).map(|_| ())
            }
        }
    }
}
