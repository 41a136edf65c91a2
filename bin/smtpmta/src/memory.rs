//! The supervisor's heap: mimalloc, and its free memory given back to the system once the
//! store goes quiet.
//!
//! sled allocates and frees a node per write. After a burst (a million deferred records)
//! glibc's arena was fragmented enough that every later commit spent three times as long in
//! `_int_malloc` (13 % of the supervisor's samples against 4.7 % on a fresh heap), so intake
//! with the backlog fell to 83–86 % of the empty queue's; with mimalloc it stays at 96 %.
//! Either allocator keeps freed memory for reuse; `mi_collect(true)` on the thread that
//! did the allocating (the store's committer, through `mta_store::on_quiet`) returns it,
//! once, when commits stop: a walk of that heap, never under load. See
//! docs/ARCHITECTURE.md ("Memory").

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's own (linked with the `mimalloc` crate; its Rust binding needs the
    /// crate's `extended` feature, the symbol does not).
    fn mi_collect(force: bool);
}

pub fn install() {
    mta_store::on_quiet(collect);
}

fn collect() {
    // SAFETY: mi_collect only frees the calling thread's heap's unused pages back to the
    // system; it takes no pointers and may run at any time.
    unsafe { mi_collect(true) };
    tracing::debug!("store quiet: heap collected");
}
