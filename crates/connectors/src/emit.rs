//! What the connectors that emit their own metrics and logs share: sending to an output
//! pipeline until the drain deadline, and ending a run.

use bizpilot_core::{Batch, ComponentError, Output, Payload};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why sending stopped.
pub(crate) enum SendError {
    /// A pipeline fed by the connector has shut down.
    Closed,
    /// The drain deadline passed.
    Aborted,
}

/// Sends `payload` to `out` (if the connector feeds such a pipeline), unless `abort` comes first.
pub(crate) async fn send(out: &Option<Output>, payload: Payload, abort: &CancellationToken) -> Result<(), SendError> {
    let Some(out) = out else { return Ok(()) };
    tokio::select! {
        biased;
        r = out.send(Batch::new(payload)) => r.map_err(|_| SendError::Closed),
        _ = abort.cancelled() => Err(SendError::Aborted),
    }
}

/// Ends a connector's run: fails what is still queued at its input (the senders retry or count
/// it), and turns how sending ended into the component's result.
pub(crate) fn end_run(
    id: &str,
    input: &mut mpsc::Receiver<Batch>,
    result: Result<(), SendError>,
) -> Result<(), ComponentError> {
    input.close();
    while let Ok(b) = input.try_recv() {
        b.fail();
    }
    match result {
        Ok(()) => Ok(()),
        Err(SendError::Aborted) => {
            tracing::warn!(connector = %id, "drain deadline passed; the last figures were not emitted");
            Ok(())
        }
        Err(SendError::Closed) => Err(ComponentError::Other(format!("a pipeline fed by {id} has shut down"))),
    }
}
