//! mta-task
