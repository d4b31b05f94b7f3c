//! The process's allocator: the system's, except that small 128-byte-aligned blocks come from pools.
//!
//! tokio aligns every task cell and every socket registration to 128 bytes (a cache-line pair).
//! glibc serves such a request by taking a larger block and cutting the aligned part out of it;
//! the pieces in front and behind seldom fit anything else, so each idle connection, holding one
//! of each, left about 200 bytes of fragments and headers next to its 512 bytes. Here such blocks
//! are carved from 32 KiB chunks in size classes of 128 bytes and kept on a free list when freed,
//! as HAProxy keeps its connection structures in pools: freed blocks serve the next connection,
//! chunks are never given back. Everything else goes to the system allocator untouched.
//!
//! This is the one place of the binary with `unsafe` code (the library forbids it): a global
//! allocator cannot be written without it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::{Mutex, MutexGuard};

/// The alignment the pools serve, and the step between their size classes.
const ALIGN: usize = 128;
/// Size classes 128, 256, ... 1,024 bytes; larger blocks are rare (one per worker, not per
/// connection) and go to the system allocator.
const CLASSES: usize = 8;
/// Bytes taken from the system at a time for one class.
const CHUNK: usize = 32 * 1024;

/// tidegate's global allocator; see the module documentation.
pub struct PooledAllocator;

/// One size class: blocks freed earlier, then the untouched rest of the newest chunk.
struct Pool {
    /// Head of the free list; each free block holds the address of the next.
    free: *mut u8,
    /// Next block never handed out, and the end of the chunk it is in.
    fresh: *mut u8,
    end: *mut u8,
}

// SAFETY: the pointers lead to memory owned by the pool alone, and every access holds the lock.
unsafe impl Send for Pool {}

static POOLS: [Mutex<Pool>; CLASSES] = [const {
    Mutex::new(Pool {
        free: ptr::null_mut(),
        fresh: ptr::null_mut(),
        end: ptr::null_mut(),
    })
}; CLASSES];

/// The size class serving `layout`, if a pool does.
fn class_of(layout: Layout) -> Option<usize> {
    let pooled = layout.align() > 16 && layout.align() <= ALIGN && layout.size() <= CLASSES * ALIGN;
    pooled.then(|| layout.size().max(1).div_ceil(ALIGN) - 1)
}

fn lock(class: usize) -> MutexGuard<'static, Pool> {
    // Nothing panics while a pool is locked; the guard is recovered all the same.
    POOLS[class]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    /// A block of `size` bytes, 128-aligned, or null when the system has no memory.
    ///
    /// # Safety
    /// `size` is the pool's class size, the same on every call.
    unsafe fn take(&mut self, size: usize) -> *mut u8 {
        if !self.free.is_null() {
            let block = self.free;
            // SAFETY: a free block's first word holds the next free block, written by `give`.
            self.free = unsafe { block.cast::<*mut u8>().read() };
            return block;
        }
        if self.fresh == self.end {
            // SAFETY: CHUNK and ALIGN make a valid, non-zero layout.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, ALIGN)) };
            if chunk.is_null() {
                return chunk;
            }
            self.fresh = chunk;
            // SAFETY: the end stays within the chunk, at a whole number of blocks.
            self.end = unsafe { chunk.add(CHUNK - CHUNK % size) };
        }
        let block = self.fresh;
        // SAFETY: at most `end`, within the chunk.
        self.fresh = unsafe { block.add(size) };
        block
    }

    /// Takes back a block `take` handed out.
    ///
    /// # Safety
    /// `block` came from `take` of this pool and is no longer used.
    unsafe fn give(&mut self, block: *mut u8) {
        // SAFETY: the block is at least 128 bytes, aligned, and ours again.
        unsafe { block.cast::<*mut u8>().write(self.free) };
        self.free = block;
    }
}

