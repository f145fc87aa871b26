//! `weaveloop._core`: the PyO3 binding layer over the engine crate — the one place that
//! touches the GIL and turns engine errors into Python exceptions.

use pyo3::prelude::*;

mod errors;
mod executor;
mod gil;
mod handles;
mod interop;
mod io;
mod loop_core;
mod posted;
mod run;
mod sockops;
mod spent;
mod sync;
mod transport;

#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<loop_core::LoopCore>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<executor::PoolCore>()?;
    m.add_function(wrap_pyfunction!(executor::worker_main, m)?)?;
    m.add_function(wrap_pyfunction!(executor::_mark_interpreter_exiting, m)?)?;
    m.add_function(wrap_pyfunction!(interop::_class_version, m)?)?;
    m.add_function(wrap_pyfunction!(interop::_reads_context_in_place, m)?)?;
    m.add_class::<executor::WorkerArgs>()?;
    m.add_class::<transport::SocketReader>()?;
    m.add_class::<transport::SocketWriter>()?;
    m.add_class::<transport::DatagramReader>()?;
    m.add_class::<transport::DatagramWriter>()?;
    m.add_class::<sockops::SockWait>()?;
    sync::register(m)?;
    interop::locate_thread_context(m.py())?;
    interop::set_up_before_any_fork(m.py())?;
    Ok(())
}
