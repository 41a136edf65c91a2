//! Test-only fault injection, off unless the suite runs with `SMTPMTA_TEST_HOOKS=1` in its
//! environment (the tests set it; an operator never does).
//!
//! `tell <task> debug panic` arms a panic that the task's internal actor (e.g. isesctl's
//! intake) takes at its next piece of work, so a test can check that a panicking actor
//! takes its whole process down for the supervisor to restart, instead of leaving it half
//! alive.

use std::sync::atomic::{AtomicBool, Ordering};

pub const ENV: &str = "SMTPMTA_TEST_HOOKS";

static PANIC_ARMED: AtomicBool = AtomicBool::new(false);

pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1")
}

/// Arms the panic (refused when the hooks are off).
pub fn arm_panic() -> Result<(), crate::TellError> {
    if !enabled() {
        return Err(crate::TellError::Failed(format!(
            "test hooks are off (set {ENV}=1 in the suite's environment)"
        )));
    }
    PANIC_ARMED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Panics if a panic was armed: called by actors where their work starts.
pub fn panic_point(actor: &str) {
    if PANIC_ARMED.swap(false, Ordering::SeqCst) {
        panic!("test hook: {actor} panics as asked (`debug panic`)");
    }
}

/// A panic anywhere ends the process (after the default report on stderr): a task whose
/// actor died must not stay half alive; the supervisor restarts it, and its claims return
/// to the queue. `panic = "abort"` in the profile would do the same for the binaries but
/// would build every dependency twice (tests need unwinding).
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("panic: {info}; exiting so that the supervisor restarts this task");
        std::process::abort();
    }));
}
