//! The IPC frame decoder refuses garbage without panicking, for every message type a
//! socket accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mta_ipc::frame::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<mta_ipc::hello::Hello>(data);
    let _ = decode::<mta_ipc::SupervisorRequest>(data);
    let _ = decode::<mta_ipc::TaskRequest>(data);
    let _ = decode::<mta_ipc::StoreResponse>(data);
});
