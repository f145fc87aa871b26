//! One non-blocking read from a connected socket, for the socket transports' read path.
//! socket2 makes the call; this module only says what the outcome means to a transport.

use std::io::{self, Read};
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
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
    fn errors_carry_the_os_error() {
        // A listening socket is not connected: recv fails with ENOTCONN.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let err = recv(listener.as_fd(), &mut [0u8; 4]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    }
}
