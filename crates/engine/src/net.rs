//! One non-blocking read from, or write to, a connected socket, for the socket
//! transports' hot paths. socket2 makes the calls; this module only says what the
//! outcome means to a transport.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockRef;

/// What one `recv` on a non-blocking socket gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// This many bytes, at the start of the buffer.
    Data(usize),
    /// The peer shut down its sending side (or closed).
    Eof,
    /// Nothing to read now: the socket would block or the call was interrupted. A
    /// level-triggered watcher calls again while data is waiting.
    NotNow,
}

/// Ok(None) for a call that would block or was interrupted: nothing happened, and a
/// level-triggered watcher calls again while the socket is ready.
fn unless_not_now<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reads what the socket has, up to `buf.len()` bytes (which must not be 0: a read of
/// nothing would look like end of file).
pub fn recv(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    recv_uninit(socket, as_uninit(buf))
}

/// `recv` that never blocks, whatever mode the socket is in (MSG_DONTWAIT): for a
/// socket whose owner may have made it blocking since it was found non-blocking.
pub fn recv_now(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    recv_uninit_now(socket, as_uninit(buf))
}

/// As `recv`, into memory not yet initialised; on Data(n) its first n bytes are.
/// (Not empty either.)
pub fn recv_uninit(socket: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> io::Result<Received> {
    recv_with_flags(socket, buf, 0)
}

/// As `recv_now`, into memory not yet initialised.
pub fn recv_uninit_now(
    socket: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
) -> io::Result<Received> {
    recv_with_flags(socket, buf, libc::MSG_DONTWAIT)
}

fn recv_with_flags(
    socket: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
    flags: libc::c_int,
) -> io::Result<Received> {
    debug_assert!(!buf.is_empty());
    let socket = SockRef::from(&socket);
    Ok(match unless_not_now(socket.recv_with_flags(buf, flags))? {
        None => Received::NotNow,
        Some(0) => Received::Eof,
        Some(n) => Received::Data(n),
    })
}

/// An initialised buffer as one recv may write into.
fn as_uninit(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: u8 and MaybeUninit<u8> have the same layout, and recv only ever writes
    // initialised bytes into the buffer, so it stays a valid [u8] afterwards.
    unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

/// `send` that never blocks, whatever mode the socket is in (MSG_DONTWAIT, as
/// `recv_uninit_now`).
pub fn send_now(socket: BorrowedFd<'_>, data: &[u8]) -> io::Result<Option<usize>> {
    let socket = SockRef::from(&socket);
    unless_not_now(socket.send_with_flags(data, libc::MSG_DONTWAIT))
}

/// How many bytes a stream socket has waiting to be read (FIONREAD).
pub fn pending(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `n`;
    // `socket` is an open fd for the duration of the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Receives one datagram, cut to `buf.len()` bytes, and who sent it: None if none is
/// waiting (or the call was interrupted). The sender is None for an address that is not
/// an internet one (a datagram socket of another family).
pub fn recv_from(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Option<SocketAddr>)>> {
    let socket = SockRef::from(&socket);
    Ok(unless_not_now(socket.recv_from(as_uninit(buf)))?.map(|(n, from)| (n, from.as_socket())))
}

/// Sends what the socket takes now of `data`: Some(bytes sent), None if it would block
/// (or the call was interrupted) before sending any. (No MSG_NOSIGNAL, as in CPython's
/// `socket.send`: a closed peer raises SIGPIPE, which Python ignores unless the program
/// restored its default action, and the call fails with EPIPE.)
pub fn send(socket: BorrowedFd<'_>, data: &[u8]) -> io::Result<Option<usize>> {
    let socket = SockRef::from(&socket);
    unless_not_now((&*socket).write(data))
}

/// Sends one datagram to `to`: Some(bytes sent), None if it would block (or the call
/// was interrupted) before sending it.
pub fn send_to(socket: BorrowedFd<'_>, data: &[u8], to: SocketAddrV4) -> io::Result<Option<usize>> {
    let socket = SockRef::from(&socket);
    unless_not_now(socket.send_to(data, &SocketAddr::V4(to).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::Shutdown;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// Sends through `send` until the socket takes no more: how much it took (some).
    fn fill(send: impl Fn(&[u8]) -> io::Result<Option<usize>>) -> usize {
        let chunk = vec![7u8; 1 << 16];
        let mut sent = 0;
        while let Some(n) = send(&chunk).unwrap() {
            sent += n;
            assert!(sent < 1 << 30, "never filled");
        }
        assert!(sent > 0);
        sent
    }

    #[test]
    fn reads_data_then_would_block_then_eof() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(recv(b.as_fd(), &mut buf).unwrap(), Received::NotNow);
        a.write_all(b"hello world").unwrap();
        assert_eq!(recv(b.as_fd(), &mut buf).unwrap(), Received::Data(8));
        assert_eq!(&buf, b"hello wo");
        assert_eq!(recv(b.as_fd(), &mut buf).unwrap(), Received::Data(3));
        assert_eq!(&buf[..3], b"rld");
        a.shutdown(Shutdown::Write).unwrap();
        assert_eq!(recv(b.as_fd(), &mut buf).unwrap(), Received::Eof);
    }

    #[test]
    fn counts_what_waits_then_reads_it_into_uninitialised_memory() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        assert_eq!(pending(b.as_fd()).unwrap(), 0);
        a.write_all(b"hello world").unwrap();
        assert_eq!(pending(b.as_fd()).unwrap(), 11);
        let mut buf = [MaybeUninit::<u8>::uninit(); 16];
        assert_eq!(
            recv_uninit(b.as_fd(), &mut buf).unwrap(),
            Received::Data(11)
        );
        // SAFETY: recv initialised the first 11 bytes.
        let got = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), 11) };
        assert_eq!(got, b"hello world");
        assert_eq!(recv_uninit(b.as_fd(), &mut buf).unwrap(), Received::NotNow);
        a.shutdown(Shutdown::Write).unwrap();
        assert_eq!(recv_uninit(b.as_fd(), &mut buf).unwrap(), Received::Eof);
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            pending(file.as_fd()).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }

    #[test]
    fn sends_until_the_socket_is_full_then_would_block() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        assert_eq!(send(a.as_fd(), b"hello").unwrap(), Some(5));
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        fill(|chunk| send(a.as_fd(), chunk));
        drop(b);
        let err = send(a.as_fd(), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn the_now_calls_never_block_a_blocking_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        // Both ends stay blocking: without MSG_DONTWAIT these calls would hang.
        let mut buf = [MaybeUninit::<u8>::uninit(); 8];
        assert_eq!(
            recv_uninit_now(a.as_fd(), &mut buf).unwrap(),
            Received::NotNow
        );
        b.write_all(b"hi").unwrap();
        assert_eq!(
            recv_uninit_now(a.as_fd(), &mut buf).unwrap(),
            Received::Data(2)
        );
        let sent = fill(|chunk| send_now(a.as_fd(), chunk));
        let mut back = vec![0u8; sent];
        b.read_exact(&mut back).unwrap();
        assert_eq!(send_now(a.as_fd(), b"x").unwrap(), Some(1));
        drop(b);
        assert_eq!(
            send_now(a.as_fd(), b"x").unwrap_err().raw_os_error(),
            Some(libc::EPIPE)
        );
    }

    #[test]
    fn receives_datagrams_with_their_sender_cut_to_the_buffer() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(recv_from(server.as_fd(), &mut buf).unwrap(), None);
        client
            .send_to(b"datagram", server.local_addr().unwrap())
            .unwrap();
        client.send_to(b"ok", server.local_addr().unwrap()).unwrap();
        let from = Some(client.local_addr().unwrap());
        let mut got = None;
        while got.is_none() {
            got = recv_from(server.as_fd(), &mut buf).unwrap();
        }
        assert_eq!(got, Some((4, from)));
        assert_eq!(&buf, b"data");
        assert_eq!(
            recv_from(server.as_fd(), &mut buf).unwrap(),
            Some((2, from))
        );
        assert_eq!(&buf[..2], b"ok");
    }

    #[test]
    fn sends_a_datagram_to_an_address() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_nonblocking(true).unwrap();
        let SocketAddr::V4(to) = server.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        assert_eq!(send_to(client.as_fd(), b"hello", to).unwrap(), Some(5));
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"hello"[..], client.local_addr().unwrap())
        );
        // Too large for any datagram: the OS error, not a partial send.
        let huge = vec![0u8; 70_000];
        let err = send_to(client.as_fd(), &huge, to).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
    }

    #[test]
    fn errors_carry_the_os_error() {
        // A listening socket is not connected: recv fails with ENOTCONN.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let err = recv(listener.as_fd(), &mut [0u8; 4]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    }
}
