//! An MI in this process: a request handed to it without a socket. The emulator's own router
//! is one ([`crate::emulator::Emulator::local`]); a test on paused time talks to it through
//! the same client as to the network, so signing, envelopes, body caps and timeouts are the
//! ones a run has, while no wait costs real time.

use axum::body::Body;
use axum::http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What an in-process MI answers: the response, or `None` where a network MI would have
/// dropped the connection before answering.
pub type LocalAnswer = Pin<Box<dyn Future<Output = Option<Response<Body>>> + Send>>;

/// An MI served in this process.
pub trait LocalMi: Send + Sync + 'static {
    /// Serves one request. It runs on as a server's handler does, whether or not the caller
    /// waits for it (a caller that gives up, as on a timeout, does not stop the work).
    fn serve(&self, request: Request<Body>) -> LocalAnswer;
}

/// A handle to an in-process MI, for the settings that carry it.
#[derive(Clone)]
pub struct Local(pub Arc<dyn LocalMi>);

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an MI in this process")
    }
}
