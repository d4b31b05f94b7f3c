//! What a worker's HTTP/1.1 requests hold only while they are in flight (read buffers, field
//! lists, header maps, write buffers, the box of the request's state), given back when done
//! and handed to the next request instead of allocated afresh: an idle connection holds none
//! of it, a busy one allocates nothing for it.

use std::any::Any;
use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use http::HeaderMap;

use super::h1::{Field, MAX_FIELDS};

/// Bytes asked of a socket per read, and what a lent buffer has room for.
pub const READ_SIZE: usize = 8 * 1024;
/// Of each kind, what a worker keeps: enough for the requests it has in flight at once.
const KEPT: usize = 256;
/// A header map grown past this many entries (an unusual head) is not kept.
const MAP_ENTRIES: usize = 64;
/// A write buffer grown past this (a gathered body) is not kept.
const WRITE_KEPT: usize = 4 * 1024;

/// A worker's spares of one kind.
struct Spares<T>(RefCell<Vec<T>>);

impl<T> Spares<T> {
    const fn new() -> Spares<T> {
        Spares(RefCell::new(Vec::new()))
    }

    fn take(&self) -> Option<T> {
        self.0.borrow_mut().pop()
    }

    fn keep(&self, spare: T) {
        let mut spares = self.0.borrow_mut();
        if spares.len() < KEPT {
            spares.push(spare);
        }
    }
}

thread_local! {
    static READ_BUFFERS: Spares<BytesMut> = const { Spares::new() };
    static FIELD_LISTS: Spares<Vec<Field>> = const { Spares::new() };
    static HEADER_MAPS: Spares<HeaderMap> = const { Spares::new() };
    static WRITE_BUFFERS: Spares<Vec<u8>> = const { Spares::new() };
    /// Empty boxes for one type of future (`Vec<FutureBox<F>>`): a request's state is some
    /// kilobytes, too large for the allocator's fast path.
    static FUTURE_BOXES: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

type FutureBox<F> = Pin<Box<Option<F>>>;

/// The future `make` makes, in a box from the worker's spares, given back when the future is
/// done or dropped. Made in the box: a future passed by value would be copied in whole,
/// some kilobytes, where making it in place writes only its arguments.
pub fn boxed<F: Future + 'static>(make: impl FnOnce() -> F) -> SpareBoxed<F> {
    let spare = FUTURE_BOXES.with(|s| {
        s.borrow_mut()
            .as_mut()?
            .downcast_mut::<Vec<FutureBox<F>>>()?
            .pop()
    });
    let mut slot = spare.unwrap_or_else(|| Box::pin(None));
    // Emptied first (a spare is empty already), so that storing the future drops nothing:
    // the compiler then makes it in the box instead of aside, to be copied in.
    slot.as_mut().set(None);
    slot.as_mut().set(Some(make()));
    SpareBoxed(Some(slot))
}

/// A future in a spare box; see `boxed`.
pub struct SpareBoxed<F: Future + 'static>(Option<FutureBox<F>>);

impl<F: Future + 'static> Future for SpareBoxed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let slot = self.0.as_mut().expect("polled after completion");
        let inner = slot
            .as_mut()
            .as_pin_mut()
            .expect("a boxed future until done");
        let out = ready!(inner.poll(cx));
        self.give_back();
        Poll::Ready(out)
    }
}

impl<F: Future + 'static> SpareBoxed<F> {
    fn give_back(&mut self) {
        let Some(mut slot) = self.0.take() else {
            return;
        };
        // Dropped before the box is kept: what the future holds goes now.
        slot.as_mut().set(None);
        // At thread exit the spares may be gone already; the box is then freed.
        let _ = FUTURE_BOXES.try_with(|s| {
            let mut s = s.borrow_mut();
            let kept = s.get_or_insert_with(|| Box::new(Vec::<FutureBox<F>>::new()));
            if let Some(kept) = kept.downcast_mut::<Vec<FutureBox<F>>>()
                && kept.len() < KEPT
            {
                kept.push(slot);
            }
        });
    }
}

impl<F: Future + 'static> Drop for SpareBoxed<F> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// An empty buffer with room for `READ_SIZE` bytes.
pub fn read_buffer() -> BytesMut {
    READ_BUFFERS
        .with(Spares::take)
        .unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE))
}

/// Takes back an empty read buffer; it is kept if no part of it is still in use elsewhere.
pub fn give_back_read_buffer(mut buf: BytesMut) {
    if buf.is_empty() && buf.try_reclaim(READ_SIZE) {
        READ_BUFFERS.with(|s| s.keep(buf));
    }
}

/// An empty list for a head's fields.
pub fn field_list() -> Vec<Field> {
    FIELD_LISTS.with(Spares::take).unwrap_or_default()
}

