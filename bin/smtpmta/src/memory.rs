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

/// The mimalloc option that keeps the supervisor's memory what it uses: arenas committed
/// as they are used, not eagerly (on Linux mimalloc commits eagerly by default, so the
/// suite's PSS was 82 MiB in the 1 KiB × 20 relay and 86 MiB with 1,000 idle connections,
/// against 43 and 49 with this, at the same CPU per message). The operator may set it.
const ALLOCATOR_ENV: (&str, &str) = ("MIMALLOC_ARENA_EAGER_COMMIT", "0");

/// mimalloc reads its options once, before `main` (the runtime's first allocation creates
/// the first arena), so setting one from here is too late for that arena: the supervisor
/// runs itself again, at once, with the option in its environment. The PID stays (exec),
/// and nothing is open yet but the standard streams. The tasks inherit the environment.
pub fn configure_allocator() {
    use std::os::unix::process::CommandExt as _;
    let (key, value) = ALLOCATOR_ENV;
    if std::env::var_os(key).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let error = std::process::Command::new(&exe)
        .arg0(argv0)
        .args(args)
        .env(key, value)
        .exec();
    // Not fatal: the supervisor runs as it is, with mimalloc's defaults.
    eprintln!(
        "smtpmta: could not restart with {key}={value} ({error}); running with mimalloc's defaults"
    );
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
