//! Read buffers lent to a worker's client connections only while bytes are in flight, and
//! kept for the next request when they come back whole (instead of a fresh allocation each).

use std::cell::RefCell;

use bytes::BytesMut;

/// Bytes asked of a socket per read, and what a lent buffer has room for.
pub const READ_SIZE: usize = 8 * 1024;
/// Buffers a worker keeps for reuse: enough for the requests it has in flight at once.
const KEPT: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `READ_SIZE` bytes.
pub fn lend() -> BytesMut {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE))
}

/// Takes back an empty buffer; it is kept if no part of it is still in use elsewhere.
pub fn give_back(mut buf: BytesMut) {
    if buf.is_empty() && buf.try_reclaim(READ_SIZE) {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEPT {
                spare.push(buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_for_the_next_request_only_once_nothing_else_holds_it() {
        let mut buf = lend();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let address = buf.as_ptr();
        let head = buf.split().freeze();
        // The head is still read elsewhere: the buffer cannot be lent again.
        give_back(std::mem::take(&mut buf));
        let other = lend();
        assert_ne!(other.as_ptr(), address);
        drop(other);

        let mut buf = head.try_into_mut().expect("the only holder");
        buf.clear();
        give_back(buf);
        let again = lend();
        assert_eq!(again.as_ptr(), address, "the same allocation is lent again");
        assert!(again.is_empty() && again.capacity() >= READ_SIZE);
    }
}