pub fn give_back_field_list(mut fields: Vec<Field>) {
    if fields.capacity() > 0 && fields.capacity() <= MAX_FIELDS {
        fields.clear();
        FIELD_LISTS.with(|s| s.keep(fields));
    }
}

/// An empty header map, with room for `entries` if it is new.
pub fn header_map(entries: usize) -> HeaderMap {
    HEADER_MAPS
        .with(Spares::take)
        .unwrap_or_else(|| HeaderMap::with_capacity(entries))
}

pub fn give_back_header_map(mut map: HeaderMap) {
    if map.capacity() > 0 && map.capacity() <= MAP_ENTRIES {
        map.clear();
        HEADER_MAPS.with(|s| s.keep(map));
    }
}

/// An empty buffer to gather a message's bytes in before a write, given back to the spares
/// when dropped, however its writer ends.
pub struct WriteBuffer(Vec<u8>);

impl WriteBuffer {
    pub fn take() -> WriteBuffer {
        WriteBuffer(
            WRITE_BUFFERS
                .with(Spares::take)
                .unwrap_or_else(|| Vec::with_capacity(512)),
        )
    }
}

impl std::ops::Deref for WriteBuffer {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for WriteBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for WriteBuffer {
    fn drop(&mut self) {
        let mut out = std::mem::take(&mut self.0);
        if out.capacity() <= WRITE_KEPT {
            out.clear();
            WRITE_BUFFERS.with(|s| s.keep(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_for_the_next_request_only_once_nothing_else_holds_it() {
        let mut buf = read_buffer();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let address = buf.as_ptr();
        let head = buf.split().freeze();
        // The head is still read elsewhere: the buffer cannot be lent again.
        give_back_read_buffer(std::mem::take(&mut buf));
        let other = read_buffer();
        assert_ne!(other.as_ptr(), address);
        drop(other);

        let mut buf = head.try_into_mut().expect("the only holder");
        buf.clear();
        give_back_read_buffer(buf);
        let again = read_buffer();
        assert_eq!(again.as_ptr(), address, "the same allocation is lent again");
        assert!(again.is_empty() && again.capacity() >= READ_SIZE);
    }

    #[test]
    fn a_header_map_comes_back_empty_and_an_oversized_one_is_let_go() {
        let mut map = header_map(8);
        map.insert(http::header::HOST, "a".parse().unwrap());
        let capacity = map.capacity();
        give_back_header_map(map);
        let again = header_map(8);
        assert!(
            again.is_empty(),
            "a spare map holds nothing of the last request"
        );
        assert_eq!(
            again.capacity(),
            capacity,
            "the same allocation is used again"
        );

        let mut big = HeaderMap::with_capacity(1000);
        big.insert(http::header::HOST, "a".parse().unwrap());
        give_back_header_map(big);
        assert!(header_map(8).capacity() <= MAP_ENTRIES);
    }

    /// One type of future for every call, as a request's future is.
    async fn answer(n: usize, held: Option<std::sync::Arc<()>>, wait: bool) -> usize {
        if wait {
            std::future::pending::<()>().await;
        }
        drop(held);
        n
    }

    fn address<F: Future + 'static>(f: &SpareBoxed<F>) -> *const () {
        f.0.as_deref()
            .map_or(std::ptr::null(), |b| std::ptr::from_ref(b).cast())
    }

    #[tokio::test]
    async fn a_future_box_is_used_again_once_its_future_is_done_or_dropped() {
        let owned = std::sync::Arc::new(());
        let first = boxed(|| answer(1, Some(owned.clone()), false));
        let place = address(&first);
        assert_eq!(first.await, 1);
        assert_eq!(
            std::sync::Arc::strong_count(&owned),
            1,
            "what a finished future held is let go with it, not when its box is next used"
        );

        let second = boxed(|| answer(2, None, false));
        assert_eq!(address(&second), place, "the box is used again");
        assert_eq!(second.await, 2);

        let abandoned = boxed(|| answer(3, Some(owned.clone()), true));
        assert_eq!(address(&abandoned), place);
        drop(abandoned);
        assert_eq!(std::sync::Arc::strong_count(&owned), 1);
        let fourth = boxed(|| answer(4, None, false));
        assert_eq!(
            address(&fourth),
            place,
            "a dropped future's box comes back too"
        );
        assert_eq!(fourth.await, 4);
    }

    #[test]
    fn a_write_buffer_grown_by_a_large_body_is_not_kept() {
        let mut out = WriteBuffer::take();
        out.extend_from_slice(&[b'x'; WRITE_KEPT * 4]);
        drop(out);
        let next = WriteBuffer::take();
        assert!(next.is_empty() && next.capacity() <= WRITE_KEPT);
        let place = next.as_ptr();
        drop(next);
        assert_eq!(
            WriteBuffer::take().as_ptr(),
            place,
            "a small one comes back for the next response"
        );
    }
}
