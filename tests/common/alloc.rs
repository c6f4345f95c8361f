//! A counting global allocator for the fuzz tests: each thread's live heap, its peak, and
//! the bytes it ever allocated. Include with `#[path = "common/alloc.rs"] mod alloc;`: it
//! installs itself as the test binary's allocator.

#![allow(dead_code)] // each fuzz test uses part of it

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

fn count(live: isize, allocated: usize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get() + live;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    let _ = ALLOCATED.try_with(|c| c.set(c.get() + allocated as u64));
}

/// Bytes this thread holds now (allocated here, not yet freed here).
pub fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Bytes this thread allocated in all.
pub fn allocated() -> u64 {
    ALLOCATED.with(Cell::get)
}

/// Start measuring a peak from now.
pub fn reset_peak() {
    PEAK.with(|p| p.set(live()));
}

/// Most bytes this thread held at once since `reset_peak`.
pub fn peak() -> isize {
    PEAK.with(Cell::get)
}

// SAFETY: every call is passed to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            count(l.size() as isize, l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            count(l.size() as isize, l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        count(-(l.size() as isize), 0);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            count(
                new as isize - l.size() as isize,
                new.saturating_sub(l.size()),
            );
        }
        q
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;
