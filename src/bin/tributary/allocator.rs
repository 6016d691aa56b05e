//! The command's allocator (the library leaves the choice to the program): mimalloc, its
//! v2 line, with freed memory kept a second before it goes back to the system.
//!
//! - **Why mimalloc.** With many keys the pane statistics are allocated by the worker that
//!   reads a record and freed by the worker that owns its key: glibc's allocator
//!   serialises those frees on the allocating thread's arena, and two workers ran slower
//!   than one (docs/benchmarks.md, "Session 18").
//! - **Why a purge delay of a second.** mimalloc gives freed pages back to the system 10 ms
//!   after they empty. An epoch frees its lines and updates at its end and the next epoch
//!   allocates as many again, so with that default the same memory went back and came
//!   again every epoch, each time as fresh pages the kernel had to clear (2 MiB at a time
//!   where transparent huge pages are on): at a million keys that was a fifth of the run,
//!   all of it system time (docs/benchmarks.md, "Session 20"). A `MIMALLOC_PURGE_DELAY` in
//!   the environment still decides.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v2's `mi_option_purge_delay` (its place in `mi_option_t`, which the
/// `libmimalloc-sys` crate does not name; a test below checks that it is the option with
/// the documented default of 10 ms).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory is kept before it goes back to the system, in milliseconds.
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Sets the purge delay, unless the environment sets it. Call first thing in `main`.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is a store into mimalloc's option table; the index is
        // in range (checked by the test below against the default it documents).
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index names the purge delay: mimalloc's documented default for it is 10 ms
    /// (its neighbours default to 1 and 0), and `configure` changes it.
    #[test]
    fn the_purge_delay_is_the_option_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads of mimalloc's option table.
        let get = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        assert_eq!(get(libmimalloc_sys::mi_option_eager_commit_delay), 1);
        assert_eq!(get(libmimalloc_sys::mi_option_use_numa_nodes), 0);
        assert_eq!(get(PURGE_DELAY), 10);
        configure();
        assert_eq!(get(PURGE_DELAY), PURGE_DELAY_MS);
    }
}