// SAFETY: pooled blocks are 128-aligned and at least as large as asked (their class); a block is
// handed out once until it is freed; all other layouts are the system allocator's.
unsafe impl GlobalAlloc for PooledAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            // SAFETY: the class size is the same for every call on this pool.
            Some(class) => unsafe { lock(class).take((class + 1) * ALIGN) },
            // SAFETY: forwarded as asked.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_none() {
            // SAFETY: forwarded as asked.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: a pooled block of at least `layout.size()` bytes, or null.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                block.write_bytes(0, layout.size());
            }
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: the same layout was pooled in the same class when allocated.
            Some(class) => unsafe { lock(class).give(block) },
            // SAFETY: forwarded as asked.
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with this alignment is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old_class, new_class) = (class_of(layout), class_of(new_layout));
        if old_class.is_none() && new_class.is_none() {
            // SAFETY: forwarded as asked.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        if old_class == new_class {
            return block;
        }
        // SAFETY: a new block of the new layout; the old one is copied up to the smaller size
        // and freed with the layout it was taken with.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn only_small_blocks_aligned_past_sixteen_bytes_are_pooled() {
        assert_eq!(class_of(layout(256, 128)), Some(1));
        assert_eq!(class_of(layout(129, 64)), Some(1));
        assert_eq!(class_of(layout(1024, 32)), Some(7));
        assert_eq!(class_of(layout(1025, 128)), None);
        assert_eq!(class_of(layout(256, 16)), None);
        assert_eq!(class_of(layout(256, 256)), None);
    }

    #[test]
    fn pooled_blocks_are_aligned_disjoint_and_reused_after_free() {
        let l = layout(384, 128);
        // More than one chunk's worth, so that a second chunk is taken.
        let blocks: Vec<*mut u8> = (0..200)
            .map(|_| unsafe { PooledAllocator.alloc(l) })
            .collect();
        for (i, &b) in blocks.iter().enumerate() {
            assert!(!b.is_null());
            assert_eq!(b as usize % 128, 0, "block {i} is not 128-aligned");
            unsafe { b.write_bytes(i as u8, 384) };
        }
        for (i, &b) in blocks.iter().enumerate() {
            let bytes = unsafe { std::slice::from_raw_parts(b, 384) };
            assert!(
                bytes.iter().all(|&x| x == i as u8),
                "block {i} was overwritten by another"
            );
        }
        let freed = blocks[7];
        unsafe { PooledAllocator.dealloc(freed, l) };
        // Tests in this binary share the pools; the freed block is the next one handed out
        // unless another test takes it first, so only the freed block's reuse by some later
        // allocation of the class is certain.
        let again: Vec<*mut u8> = (0..50)
            .map(|_| unsafe { PooledAllocator.alloc(l) })
            .collect();
        assert!(again.contains(&freed), "a freed block is handed out again");
        for b in blocks.iter().filter(|&&b| b != freed).chain(&again) {
            unsafe { PooledAllocator.dealloc(*b, l) };
        }
    }

    #[test]
    fn zeroed_and_grown_blocks_keep_their_promises() {
        unsafe {
            let small = layout(100, 64);
            let b = PooledAllocator.alloc(small);
            b.write_bytes(0xAB, 100);
            PooledAllocator.dealloc(b, small);
            let z = PooledAllocator.alloc_zeroed(small);
            assert!(std::slice::from_raw_parts(z, 100).iter().all(|&x| x == 0));
            z.write_bytes(7, 100);
            // Within the class the block stays; past it the bytes move with it, also out of
            // the pools altogether.
            assert_eq!(PooledAllocator.realloc(z, small, 120), z);
            let grown = PooledAllocator.realloc(z, layout(120, 64), 600);
            assert!(
                std::slice::from_raw_parts(grown, 100)
                    .iter()
                    .all(|&x| x == 7)
            );
            let system = PooledAllocator.realloc(grown, layout(600, 64), 4000);
            assert_eq!(system as usize % 64, 0);
            assert!(
                std::slice::from_raw_parts(system, 100)
                    .iter()
                    .all(|&x| x == 7)
            );
            PooledAllocator.dealloc(system, layout(4000, 64));
        }
    }
}
