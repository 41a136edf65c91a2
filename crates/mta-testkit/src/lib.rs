//! mta-testkit
