//! One non-blocking read from, or write to, a connected socket, for the socket
//! transports' hot paths. socket2 makes the calls; this module only says what the
//! outcome means to a transport.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;

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

/// Reads what the socket has, up to `buf.len()` bytes (which must not be 0: a read of
/// nothing would look like end of file).
pub fn recv(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    debug_assert!(!buf.is_empty());
    let socket = SockRef::from(&socket);
    match (&*socket).read(buf) {
        Ok(0) => Ok(Received::Eof),
        Ok(n) => Ok(Received::Data(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(Received::NotNow)
        }
        Err(e) => Err(e),
    }
}

/// Sends what the socket takes now of `data`: Some(bytes sent), None if it would block
/// (or the call was interrupted) before sending any. (socket2 sends with MSG_NOSIGNAL: a
/// closed peer is EPIPE, never SIGPIPE.)
pub fn send(socket: BorrowedFd<'_>, data: &[u8]) -> io::Result<Option<usize>> {
    let socket = SockRef::from(&socket);
    match (&*socket).write(data) {
        Ok(n) => Ok(Some(n)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::Shutdown;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

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
    fn sends_until_the_socket_is_full_then_would_block() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        assert_eq!(send(a.as_fd(), b"hello").unwrap(), Some(5));
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        let chunk = vec![7u8; 1 << 16];
        let mut sent = 0;
        while let Some(n) = send(a.as_fd(), &chunk).unwrap() {
            sent += n;
            assert!(sent < 1 << 30, "never filled");
        }
        assert!(sent > 0);
        drop(b);
        let err = send(a.as_fd(), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
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
